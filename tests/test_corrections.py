"""Point corrections as an annotator makes them: off-by-one spines, a wrong name, a missed disc, undo."""

from __future__ import annotations

import numpy as np
import pytest

from napari_ivd import anatomy, corrections
from napari_ivd.corrections import (
    REVIEWED_SCORE,
    EditHistory,
    duplicate_levels,
    insert_disc,
    level_for_new_point,
    same_points,
    set_level,
    shift_levels,
    shift_mask_levels,
    sorted_points,
    step_level,
)
from napari_ivd.errors import CorrectionError, UnknownLevelError
from napari_ivd.io.annotations import LabelledPoint
from napari_ivd.io.geometry import VolumeGeometry

# voxel j runs from superior to inferior (z = 100 - j mm), i is left-right, k anterior-posterior
GEOMETRY = VolumeGeometry(np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 100], [0, 0, 0, 1]]), (40, 200, 80))


def _spine() -> tuple[LabelledPoint, ...]:
    """L2 ... L5 with their discs, 15 mm apart, a doubtful L3-L4."""
    return (
        LabelledPoint("L2", (20.0, 40.0, 30.0), 0.9),
        LabelledPoint("L2-L3", (20.0, 55.0, 32.0), 0.8),
        LabelledPoint("L3", (20.0, 70.0, 30.0), 0.9),
        LabelledPoint("L3-L4", (20.0, 85.0, 32.0), 0.3),
        LabelledPoint("L4", (20.0, 100.0, 30.0), 0.9),
        LabelledPoint("L4-L5", (20.0, 115.0, 32.0), 0.7),
        LabelledPoint("L5", (20.0, 130.0, 30.0), 0.9),
    )


def test_spine_counted_one_level_too_high_is_shifted_down_in_one_step():
    points = _spine()
    shifted = shift_levels(points, 1)
    assert [p.level for p in shifted] == ["L3", "L3-L4", "L4", "L4-L5", "L5", "L5-S1", "S1"]
    assert [p.ijk_vox for p in shifted] == [p.ijk_vox for p in points]
    assert [p.score for p in shifted] == [p.score for p in points]
    assert shift_levels(shifted, -1) == points


def test_shifting_past_the_sacrum_is_refused_and_changes_nothing():
    points = shift_levels(_spine(), 1)  # ends at S1
    with pytest.raises(CorrectionError, match="leaves the spine"):
        shift_levels(points, 1)


def test_shift_of_one_kind_leaves_the_other():
    shifted = shift_levels(_spine(), -1, kinds=("disc",))
    assert [p.level for p in shifted if p.kind == "disc"] == ["L1-L2", "L2-L3", "L3-L4"]
    assert [p.level for p in shifted if p.kind == "vertebra"] == ["L2", "L3", "L4", "L5"]


def test_renaming_one_point_marks_it_reviewed():
    points = set_level(_spine(), 3, "L1-L2")
    assert points[3] == LabelledPoint("L1-L2", (20.0, 85.0, 32.0), REVIEWED_SCORE)
    assert points[:3] == _spine()[:3] and points[4:] == _spine()[4:]
    assert step_level(points, 3, 1)[3].level == "L2-L3"
    assert duplicate_levels(step_level(points, 3, 1)) == ["L2-L3"]


def test_renaming_a_disc_as_a_vertebra_or_nonsense_is_refused():
    with pytest.raises(CorrectionError, match="is a disc"):
        set_level(_spine(), 1, "L3")
    with pytest.raises(UnknownLevelError):
        set_level(_spine(), 1, "L9-L10")
    with pytest.raises(CorrectionError, match="no point 12"):
        set_level(_spine(), 12, "L3")
    with pytest.raises(CorrectionError, match="leaves the spine"):
        step_level((LabelledPoint("S1", (0.0, 0.0, 0.0)),), 0, 1)


def test_disc_between_two_vertebrae_is_added_half_way_and_named():
    vertebrae = tuple(p for p in _spine() if p.kind == "vertebra")
    points, level = insert_disc(vertebrae, 2, 1)  # L4 and L3, any order
    assert level == "L3-L4"
    assert points[-1] == LabelledPoint("L3-L4", (20.0, 85.0, 30.0), REVIEWED_SCORE)
    assert points[:-1] == vertebrae


