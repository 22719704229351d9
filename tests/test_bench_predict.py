"""The prediction benchmark's per-case lines: a chain named one level off must show as such."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_predict import case_line, main


def _report(disc: tuple[int, float | None], vertebra: tuple[int, float | None], error_mm: float | None) -> dict:
    kinds = {"disc": disc, "vertebra": vertebra}
    return {
        "keypoints": {k: {"n_annotated": n, "identification": rate} for k, (n, rate) in kinds.items()},
        "error_mm": error_mm,
    }


def test_case_line_counts_levels_named_right_over_both_kinds() -> None:
    assert case_line("VB3/case-13", _report((4, 0.75), (5, 0.2), 7.26)) == (
        "VB3/case-13: 4/9 levels named right, distance 7.3 mm"
    )
    # a chain one level off: nothing right; a kind the case does not annotate has no rate and adds nothing
    assert case_line("x", _report((0, None), (5, 0.0), 33.0)) == "x: 0/5 levels named right, distance 33.0 mm"
    assert case_line("y", _report((0, None), (0, None), None)) == "y: 0/0 levels named right, distance -"


def test_per_case_lines_name_the_scan_named_one_level_off(shared_data: Path, tmp_path, monkeypatch, capsys) -> None:
    cases = ["VB2/case-19", "VB3/case-49"]  # the starter's unseen scans: one named right, one a level off
    for case in cases:  # a data folder of just these two (reading all of them takes seconds)
        (tmp_path / case).parent.mkdir(exist_ok=True)
        (tmp_path / case).symlink_to(shared_data / "lumbar" / case)
    argv = ["bench", "--data", str(tmp_path), "--all-held-out", "--repeats", "0", "--device", "cpu", "--per-case"]
    monkeypatch.setattr(sys, "argv", argv)
    main()
    out = capsys.readouterr().out
    lines = out.split("== per case")[1].strip().splitlines()[1:]
    counts = {m[1]: (int(m[2]), int(m[3])) for line in lines if (m := re.match(r"(\S+): (\d+)/(\d+) levels", line))}
    assert sorted(counts) == cases
    assert counts["VB2/case-19"][0] == counts["VB2/case-19"][1] > 0  # every level named
    assert counts["VB3/case-49"][0] < counts["VB3/case-49"][1] // 2  # named one level off
