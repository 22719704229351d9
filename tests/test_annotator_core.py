"""The annotator's rules without a viewer: open, edit, shift, undo, save, conflict, verify, next, predict.

These drive :class:`napari_ivd.annotator.Annotator` as a script would, on a real scan in a
real store; no Qt and no napari are imported here (the first test checks the module needs
neither).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_ivd import anatomy
from napari_ivd.annotator import Annotator, PredictionResult, SaveConflict, Saved, display_mask
from napari_ivd.corrections import same_points
from napari_ivd.errors import CorrectionError
from napari_ivd.inference import Prediction
from napari_ivd.io import read_volume
from napari_ivd.io.annotations import LabelledPoint, find_annotations
from napari_ivd.store import AnnotationStore

CASE_07 = "lumbar/VB2/case-07"
CASE_ID = "VB2_case-07"
OTHER = "again"


@pytest.fixture(scope="module")
def proposed_template(tmp_path_factory, shared_data) -> Path:
    """case-07 with its reference annotation as a model proposal (no revision), and a second, empty case."""
    location = tmp_path_factory.mktemp("annotator-core") / "annotations.zarr"
    store = AnnotationStore.open(location, create=True, fsync=False)
    volume = read_volume(shared_data / CASE_07 / "image.nii.gz")
    points, mask = find_annotations(shared_data / CASE_07, volume.geometry)
    store.add_case(volume, CASE_ID)
    store.add_proposal(CASE_ID, "refnet", points, mask)
    store.add_case(volume, OTHER, allow_copy=True)  # the same scan: a second case to switch to
    return location


@pytest.fixture
def store(proposed_template, tmp_path) -> AnnotationStore:
    return AnnotationStore.open(shutil.copytree(proposed_template, tmp_path / "annotations.zarr"), fsync=False)


def _moved(points: tuple[LabelledPoint, ...], level: str, by_vox: float) -> tuple[LabelledPoint, ...]:
    """``points`` with ``level`` moved ``by_vox`` voxels along j, as a drag in the viewer would."""
    return tuple(
        LabelledPoint(p.level, (p.ijk_vox[0], p.ijk_vox[1] + by_vox, p.ijk_vox[2]), 1.0) if p.level == level else p
        for p in points
    )


def _voxels(mask: np.ndarray, level: str) -> int:
    return int(np.count_nonzero(mask == anatomy.structure(level).tss_value))


def test_the_annotator_imports_without_qt_or_napari():
    blocked = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "vispy")
    probe = f"import sys; sys.modules.update(dict.fromkeys({blocked!r})); import napari_ivd.annotator; print('ok')"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr


def test_open_edit_shift_undo_save_conflict_on_top_verify_next(store):
    annotator = Annotator(store, author="dr-core")

    # open: the proposal is shown; it is what the next save started from
    annotator.open(CASE_ID)
    assert (annotator.parent_revision, annotator.proposal, annotator.origin) == (None, "p000001", "model:refnet")
    assert not annotator.has_unsaved_changes()
    unchanged = annotator.save_request()
    assert (unchanged.source, unchanged.parent, unchanged.proposal) == ("model:refnet", None, "p000001")
    opened_points, opened_mask = annotator.points, annotator.mask.copy()

    # edit: a moved point is unsaved and makes the revision the annotator's own
    annotator.edit_points(_moved(opened_points, "L3", 4.0))
    assert annotator.has_unsaved_changes() and annotator.save_request().source == "manual"
    assert annotator.undo() and not annotator.has_unsaved_changes()

    # a painted voxel is unsaved too
    annotator.mask[0, 0, 0] = anatomy.TSS_CANAL
    assert annotator.has_unsaved_changes()
    annotator.mask[0, 0, 0] = opened_mask[0, 0, 0]
    assert not annotator.has_unsaved_changes()

    # shift every level one down: the mask is relabelled with the points, undo restores both
    l4, l5 = _voxels(opened_mask, "L4"), _voxels(opened_mask, "L5")
    assert l4 > 0
    annotator.shift_levels(1)
    assert [p.level for p in annotator.points] == [anatomy.shift(p.level, 1).name for p in opened_points]
    assert _voxels(annotator.mask, "L5") == l4 and _voxels(annotator.mask, "S1") >= l5
    assert annotator.has_unsaved_changes()
    assert annotator.undo()
    assert same_points(annotator.points, opened_points) and np.array_equal(annotator.mask, opened_mask)
    assert not annotator.has_unsaved_changes()
    assert annotator.redo() and _voxels(annotator.mask, "L5") == l4
    shifted_points = annotator.points

    # a colleague saves meanwhile: mine is refused, nothing superseded, my edit still shown
    colleague = AnnotationStore.open(store.location)
    shown = colleague.load_proposal(CASE_ID)
    colleague.save_revision(CASE_ID, shown.points[1:], shown.mask_tss, author="colleague", proposal="p000001")
    conflict = annotator.save()
    assert isinstance(conflict, SaveConflict)
    assert (conflict.started_from, conflict.head) == ("p000001", "r000001")
    assert [r.author for r in store.revisions(CASE_ID)] == ["colleague"]
    assert annotator.has_unsaved_changes() and annotator.parent_revision is None

    # keep mine on top: both recorded, the new revision is the next parent, nothing unsaved
    saved = annotator.answer_conflict(conflict, "on_top")
    assert isinstance(saved, Saved) and saved.case.head == "r000002"
    mine = store.revision(CASE_ID)
    assert (mine.revision_id, mine.author, mine.source) == ("r000002", "dr-core", "manual")
    assert (mine.proposal, mine.based_on, mine.merged_over) == ("p000001", "p000001", "r000001")
    assert annotator.parent_revision == "r000002" and not annotator.has_unsaved_changes()
    stored = store.load(CASE_ID)
    assert same_points(stored.points, shifted_points, tol_vox=1e-4)
    assert np.array_equal(stored.mask_tss, annotator.mask_tss())
    assert _voxels(stored.mask_tss, "L5") == l4

    # verify: nothing unsaved, so no new revision
    info = annotator.verify()
    assert info.status == "verified" and info.n_revisions == 2
    assert [r.revision_id for r in store.revisions(CASE_ID)] == ["r000001", "r000002"]

    # next: the case not verified yet, nothing shown on it yet
    assert annotator.next_case() is not None
    assert (annotator.case_id, annotator.origin, annotator.parent_revision) == (OTHER, None, None)
    assert annotator.points == () and not annotator.mask.any() and not annotator.has_unsaved_changes()
    assert annotator.next_case_id() is None  # the only other case is verified


def test_reload_drops_my_edit_and_shows_the_colleagues_revision(store):
    annotator = Annotator(store, author="dr-core")
    annotator.open(CASE_ID)
    annotator.shift_levels(-1)
    colleague = AnnotationStore.open(store.location)
    shown = colleague.load_proposal(CASE_ID)
    colleague.save_revision(CASE_ID, shown.points, shown.mask_tss, author="colleague", proposal="p000001")
    conflict = annotator.save(status="verified")
    assert isinstance(conflict, SaveConflict)
    assert annotator.answer_conflict(conflict, "reload") is None
    assert (annotator.parent_revision, annotator.origin) == ("r000001", "manual")
    assert same_points(annotator.points, shown.points) and not annotator.has_unsaved_changes()
    assert annotator.answer_conflict(conflict, "cancel") is None
    assert len(store.revisions(CASE_ID)) == 1


def test_insert_set_level_step_and_their_undo(store):
    annotator = Annotator(store)
    annotator.open(CASE_ID)
    opened = annotator.points
    levels = [p.level for p in opened]
    gone = levels.index("L3-L4")
    annotator.edit_points(opened[:gone] + opened[gone + 1 :])  # the user deleted a disc
    l3, l4 = (next(i for i, p in enumerate(annotator.points) if p.level == name) for name in ("L3", "L4"))
    assert annotator.insert_disc(l3, l4) == "L3-L4"
    assert annotator.points[-1].level == "L3-L4" and annotator.points[-1].kind == "disc"
    annotator.set_level(l4, "L2")
    with pytest.raises(CorrectionError):
        annotator.save_request()  # L2 twice: the store would refuse it
    assert annotator.undo() and [p.level for p in annotator.points].count("L4") == 1
    annotator.step_level(l3, 1)
    assert annotator.points[l3].level == "L4"
    while annotator.undo():
        pass
    assert same_points(annotator.points, opened) and not annotator.has_unsaved_changes()


def test_a_prediction_keeps_what_was_edited_while_it_ran_unless_told_to_replace(store):
    annotator = Annotator(store)
    annotator.open(CASE_ID)
    annotator.finish_save(annotator.save())  # r000001, the proposal unchanged
    assert store.revision(CASE_ID).source == "model:refnet"
    opened = annotator.points

    def prediction(model: str) -> PredictionResult:
        """A finished prediction of every level one up, kept as a proposal, as predict_steps returns it."""
        start = annotator.prediction_start()
        volume = annotator.volume
        predicted = tuple(LabelledPoint(p.level, p.ijk_vox, 0.9) for p in opened[1:])
        mask = np.zeros(volume.geometry.shape, np.uint8)
        mask[:, :5, :] = anatomy.structure("L3").tss_value
        proposal = store.add_proposal(CASE_ID, model, predicted, mask)
        result = Prediction((), mask, model, 0.0)
        return PredictionResult(start, result, proposal, predicted, display_mask(mask, volume), store.case(CASE_ID))

    # the user moves a point while the model runs: the point is kept, the untouched mask is the prediction's
    result = prediction("net-a")
    edited = _moved(annotator.points, "L4", 3.0)
    annotator.edit_points(edited)
    assert annotator.edited_since(result.start) == ["points"]
    assert annotator.apply_prediction(result) == ["points"]
    assert same_points(annotator.points, edited) and np.array_equal(annotator.mask, result.mask)
    assert annotator.has_unsaved_changes() and annotator.origin == "model:net-a"
    assert annotator.parent_revision == "r000001" and annotator.proposal is None
    assert annotator.save_request().source == "manual"

    # told to replace: the prediction wins, and saved unchanged it is the model's revision
    result = prediction("net-b")
    annotator.mask[0, 0, 0] = anatomy.TSS_CANAL
    assert annotator.apply_prediction(result, replace=True) == []
    assert same_points(annotator.points, result.points) and not annotator.has_unsaved_changes()
    assert annotator.save_request().source == "model:net-b"