def test_missing_disc_between_two_discs_one_level_apart_is_filled():
    points = tuple(p for p in _spine() if p.level != "L3-L4")
    new, level = insert_disc(points, 1, 4)  # L2-L3 and L4-L5
    assert level == "L3-L4"
    assert np.allclose(new[-1].ijk_vox, (20.0, 85.0, 32.0))


def test_disc_missed_between_consecutively_named_discs_renames_the_discs_below():
    # the model skipped the disc between "L2-L3" and "L3-L4": those below are one level off
    points = (
        LabelledPoint("L2-L3", (20.0, 55.0, 32.0)),
        LabelledPoint("L3-L4", (20.0, 85.0, 32.0)),
        LabelledPoint("L4-L5", (20.0, 115.0, 32.0)),
        LabelledPoint("L3", (20.0, 70.0, 30.0)),
    )
    new, level = insert_disc(points, 0, 1)
    assert level == "L3-L4"
    assert [p.level for p in sorted_points(new) if p.kind == "disc"] == ["L2-L3", "L3-L4", "L4-L5", "L5-S1"]
    assert new[-1].ijk_vox == (20.0, 70.0, 32.0)
    assert new[3] == points[3]  # vertebrae untouched


@pytest.mark.parametrize(
    ("pair", "message"),
    [((0, 2), "exists already"), ((0, 4), "not neighbours"), ((0, 1), "two vertebrae or two discs"), ((1, 1), "two")],
)
def test_impossible_insertions_are_refused_with_a_reason(pair, message):
    with pytest.raises(CorrectionError, match=message):
        insert_disc(_spine(), *pair)


def test_insertion_that_would_push_a_disc_past_l5_s1_is_refused():
    points = (LabelledPoint("L4-L5", (0.0, 10.0, 0.0)), LabelledPoint("L5-S1", (0.0, 20.0, 0.0)))
    with pytest.raises(CorrectionError, match="shift every level up first"):
        insert_disc(points, 0, 1)


def test_added_point_takes_the_free_level_between_its_neighbours():
    points = tuple(p for p in _spine() if p.level != "L4")
    assert level_for_new_point(points, (20.0, 101.0, 30.0), "vertebra", GEOMETRY) == "L4"
    assert level_for_new_point(points, (20.0, 10.0, 30.0), "vertebra", GEOMETRY) == "L1"  # above L2
    assert level_for_new_point(points, (20.0, 160.0, 30.0), "vertebra", GEOMETRY) == "S1"  # below L5
    assert level_for_new_point(points, (20.0, 140.0, 30.0), "disc", GEOMETRY) == "L5-S1"
    assert level_for_new_point((), (20.0, 90.0, 30.0), "disc", GEOMETRY) == "L3-L4"


def test_added_point_with_no_free_level_is_named_and_flagged_as_a_duplicate():
    points = _spine()
    level = level_for_new_point(points, (20.0, 92.0, 30.0), "disc", GEOMETRY)  # between L3-L4 and L4-L5
    assert level == "L4-L5"
    assert duplicate_levels([*points, LabelledPoint(level, (20.0, 92.0, 30.0))]) == ["L4-L5"]


def test_same_points_ignores_order_but_not_moves_or_names():
    points = _spine()
    assert same_points(points, tuple(reversed(points)))
    moved = (*points[:-1], LabelledPoint("L5", (20.0, 131.0, 30.0), 0.9))
    assert not same_points(points, moved)
    assert not same_points(points, shift_levels(points, 1))
    assert not same_points(points, points[:-1])


def test_history_undoes_and_redoes_edits_in_order():
    points = _spine()
    history = EditHistory(points)
    assert not history.can_undo and history.undo() is None
    shifted = shift_levels(points, 1)
    renamed = set_level(shifted, 0, "L1")
    assert history.record(shifted) and history.record(renamed)
    assert not history.record(renamed)  # nothing changed: no step
    assert history.undo() == shifted and history.undo() == points and history.undo() is None
    assert history.redo() == shifted
    history.record(set_level(shifted, 1, "L1-L2"))  # a new edit drops what was undone
    assert not history.can_redo and history.redo() is None


