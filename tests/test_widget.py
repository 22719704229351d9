"""The annotator as a user drives it in a real viewer (under xvfb): predict, correct, save, reopen.

Real scans only (``shared_data``); the model is the bundled starter model on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from napari.utils.notifications import notification_manager
from qtpy.QtCore import Qt

from napari_ivd import anatomy
from napari_ivd.corrections import same_points
from napari_ivd.inference import PREDICT_STAGES
from napari_ivd.io import read_volume
from napari_ivd.store import AnnotationStore
from widget_support import (
    CASE_07,
    CASE_ID,
    canvas,
    copy_store,
    docked_annotator,
    drag,
    exceptions_closing_napari,
    make_store,
    notifications_since,
)

PREDICT_TIMEOUT_MS = 180_000


@pytest.fixture(scope="module")
def image_only_store(tmp_path_factory, shared_data) -> Path:
    """Template store: case-07's scan, nothing annotated yet."""
    return make_store(tmp_path_factory.mktemp("template"), shared_data, with_annotations=False)


def test_annotator_predicts_corrects_and_saves_a_revision_that_a_fresh_viewer_finds(
    make_napari_viewer, qtbot, image_only_store, tmp_path
):
    location = copy_store(image_only_store, tmp_path)
    viewer, widget = docked_annotator(make_napari_viewer, show=True)
    assert "Shift+S: Save correction" in widget.toolTip()
    widget.dialogs.store = location
    qtbot.mouseClick(widget.open_button, Qt.MouseButton.LeftButton)
    assert widget.table.case_ids() == [CASE_ID]

    # Next case opens case-07; it has no proposal yet, so the model runs off the GUI thread
    shown = len(notification_manager.records)
    with qtbot.waitSignal(widget.predicted, timeout=PREDICT_TIMEOUT_MS):
        qtbot.mouseClick(widget.next_button, Qt.MouseButton.LeftButton)
    # the starter names this scan's whole chain: nothing to look at first
    assert not [n for n in notifications_since(shown) if ": check " in n]
    case = widget.case
    vertebrae, labels = case.points_layers["vertebra"], case.labels
    proposed = case.points()
    assert {"L3", "L4", "L3-L4"} <= {p.level for p in proposed}
    assert labels.data.any() and not widget.has_unsaved_changes()
    assert widget.table.statuses()[CASE_ID] == "proposed"

    # 1. drag L3 6 mm down in select mode, with the mouse
    index = list(vertebrae.features["level"]).index("L3")
    start = vertebrae.data_to_world(vertebrae.data[index])
    viewer.dims.set_point(0, start[0])
    viewer.layers.selection.active = viewer.layers[vertebrae.name]  # the real layer, not the plugin proxy
    vertebrae.mode = "select"
    viewer.scene.camera.center, viewer.scene.camera.zoom = start[1:], 3.0
    qtbot.wait(100)
    drag(viewer, start, start + np.array([0.0, 6.0, 0.0]))
    moved = vertebrae.data_to_world(vertebrae.data[index])
    assert moved[1] == pytest.approx(start[1] + 6.0, abs=1.0) and moved[2] == pytest.approx(start[2], abs=1.0)
    assert set(vertebrae.selected_data) == {index}
    assert labels.selected_label == anatomy.structure("L3").tss_value  # the label follows the point
    assert widget.has_unsaved_changes()

    # 2. the whole spine was counted one level too low: Shift+U in the canvas shifts every level up
    qtbot.keyClick(canvas(viewer), Qt.Key.Key_U, Qt.KeyboardModifier.ShiftModifier)
    assert [p.level for p in case.points()] == [anatomy.shift(p.level, -1).name for p in proposed]
    assert labels.selected_label == anatomy.structure("L2").tss_value

    # the mask's labels moved with the points: L3's label is L2's now, under the renamed point
    assert labels.data[tuple(np.round(vertebrae.data[index]).astype(int))] in (0, labels.selected_label)

    # 3. fix one mask voxel with napari's brush, in the selected structure's label (the first one beside it without)
    centre = np.round(vertebrae.data[index]).astype(int)
    voxel = next(
        centre + np.array([0, 0, d])
        for d in range(3, 60)
        if labels.data[tuple(centre + np.array([0, 0, d]))] != labels.selected_label
    )
    labels.brush_size = 1
    labels.paint(voxel, labels.selected_label)
    file_voxel = tuple(np.round(case.view.display_to_vox(voxel[None])[0]).astype(int))

    # 4. save
    with qtbot.waitSignal(widget.saved, timeout=30_000) as saved:
        qtbot.mouseClick(widget.save_button, Qt.MouseButton.LeftButton)
    assert saved.args == ["r000001"] and not widget.has_unsaved_changes()
    expected_points, expected_mask = case.points(), case.mask_tss()
    assert expected_mask[file_voxel] == anatomy.structure("L2").tss_value

    # a fresh viewer finds exactly that revision
    _viewer2, widget2 = docked_annotator(make_napari_viewer)
    widget2.dialogs.store = location
    qtbot.mouseClick(widget2.open_button, Qt.MouseButton.LeftButton)
    assert widget2.table.statuses()[CASE_ID] == "in progress"
    with qtbot.waitSignal(widget2.case_opened, timeout=30_000):
        widget2.table.selectRow(0)
    assert widget2.annotator.parent_revision == "r000001"
    assert same_points(widget2.case.points(), expected_points, tol_vox=1e-4)
    reopened = widget2.case.mask_tss()
    assert reopened[file_voxel] == anatomy.structure("L2").tss_value
    assert np.array_equal(reopened, expected_mask)
    info = AnnotationStore.open(location).revision(CASE_ID)
    assert (info.author, info.parent, info.source) == ("dr-test", None, "manual")


