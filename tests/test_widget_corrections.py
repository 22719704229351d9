"""Correcting an annotated case in the viewer: delete, insert a disc, rename, undo; switching case asks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_ivd import anatomy
from napari_ivd.corrections import same_points, sorted_points
from napari_ivd.data import sample_t2w_path
from napari_ivd.layer_data import image_layer_data
from napari_ivd.store import AnnotationStore
from widget_support import CASE_ID, canvas, copy_store, docked_annotator, make_store


@pytest.fixture(scope="module")
def annotated_store(tmp_path_factory, shared_data) -> Path:
    """Template store: case-07 with its reference discs, vertebrae and mask (r000001), and the sample scan."""
    root = tmp_path_factory.mktemp("annotated")
    return make_store(root, shared_data, with_annotations=True, extra_images=(sample_t2w_path(),))


def _open(make_napari_viewer, qtbot, location: Path, show: bool = False):
    viewer, widget = docked_annotator(make_napari_viewer, show=show)
    widget.auto_predict.setChecked(False)
    widget.dialogs.store = location
    qtbot.mouseClick(widget.open_button, Qt.MouseButton.LeftButton)
    with qtbot.waitSignal(widget.case_opened, timeout=30_000):
        widget.table.selectRow(widget.table.case_ids().index(CASE_ID))
    return viewer, widget


def _levels(layer) -> list[str]:
    return list(layer.features["level"])


def test_annotator_replaces_a_misplaced_disc_renames_one_and_undoes(
    make_napari_viewer, qtbot, annotated_store, tmp_path
):
    location = copy_store(annotated_store, tmp_path)
    viewer, widget = _open(make_napari_viewer, qtbot, location, show=True)
    case, tools = widget.case, widget.tools
    discs, vertebrae = case.points_layers["disc"], case.points_layers["vertebra"]
    opened = case.points()
    assert widget.annotator.parent_revision == "r000001" and "L3-L4" in _levels(discs)

    # delete the L3-L4 disc with the keyboard (napari's own tool)
    viewer.layers.selection.active = viewer.layers[discs.name]
    discs.mode = "select"
    discs.selected_data = {_levels(discs).index("L3-L4")}
    qtbot.keyClick(canvas(viewer), Qt.Key.Key_Delete)
    assert "L3-L4" not in _levels(discs)

    # select L3 and L4 and insert the disc between them: named, half-way, selected
    viewer.layers.selection.active = viewer.layers[vertebrae.name]  # the real layer, not the plugin proxy
    vertebrae.selected_data = {_levels(vertebrae).index("L3"), _levels(vertebrae).index("L4")}
    assert tools.insert_button.isEnabled()
    qtbot.mouseClick(tools.insert_button, Qt.MouseButton.LeftButton)
    assert _levels(discs)[-1] == "L3-L4" and viewer.layers.selection.active.name == discs.name
    l3, l4 = (vertebrae.data[_levels(vertebrae).index(n)] for n in ("L3", "L4"))
    assert np.allclose(discs.data[-1], (l3 + l4) / 2)
    assert set(discs.selected_data) == {len(discs.data) - 1}
    assert case.labels.selected_label == anatomy.structure("L3-L4").tss_value

    # rename the top disc from the level list; PageDown steps it one further
    top = _levels(discs).index("T11-T12")
    discs.selected_data = {top}
    assert tools.level_box.currentText() == "T11-T12"
    row = tools.level_box.findText("T10-T11")
    tools.level_box.setCurrentIndex(row)
    tools.level_box.activated.emit(row)
    assert _levels(discs)[top] == "T10-T11" and discs.features["score"].iloc[top] == 1.0
    qtbot.keyClick(canvas(viewer), Qt.Key.Key_PageDown)
    assert _levels(discs)[top] == "T11-T12"

    # undo everything, step by step, back to what was opened; redo the deletion
    for _ in range(4):
        qtbot.mouseClick(tools.undo_button, Qt.MouseButton.LeftButton)
    assert same_points(case.points(), opened) and not tools.undo_button.isEnabled()
    assert not widget.has_unsaved_changes()
    qtbot.mouseClick(tools.redo_button, Qt.MouseButton.LeftButton)
    assert "L3-L4" not in _levels(discs)
    qtbot.mouseClick(tools.redo_button, Qt.MouseButton.LeftButton)  # the inserted disc again
    expected = sorted_points(case.points())

    with qtbot.waitSignal(widget.saved, timeout=30_000):
        qtbot.mouseClick(widget.verify_button, Qt.MouseButton.LeftButton)  # saves, then verified
    store = AnnotationStore.open(location)
    info = store.revision(CASE_ID)
    assert (info.revision_id, info.parent, info.author) == ("r000002", "r000001", "dr-test")
    assert store.case(CASE_ID).status == "verified" and widget.table.statuses()[CASE_ID] == "verified"
    assert same_points(store.load(CASE_ID).points, expected, tol_vox=1e-4)


def test_switching_case_with_unsaved_edits_asks_and_does_what_was_answered(
    make_napari_viewer, qtbot, annotated_store, tmp_path
):
    location = copy_store(annotated_store, tmp_path)
    _viewer, widget = _open(make_napari_viewer, qtbot, location)
    dialogs = widget.dialogs
    qtbot.mouseClick(widget.tools.down_button, Qt.MouseButton.LeftButton)  # every level one down
    shifted = widget.case.points()
    other = widget.table.case_ids().index("t2_lumbar")

    dialogs.answers = ["cancel"]
    widget.table.selectRow(other)
    assert dialogs.asked == [(CASE_ID, "open t2_lumbar")]
    assert widget.annotator.case_id == CASE_ID and widget.case.points() == shifted
    assert widget.table.currentRow() == widget.table.case_ids().index(CASE_ID)

    dialogs.answers = ["save"]
    with qtbot.waitSignal(widget.case_opened, timeout=30_000):
        widget.table.selectRow(other)
    assert widget.annotator.case_id == "t2_lumbar" and len(dialogs.asked) == 2
    # the same layers now show the other scan, on its own grid
    assert widget.case.image.data.shape == widget.case.labels.data.shape == (38, 201, 257)
    assert widget.case.image.name == "t2_lumbar" and widget.case.points() == ()
    assert widget.case.image.contrast_limits == list(image_layer_data(widget.case.volume)[1]["contrast_limits"])
    store = AnnotationStore.open(location)
    assert store.case(CASE_ID).head == "r000002"
    assert same_points(store.load(CASE_ID).points, shifted, tol_vox=1e-4)

    # nothing edited on t2_lumbar: going back does not ask
    with qtbot.waitSignal(widget.case_opened, timeout=30_000):
        widget.table.selectRow(widget.table.case_ids().index(CASE_ID))
    assert len(dialogs.asked) == 2

    # a mask edit counts too; "discard" drops it
    widget.case.labels.paint((30, 150, 150), 45)
    dialogs.answers = ["discard"]
    with qtbot.waitSignal(widget.case_opened, timeout=30_000):
        widget.table.selectRow(other)
    assert len(dialogs.asked) == 3
    assert AnnotationStore.open(location).case(CASE_ID).head == "r000002"


def test_store_from_the_open_image_layer(make_napari_viewer, qtbot, tmp_path):
    viewer, widget = docked_annotator(make_napari_viewer)
    widget.auto_predict.setChecked(False)
    viewer.open_sample("napari-ivd", "lumbar_t2w")
    (original,) = viewer.layers
    widget.dialogs.new_store = tmp_path / "from-layer.zarr"
    with qtbot.waitSignal(widget.case_opened, timeout=30_000):
        qtbot.mouseClick(widget.layer_button, Qt.MouseButton.LeftButton)
    assert widget.table.case_ids() == ["t2_lumbar"]
    assert not original.visible and widget.case.image.visible  # the case's own layers take over
    store = AnnotationStore.open(tmp_path / "from-layer.zarr")
    assert store.read_image("t2_lumbar").array.shape == (38, 257, 201)


def _off_their_labels(case) -> list[str]:
    """Levels of the points that do not sit on their own level's mask label (display grid)."""
    wrong = []
    for layer in case.points_layers.values():
        for level, coords in zip(_levels(layer), layer.data, strict=True):
            value = case.labels.data[tuple(round(v) for v in coords)]
            if value != anatomy.structure(level).tss_value:
                wrong.append(f"{level} on {value}")
    return wrong


