"""The distance diagnosis (per-axis errors of the points named right) and the scans the benchmarks judge."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from diagnose_distance import signed_errors, summary_line


def test_only_levels_named_within_5_mm_of_their_own_reference_are_judged_with_their_sign():
    reference = {"L4": np.array([10.0, 50.0, 30.0]), "L4-L5": np.array([10.0, 62.0, 28.0]), "L5": np.zeros(3)}
    predicted = {
        "L4": np.array([11.0, 49.0, 30.0]),  # right: 1 mm to the side, 1 mm up
        "L4-L5": np.array([10.0, 74.0, 28.0]),  # 12 mm off: a wrong point, not an imprecise one
        "L3": np.array([10.0, 20.0, 30.0]),  # not annotated
    }
    errors = signed_errors(predicted, reference)
    assert list(errors) == ["vertebra"]
    np.testing.assert_allclose(errors["vertebra"], [[1.0, -1.0, 0.0]])
    predicted["L4-L5"] = np.array([10.0, 66.0, 28.0])  # 4 mm low: judged
    np.testing.assert_allclose(signed_errors(predicted, reference)["disc"], [[0.0, 4.0, 0.0]])


def test_the_summary_gives_the_mean_distance_and_each_axis_bias_and_rms():
    line = summary_line("VB3 disc", [np.array([1.0, 0.0, 0.0]), np.array([-1.0, 0.0, 3.0])])
    assert "n=  2" in line and "distance 2.08 mm" in line  # (1 + sqrt(10)) / 2
    assert "left-right +0.00 / 1.00" in line
    assert "anterior-posterior +1.50 / 2.12" in line


def test_a_benchmark_with_no_scan_left_to_judge_says_so_in_words(shared_data):
    from judged_scans import scans_to_judge

    args = argparse.Namespace(data=shared_data / "lumbar", all_held_out=True, sources=["VB2"])
    assert [c.name for c in scans_to_judge(args, {"name": "m", "trained_on": ["VB2/case-07"]})][:1] == ["VB2/case-12"]
    every_vb2 = [f"VB2/case-{n}" for n in ("07", "12", "14", "17", "18", "19", "23")]
    with pytest.raises(SystemExit, match=r"no labelled scan of VB2 under .* is left to judge m on"):
        scans_to_judge(args, {"name": "m", "trained_on": every_vb2})


def test_a_model_that_cannot_be_loaded_stops_the_benchmark_in_words(tmp_path):
    from judged_scans import load_model

    with pytest.raises(SystemExit, match="not a model folder"):
        load_model(argparse.Namespace(model=str(tmp_path / "nothing"), device="cpu"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "card.json").write_text("{not json")
    with pytest.raises(SystemExit, match="broken"):
        load_model(argparse.Namespace(model=str(tmp_path / "broken"), device="cpu"))