def test_one_drag_is_one_undo_step_but_two_drags_are_two():
    points = _spine()
    history = EditHistory(points)
    drag = [(*points[:-1], LabelledPoint("L5", (20.0, 130.0 + d, 30.0), 0.9)) for d in (1, 2, 3)]
    for t, state in enumerate(drag):
        history.record(state, merge_key=("move", "vertebra", (3,)), now=10.0 + 0.05 * t)
    history.record(shift_levels(drag[-1], 1), now=10.2)
    history.record(drag[0], merge_key=("move", "vertebra", (3,)), now=10.3)  # another drag after another edit
    assert history.undo() == shift_levels(drag[-1], 1)
    assert history.undo() == drag[-1]
    assert history.undo() == points


def test_history_forgets_the_oldest_edits_beyond_its_limit():
    history = EditHistory((), limit=3)
    for n in range(5):
        history.record((LabelledPoint("L3", (0.0, float(n), 0.0)),))
    steps = 0
    while history.undo() is not None:
        steps += 1
    assert steps == 3


def _labelled_mask(levels: list[str], dtype: type = np.uint8) -> np.ndarray:
    """One slab per level along the second axis, plus cord and canal voxels that must stay."""
    mask = np.zeros((3, 4 * len(levels) + 2, 5), dtype)
    for n, level in enumerate(levels):
        mask[:, 4 * n : 4 * n + 4] = anatomy.structure(level).tss_value
    mask[:, -2] = anatomy.TSS_CORD
    mask[:, -1] = anatomy.TSS_CANAL
    return mask


@pytest.mark.parametrize("dtype", [np.uint8, np.int32])
def test_mask_levels_shift_like_the_points_and_shift_back(dtype, monkeypatch):
    monkeypatch.setattr(corrections, "_MASK_CHUNK_VOXELS", 20)  # several slabs, the last one short
    levels = ["T12", "T12-L1", "L1", "L4", "L4-L5", "L5"]  # T12 -> L1 while L1 -> L2: no label moves twice
    mask = _labelled_mask(levels, dtype)
    original = mask.copy()
    assert shift_mask_levels(mask, 1) is mask  # in place
    expected = ["L1", "L1-L2", "L2", "L5", "L5-S1", "S1"]
    assert [anatomy.shift(level, 1).name for level in levels] == expected
    assert np.array_equal(mask, _labelled_mask(expected, dtype))
    shift_mask_levels(mask, -1)
    assert np.array_equal(mask, original)


def test_each_point_stays_on_its_own_mask_label_after_a_shift():
    points = _spine()
    mask = np.zeros(GEOMETRY.shape, np.uint8)
    for p in points:
        i, j, k = (round(v) for v in p.ijk_vox)
        mask[i - 1 : i + 2, j - 2 : j + 3, k - 2 : k + 3] = anatomy.structure(p.level).tss_value
    for steps in (-2, 1):
        moved, relabelled = shift_levels(points, steps), shift_mask_levels(mask.copy(), steps)
        for p in moved:
            assert relabelled[tuple(round(v) for v in p.ijk_vox)] == anatomy.structure(p.level).tss_value


@pytest.mark.parametrize(
    ("levels", "steps", "words"),
    [
        (["L5", "S1"], 1, "value 50"),  # the sacrum cannot move further down
        (["C2-C3", "C3"], -1, "C1-C2"),  # TotalSpineSeg has no C1-C2 value
        (["L3"], 0, None),
    ],
)
def test_a_mask_shift_off_the_spine_is_refused_and_changes_nothing(levels, steps, words):
    mask = _labelled_mask(levels)
    original = mask.copy()
    if words is None:
        assert np.array_equal(shift_mask_levels(mask, steps), original)
        return
    with pytest.raises(CorrectionError, match=words):
        shift_mask_levels(mask, steps)
    assert np.array_equal(mask, original)


def test_a_mask_with_values_totalspineseg_does_not_know_is_refused():
    mask = _labelled_mask(["L3"])
    mask[0, 0, 0] = 3
    with pytest.raises(CorrectionError, match="value 3"):
        shift_mask_levels(mask, 1)


def test_history_keeps_the_mask_shift_of_each_step():
    points = _spine()
    history = EditHistory(points)
    down = shift_levels(points, 1)
    assert history.record(down, mask_shift=1)
    assert history.record(set_level(down, 0, "L1"))  # a point edit keeps the mask where it is
    assert history.mask_shift == 1
    assert not history.record(set_level(down, 0, "L1"), mask_shift=1)
    assert history.undo() == down and history.mask_shift == 1
    assert history.undo() == points and history.mask_shift == 0
    assert history.redo() == down and history.mask_shift == 1
    history.reset(down)
    assert history.mask_shift == 0