def test_all_levels_down_relabels_the_mask_with_the_points_and_undo_restores_both(
    make_napari_viewer, qtbot, annotated_store, tmp_path
):
    location = copy_store(annotated_store, tmp_path)
    _viewer, widget = _open(make_napari_viewer, qtbot, location)
    case, tools = widget.case, widget.tools
    discs = case.points_layers["disc"]
    for level, coords in zip(_levels(discs), discs.data, strict=True):  # the reference mask has no discs: paint them
        case.labels.brush_size = 3
        case.labels.paint(coords, anatomy.structure(level).tss_value)
    opened_points, opened_mask = case.points(), case.labels.data.copy()
    assert _off_their_labels(case) == [] and len(opened_points) == 13

    qtbot.mouseClick(tools.down_button, Qt.MouseButton.LeftButton)  # T11 -> T12 ... L5 -> S1
    assert "S1" in _levels(case.points_layers["vertebra"]) and "T11" not in _levels(case.points_layers["vertebra"])
    assert _off_their_labels(case) == []
    assert anatomy.TSS_SACRUM in np.unique(case.labels.data)
    shifted_mask = case.labels.data.copy()

    qtbot.mouseClick(tools.undo_button, Qt.MouseButton.LeftButton)
    assert same_points(case.points(), opened_points) and np.array_equal(case.labels.data, opened_mask)
    qtbot.mouseClick(tools.redo_button, Qt.MouseButton.LeftButton)
    assert np.array_equal(case.labels.data, shifted_mask) and _off_their_labels(case) == []

    # a second shift down would push S1 off the spine: refused for points and mask alike
    qtbot.mouseClick(tools.down_button, Qt.MouseButton.LeftButton)
    assert np.array_equal(case.labels.data, shifted_mask) and _off_their_labels(case) == []

    with qtbot.waitSignal(widget.saved, timeout=30_000):
        qtbot.mouseClick(widget.save_button, Qt.MouseButton.LeftButton)
    saved = AnnotationStore.open(location).load(CASE_ID)
    for p in saved.points:
        assert saved.mask_tss[tuple(round(v) for v in p.ijk_vox)] == anatomy.structure(p.level).tss_value