def test_after_predicting_the_annotator_says_what_to_check_first(make_napari_viewer, qtbot, shared_data, tmp_path):
    """A scan the starter never saw and names one level off: its chain stops short of the top, said at once."""
    location = tmp_path / "annotations.zarr"
    store = AnnotationStore.open(location, create=True, fsync=False)
    store.add_case(read_volume(shared_data / "lumbar/VB3/case-49/image.nii.gz"), "VB3_case-49")
    _viewer, widget = docked_annotator(make_napari_viewer)
    widget.dialogs.store = location
    qtbot.mouseClick(widget.open_button, Qt.MouseButton.LeftButton)
    shown = len(notification_manager.records)
    with qtbot.waitSignal(widget.predicted, timeout=PREDICT_TIMEOUT_MS):
        qtbot.mouseClick(widget.next_button, Qt.MouseButton.LeftButton)
    (said,) = [n for n in notifications_since(shown) if ": check " in n]
    assert said.startswith("VB3_case-49: check L1, T12-L1 and T12 missing: the chain stops")
    assert said.endswith("below the top of the scan")


def test_cancel_stops_a_prediction_and_leaves_the_case_as_it_was(make_napari_viewer, qtbot, image_only_store, tmp_path):
    location = copy_store(image_only_store, tmp_path)
    _viewer, widget = docked_annotator(make_napari_viewer)
    widget.auto_predict.setChecked(False)
    widget.open_store(location)
    with qtbot.waitSignal(widget.case_opened, timeout=30_000):
        widget.next_case()
    start = len(notification_manager.records)
    with qtbot.waitSignal(widget.job_done, timeout=PREDICT_TIMEOUT_MS):
        qtbot.mouseClick(widget.predict_button, Qt.MouseButton.LeftButton)
        # progress shows in napari's activity panel: loading the model, predicting, keeping the proposal
        assert widget.worker.pbar.total == 1 + len(PREDICT_STAGES) + 1
        qtbot.mouseClick(widget.cancel_button, Qt.MouseButton.LeftButton)
    assert f"Predict {CASE_ID}: cancelled" in notifications_since(start)
    assert widget.case.points() == () and not widget.case.labels.data.any()
    assert AnnotationStore.open(location).case(CASE_ID).n_proposals == 0
    assert widget.predict_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_closing_napari_while_predicting_leaves_no_traceback(make_napari_viewer, qtbot, image_only_store, tmp_path):
    """napari stops the prediction as its window closes; the end reaches no deleted widget."""
    viewer, widget = docked_annotator(make_napari_viewer)
    widget.auto_predict.setChecked(False)
    widget.open_store(copy_store(image_only_store, tmp_path))
    with qtbot.waitSignal(widget.case_opened, timeout=30_000):
        widget.next_case()
    qtbot.mouseClick(widget.predict_button, Qt.MouseButton.LeftButton)
    assert exceptions_closing_napari(qtbot, viewer, widget, widget.worker, PREDICT_TIMEOUT_MS) == []


