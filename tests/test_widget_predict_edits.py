"""Edits made while a prediction runs survive its result: the user is asked, the prediction never silently wins."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from napari.utils.notifications import notification_manager
from qtpy.QtCore import Qt

from napari_ivd.corrections import same_points
from napari_ivd.store import AnnotationStore
from widget_support import CASE_ID, copy_store, docked_annotator, make_store, notifications_since

PREDICT_TIMEOUT_MS = 180_000


@pytest.fixture(scope="module")
def annotated_store(tmp_path_factory, shared_data) -> Path:
    """Template store: case-07 with its reference points and mask (r000001)."""
    return make_store(tmp_path_factory.mktemp("annotated"), shared_data, with_annotations=True)


def test_a_point_moved_during_a_prediction_is_kept_and_a_replaced_mask_is_asked_for(
    make_napari_viewer, qtbot, annotated_store, tmp_path
):
    location = copy_store(annotated_store, tmp_path)
    _viewer, widget = docked_annotator(make_napari_viewer)
    widget.auto_predict.setChecked(False)
    widget.open_store(location)
    with qtbot.waitSignal(widget.case_opened, timeout=30_000):
        widget.next_case()
    case, dialogs = widget.case, widget.dialogs
    vertebrae = case.points_layers["vertebra"]
    opened_mask = case.labels.data.copy()

    # 1. the user moves L3 while the model runs; the result asks, "keep" keeps the moved point
    start = len(notification_manager.records)
    with qtbot.waitSignal(widget.predicted, timeout=PREDICT_TIMEOUT_MS):
        qtbot.mouseClick(widget.predict_button, Qt.MouseButton.LeftButton)
        assert widget.worker is not None  # still running: the edit below happens during the prediction
        moved = vertebrae.data.copy()
        moved[list(vertebrae.features["level"]).index("L3")] += (0.0, 5.0, 0.0)
        vertebrae.data = moved
        edited_points = case.points()
    assert dialogs.asked_prediction == [(CASE_ID, ["points"])]
    assert same_points(case.points(), edited_points)
    # the untouched mask took the prediction
    assert not np.array_equal(case.labels.data, opened_mask) and np.array_equal(
        case.labels.data, widget.annotator.baseline[1]
    )
    assert widget.has_unsaved_changes() and "unsaved changes" in widget.status_label.text()
    assert any("kept" in m and "points" in m for m in notifications_since(start))
    proposal_points = widget.annotator.baseline[0]
    assert not same_points(proposal_points, edited_points)

    # the kept edit saves as the user's (manual) revision, on top of the opened one
    with qtbot.waitSignal(widget.saved, timeout=30_000):
        qtbot.mouseClick(widget.save_button, Qt.MouseButton.LeftButton)
    store = AnnotationStore.open(location)
    assert store.revision(CASE_ID).source == "manual"
    assert same_points(store.load(CASE_ID).points, edited_points, tol_vox=1e-4)

    # 2. the user paints the mask during the next prediction and chooses the prediction: both replaced
    dialogs.prediction_answer = "replace"
    with qtbot.waitSignal(widget.predicted, timeout=PREDICT_TIMEOUT_MS):
        qtbot.mouseClick(widget.predict_button, Qt.MouseButton.LeftButton)
        case.labels.paint((30, 150, 150), 45)
    assert dialogs.asked_prediction[-1] == (CASE_ID, ["mask"])
    assert same_points(case.points(), proposal_points) and not widget.has_unsaved_changes()

    # 3. nothing touched: the prediction applies without a question
    asked = len(dialogs.asked_prediction)
    with qtbot.waitSignal(widget.predicted, timeout=PREDICT_TIMEOUT_MS):
        qtbot.mouseClick(widget.predict_button, Qt.MouseButton.LeftButton)
    assert len(dialogs.asked_prediction) == asked and not widget.has_unsaved_changes()
