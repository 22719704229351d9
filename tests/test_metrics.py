"""The papers' metrics on hand-made cases whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from napari_ivd.metrics import dice, dice_rows, keypoint_rows, summarize_dice, summarize_keypoints

GT = {"L3-L4": (0.0, 0.0, 0.0), "L4-L5": (0.0, 0.0, -30.0), "L4": (0.0, 5.0, -15.0), "L5": (0.0, 5.0, -45.0)}


def test_perfect_prediction_scores_perfectly():
    summary = summarize_keypoints(keypoint_rows("a", GT, GT))
    for kind in ("disc", "vertebra"):
        assert summary[kind]["dtt_mean_mm"] == 0.0
        assert summary[kind]["fnr"] == 0.0 and summary[kind]["fpr"] == 0.0
        assert summary[kind]["identification"] == 1.0


def test_level_swapped_discs_are_detected_but_not_identified():
    pred = {"L3-L4": GT["L4-L5"], "L4-L5": GT["L3-L4"]}
    summary = summarize_keypoints(keypoint_rows("a", pred, GT))["disc"]
    assert summary["fnr"] == 0.0 and summary["fpr"] == 0.0  # level-agnostic: both found
    assert summary["identification"] == 0.0
    assert summary["dtt_mean_mm"] == pytest.approx(30.0)


def test_missing_and_far_predictions_count_as_misses_and_false_positives():
    pred = {"L3-L4": (0.0, 3.0, 0.0), "L4-L5": (0.0, 0.0, -20.0)}  # 3 mm off; 10 mm off
    summary = summarize_keypoints(keypoint_rows("a", pred, GT))
    disc = summary["disc"]
    assert disc["fnr"] == 0.5 and disc["fpr"] == 0.5 and disc["identification"] == 0.5
    assert disc["dtt_mean_mm"] == pytest.approx(6.5) and disc["dtt_sd_mm"] == pytest.approx(3.5)
    assert disc["pck"]["4mm"] == 0.5 and disc["pck"]["10mm"] == 1.0
    assert summary["vertebra"]["fnr"] == 1.0 and summary["vertebra"]["n_predicted"] == 0


def test_levels_not_annotated_are_not_judged():
    pred = dict(GT, **{"L5-S1": (0.0, 0.0, -60.0)})
    summary = summarize_keypoints(keypoint_rows("a", pred, GT))
    assert summary["disc"]["n_predicted"] == 2 and summary["disc"]["fpr"] == 0.0


def test_dice_per_structure_and_per_kind():
    gt = np.zeros((4, 4, 4), np.uint8)
    gt[0, :2] = 44  # L4, 8 voxels
    gt[2, :2] = 95  # L4-L5
    pred = gt.copy()
    pred[0, 1] = 0  # L4 loses half
    rows = dice_rows("a", pred, gt)
    by_name = {r["structure"]: r["dice"] for r in rows}
    assert by_name["L4"] == pytest.approx(2 * 4 / 12)
    assert by_name["L4-L5"] == 1.0
    assert by_name["all vertebrae"] == pytest.approx(2 * 4 / 12)
    summary = summarize_dice(rows)
    assert summary["disc"]["per_structure"] == 1.0
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) is None


def test_dice_refuses_masks_on_different_grids():
    with pytest.raises(ValueError, match="differ in shape"):
        dice_rows("a", np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))