def test_bad_files_and_a_bad_model_are_notifications_and_the_viewer_stays_usable(
    make_napari_viewer, qtbot, shared_data, tmp_path
):
    folder = tmp_path / "scans"
    for sub in ("sub-01", "sub-02", "sub-03", "sub-04"):
        (folder / sub).mkdir(parents=True)
    (folder / "sub-01" / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08 truncated")
    (folder / "sub-02" / "t2.nii.gz").write_bytes((shared_data / CASE_07 / "image.nii.gz").read_bytes())
    (folder / "sub-04" / "t2-again.nii.gz").write_bytes((folder / "sub-02" / "t2.nii.gz").read_bytes())
    (folder / "sub-02" / "t2_mask.nii.gz").write_bytes(b"skipped: a mask, not a scan")
    noise = np.random.default_rng(0).random((16, 16, 4)).astype(np.float32)  # readable, but no spine in it
    nib.save(nib.Nifti1Image(noise, np.diag([1.0, 1.0, 3.0, 1.0])), folder / "sub-03" / "noise.nii.gz")
    bad_model = tmp_path / "half-copied-model"
    bad_model.mkdir()
    (bad_model / "card.json").write_text("{ not json")
    _viewer, widget = docked_annotator(make_napari_viewer)
    widget.auto_predict.setChecked(False)
    widget.dialogs.folder, widget.dialogs.new_store = folder, tmp_path / "new.zarr"
    widget.dialogs.model = bad_model

    start = len(notification_manager.records)
    with qtbot.waitSignal(widget.case_opened, timeout=60_000):
        qtbot.mouseClick(widget.folder_button, Qt.MouseButton.LeftButton)
    broken, again = notifications_since(start)
    assert broken.startswith("Not imported: broken.nii.gz") and "not a readable NIfTI file" in broken
    assert again.startswith("Not imported: t2-again.nii.gz") and "already in the store as case t2 " in again
    assert widget.table.case_ids() == ["noise", "t2"] and widget.annotator.case_id == "noise"

    # a scan without a spine: the prediction is empty, and the user is told so
    start = len(notification_manager.records)
    with qtbot.waitSignal(widget.predicted, timeout=PREDICT_TIMEOUT_MS):
        qtbot.mouseClick(widget.predict_button, Qt.MouseButton.LeftButton)
    assert notifications_since(start) == ["noise: the model found no disc or vertebra; annotate by hand"]

    # a broken model folder: an error notification, no traceback
    browse = widget.model_box.findText("Browse…")
    widget.model_box.setCurrentIndex(browse)
    widget.model_box.activated.emit(browse)
    assert widget.model_box.currentData() == str(bad_model)
    start = len(notification_manager.records)
    with qtbot.waitSignal(widget.job_done, timeout=60_000):
        qtbot.mouseClick(widget.predict_button, Qt.MouseButton.LeftButton)
    (message,) = notifications_since(start)
    assert message.startswith("Predict noise:") and "card.json is not readable JSON" in message
    assert "Traceback" not in message

    # still usable: another case opens, takes an edit and saves
    assert widget.predict_button.isEnabled() and not widget.cancel_button.isEnabled()
    with qtbot.waitSignal(widget.case_opened, timeout=30_000):
        widget.table.selectRow(1)
    widget.case.labels.paint((30, 200, 200), 41)
    with qtbot.waitSignal(widget.saved, timeout=30_000):
        qtbot.mouseClick(widget.save_button, Qt.MouseButton.LeftButton)
    assert AnnotationStore.open(tmp_path / "new.zarr").case("t2").head == "r000001"
