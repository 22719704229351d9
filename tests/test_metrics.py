"""The papers' metrics on hand-made cases whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from napari_ivd.metrics import (
    chain_failures,
    dice,
    dice_rows,
    keypoint_rows,
    l5_s1_outcome,
    renamed_levels,
    sacrum_in_view,
    summarize_dice,
    summarize_keypoints,
)

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


# A sagittal grid (rows S->I, cols A->P, slices L->R), 1 mm voxels: L4 and L5 bodies 35 mm apart.
L4_L5_VOX = {"L4": (150.0, 110.0, 38.0), "L5": (185.0, 114.0, 39.0)}


@pytest.mark.parametrize(
    ("reference", "shape", "in_view"),
    [
        (L4_L5_VOX, (224, 224, 77), True),  # L5 + (L5 - L4) = row 220: inside
        (L4_L5_VOX, (220, 224, 77), False),  # the image ends at row 219.5, just above that point
        (L4_L5_VOX, (221, 224, 77), True),
        (L4_L5_VOX, (224, 224, 39), False),  # the point leaves the slab left-right (slice 40)
        ({"L3": (110.0, 110.0, 38.0), "L4": (150.0, 110.0, 38.0)}, (400, 400, 77), False),  # no L5: cannot tell
        ({"L4-L5": (168.0, 112.0, 38.0), "L5-S1": (200.0, 120.0, 38.0)}, (201, 224, 77), True),  # labelled
        ({"S1": (220.0, 130.0, 38.0)}, (224, 224, 77), True),
    ],
)
def test_the_sacrum_is_in_view_when_the_reference_labels_it_or_the_image_reaches_a_body_below_L5(
    reference, shape, in_view
):
    assert sacrum_in_view(reference, shape) is in_view


L4_L5_MM = {"L4": (0.0, 0.0, 0.0), "L5": (0.0, 4.0, -35.0), "L4-L5": (0.0, 2.0, -17.5)}  # L5-S1 implied at z = -52.5


@pytest.mark.parametrize(
    ("pred_l5_s1", "outcome"),
    [
        ((0.0, 14.0, -52.0), "named"),  # 11.8 mm behind the implied point (lordosis): within 17.6 mm
        ((0.0, 6.0, -60.0), "named"),
        ((0.0, 2.0, -17.5), "misplaced"),  # on the L4-L5 disc: the chain is one level off
        ((0.0, 3.0, -30.0), "misplaced"),  # in the L5 body, 22.7 mm away
        (None, "missing"),
    ],
)
def test_L5_S1_is_named_within_half_a_level_of_where_a_reference_stopping_at_L5_implies_it(pred_l5_s1, outcome):
    pred = dict(L4_L5_MM) | ({"L5-S1": pred_l5_s1} if pred_l5_s1 else {})
    assert l5_s1_outcome(pred, L4_L5_MM) == outcome


def test_an_annotated_L5_S1_is_judged_at_its_own_place_also_on_a_disc_only_reference():
    discs = {"L4-L5": (0.0, 0.0, 0.0), "L5-S1": (0.0, 10.0, -30.0)}  # 31.6 mm apart
    assert l5_s1_outcome({"L5-S1": (0.0, 10.0, -45.0)}, discs) == "named"  # 15 mm off
    assert l5_s1_outcome({"L5-S1": (0.0, 10.0, -47.0)}, discs) == "misplaced"  # 17 mm off
    bodies = L4_L5_MM | {"L5-S1": (0.0, 20.0, -50.0)}  # its own point, not the implied one
    assert l5_s1_outcome({"L5-S1": (0.0, 20.0, -50.0)}, bodies) == "named"
    assert l5_s1_outcome({"L5-S1": (0.0, 2.0, -67.0)}, bodies) == "misplaced"  # 23.7 mm from it


def test_a_reference_that_places_no_L5_S1_is_refused_with_what_it_needs():
    with pytest.raises(ValueError, match="L4 and L5, or L5-S1 and L4-L5"):
        l5_s1_outcome({"L5-S1": (0.0, 0.0, 0.0)}, {"L3": (0.0, 0.0, 0.0), "L5": (0.0, 0.0, -70.0)})


def _shifted_up(points):
    """Each structure named as the one above it (a chain one level off): L4 -> L3, L4-L5 -> L3-L4."""
    up = {"L4": "L3", "L5": "L4", "L3-L4": "L2-L3", "L4-L5": "L3-L4", "L5-S1": "L4-L5"}
    return {up[name]: xyz for name, xyz in points.items()}


def test_chain_failures_find_a_chain_one_level_off_and_a_missed_level():
    assert chain_failures(GT, GT) == ()
    assert chain_failures(_shifted_up(GT), GT) == ("misnamed",)  # every distance fine, every name wrong
    one_wrong = dict(GT) | {"L3-L4": GT["L4-L5"], "L4-L5": (0.0, 0.0, -60.0)}
    assert chain_failures(one_wrong, GT) == ("missing level",)  # one misname in three found is not a chain
    without_l5 = {n: p for n, p in GT.items() if n != "L5"}
    assert chain_failures(without_l5, GT) == ("missing level",)
    assert chain_failures(_shifted_up(without_l5), GT) == ("misnamed", "missing level")
    moved = {n: (x, y, z - 12.0) for n, (x, y, z) in GT.items()}
    assert chain_failures(moved, GT) == ("missing level",)  # nothing within 5 mm: everything missed


def test_chain_failures_count_l5_s1_only_where_the_sacrum_is_in_view():
    assert chain_failures(GT, GT, l5_s1_in_view=True) == ("missing level",)  # the reference implies an L5-S1
    with_l5_s1 = dict(GT) | {"L5-S1": (0.0, 0.0, -58.0)}
    assert chain_failures(with_l5_s1, GT, l5_s1_in_view=True) == ()
    assert chain_failures(GT, GT, l5_s1_in_view=False) == ()


def test_renamed_levels_pairs_each_structure_with_the_other_naming_at_its_place():
    """A chain named one level low (every name one step caudal, the same places) is renamed throughout."""
    earlier = {name: np.asarray(xyz) for name, xyz in GT.items()}
    shifted = {"L4-L5": earlier["L3-L4"], "L5-S1": earlier["L4-L5"], "L5": earlier["L4"], "S1": earlier["L5"]}
    assert renamed_levels(shifted, earlier) == {"L4-L5": "L3-L4", "L5-S1": "L4-L5", "L5": "L4", "S1": "L5"}
    assert renamed_levels(earlier, earlier) == {}  # the same names: nothing renamed
    moved = {name: xyz + np.array([0.0, 0.0, 11.0]) for name, xyz in shifted.items()}
    assert renamed_levels(moved, earlier) == {}  # beyond 10 mm of anything of its kind: not the same structure
    assert renamed_levels({"L4": earlier["L4-L5"]}, {"L4-L5": earlier["L4-L5"]}) == {}  # a disc is never a vertebra
