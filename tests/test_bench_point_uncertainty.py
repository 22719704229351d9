"""The point-uncertainty benchmark's report: correlations, other cue combinations, failing cases' ranks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_point_uncertainty import (
    CUES,
    _case_interval,
    _combinations,
    _highlighted,
    _split_by_right_and_wrong,
    main,
    report,
)


def _point(case: str, error_mm: float, spread: float, chain: float = 0.0) -> dict:
    cues = dict.fromkeys(CUES, 0.0) | {"spread": spread, "chain": chain}
    uncertainty = 1 - (1 - spread) * (1 - chain)
    return {"case": case, "level": "L1", "uncertainty": uncertainty, "error_mm": error_mm} | cues


def _run() -> tuple[list[dict], list[dict]]:
    """Four cases: 'off' is named a level off (30 mm) and ranks last by score but first by its points."""
    points = [
        _point("off", 30.0, 0.8, 0.9),
        _point("off", 31.0, 0.9, 0.9),
        _point("a", 1.0, 0.1),
        _point("a", 2.0, 0.2),
        _point("b", 3.0, 0.3),
        _point("b", 4.0, 0.4),
        _point("c", 5.0, 0.5),
    ]
    rows = [
        {"case": "off", "score": 0.1, "error_mm": 30.5, "failures": ["misnamed"]},
        {"case": "a", "score": 0.9, "error_mm": 1.5, "failures": []},
        {"case": "b", "score": 0.8, "error_mm": 3.5, "failures": []},
        {"case": "c", "score": 0.7, "error_mm": 5.0, "failures": []},
    ]
    return points, [r | {"reason": "", "findings": []} for r in rows]


def test_the_report_ranks_failing_cases_by_both_case_scores_and_tracks_the_point_error(capsys):
    points, rows = _run()
    results = report(points, rows)
    assert results["spearman"]["spread"]["rho"] == pytest.approx(1.0)
    assert results["spearman"]["case_score"]["rho"] == pytest.approx(-1.0)
    assert results["spearman"]["case_mean_points"]["rho"] == pytest.approx(1.0)
    assert results["failures_ranked"] == {"top_quarter": 1, "n_failed": 1, "in_top_quarter": 0}
    assert results["failures_ranked_by_mean_points"] == {"top_quarter": 1, "n_failed": 1, "in_top_quarter": 1}
    out = capsys.readouterr().out
    assert "rank   4  off" in out and "rank   1  off" in out


def test_the_ranking_puts_a_case_the_chain_checks_say_to_fix_first_whatever_its_score(capsys):
    points, rows = _run()
    found = {"uncertainty": 0.9, "reason": "names one level off from the sacrum", "level": "L5", "headline": True}
    rows[0]["findings"] = [found]
    assert report(points, rows)["failures_ranked"]["in_top_quarter"] == 1
    assert "rank   1  off            score 0.10" in capsys.readouterr().out
    rows[0]["findings"] = [found | {"headline": False}]  # the same doubt as a mere cue: the score decides
    assert report(points, rows)["failures_ranked"]["in_top_quarter"] == 0


def test_a_case_with_nothing_judged_ranks_first_by_its_points():
    points, rows = _run()
    rows.append(
        {"case": "empty", "score": 0.0, "error_mm": None, "failures": ["missing level"], "reason": "", "findings": []}
    )
    results = report(points, rows)
    assert results["failures_ranked_by_mean_points"]["in_top_quarter"] == 2  # 'empty' (1.0) and 'off'


def test_the_combinations_include_each_cue_left_out():
    points, _ = _run()
    combos = _combinations(points)
    assert len(combos) == 3 * (1 + len(CUES))
    assert combos["noisy-or"] == pytest.approx([p["uncertainty"] for p in points])
    assert combos["max without spread"] == pytest.approx([0.9, 0.9, 0, 0, 0, 0, 0])


def test_replay_reports_on_an_earlier_json_without_scoring(tmp_path, monkeypatch, capsys):
    points, rows = _run()
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"model": "m", "points": points, "cases": rows}))
    again = tmp_path / "again.json"
    monkeypatch.setattr(sys, "argv", ["bench", "--replay", str(earlier), "--json", str(again)])
    main()
    assert "model m:" in capsys.readouterr().out
    written = json.loads(again.read_text())
    assert written["points"] == points and written["failures_ranked_by_mean_points"]["in_top_quarter"] == 1


def test_the_interval_resamples_whole_cases():
    same = [_point(case, error, error / 10) for case in "abcd" for error in (1.0, 2.0, 3.0)]
    assert _case_interval(same) == pytest.approx((1.0, 1.0))
    # Only the two 'off' cases make rho positive; inside every other case uncertainty runs
    # against the error. About 1 in 11 draws of six cases misses both (rho -1): the 2.5th
    # percentile but not the 25th; a draw of 20 points almost never does.
    off = [_point(case, 30.0 + i, 0.9 + i / 100) for case in ("off1", "off2") for i in range(4)]
    against = [_point(case, 4.0 - i, i / 10) for case in "abcd" for i in (1, 2, 3)]
    low, high = _case_interval(off + against)
    assert low == pytest.approx(-1.0) and high > 0.5
    assert report(off + against, [])["spearman"]["uncertainty"]["case_interval"] == pytest.approx((low, high))
    assert _case_interval(off[:4]) is None  # one case


def test_the_marked_points_and_the_auc_count_the_points_more_than_5_mm_off():
    points, _ = _run()  # uncertainties 0.98, 0.99, 0.1, 0.2, 0.3, 0.4, 0.5; errors 30, 31, 1, 2, 3, 4, 5
    assert _highlighted(points) == {"marked": 2, "wrong": 2, "wrong_marked": 2, "auc": pytest.approx(1.0)}
    points[0]["uncertainty"] = 0.45  # one wrong point below the mark, and below one right point
    assert _highlighted(points) == {"marked": 1, "wrong": 2, "wrong_marked": 1, "auc": pytest.approx(0.9)}
    assert _highlighted(points[2:])["auc"] is None  # none wrong (5.0 mm is not more than 5)


def test_rho_is_split_into_the_right_points_the_wrong_ones_and_telling_them_apart(capsys):
    points, rows = _run()  # errors 30, 31 (wrong), 1, 2, 3, 4, 5 (right: 5.0 is not more than 5)
    split = report(points, rows)["split"]
    assert split["within_right"] == pytest.approx(1.0)  # spread 0.1 ... 0.5 follows 1 ... 5 mm
    assert split["within_wrong"] is None  # two points
    # ranks of the errors 1..7 against a 0/1 flag on the top two: the separation alone
    flag, ranks = [0, 0, 0, 0, 0, 1, 1], [1, 2, 3, 4, 5, 6, 7]
    expected = float(np.corrcoef(flag, ranks)[0, 1])
    assert split["separation_only"] == pytest.approx(expected)
    assert f"would score {expected:+.3f}" in capsys.readouterr().out
    points[2]["uncertainty"], points[6]["uncertainty"] = points[6]["uncertainty"], points[2]["uncertainty"]
    assert _split_by_right_and_wrong(points)["within_right"] < 0.5  # 1 mm and 5 mm swapped
    none_wrong = _split_by_right_and_wrong(points[2:])
    assert none_wrong["separation_only"] is None and none_wrong["within_wrong"] is None
