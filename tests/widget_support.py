"""Helpers for the annotator widget tests: a docked widget, scripted dialogs, real mouse and keys."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from napari.utils.notifications import notification_manager
from qtpy.QtCore import QEvent, QPointF, Qt
from qtpy.QtGui import QMouseEvent
from qtpy.QtTest import QTest
from qtpy.QtWidgets import QApplication

from napari_ivd.io import read_volume
from napari_ivd.io.annotations import find_annotations
from napari_ivd.store import AnnotationStore

CASE_07 = "lumbar/VB2/case-07"
CASE_ID = "VB2_case-07"


@dataclass
class ScriptedDialogs:
    """Answers the annotator's questions without a window and records them."""

    store: Path | None = None
    folder: Path | None = None
    new_store: Path | None = None
    model: Path | None = None
    answers: list[str] = field(default_factory=list)
    asked: list[tuple[str, str]] = field(default_factory=list)
    prediction_answer: str = "keep"
    asked_prediction: list[tuple[str, list[str]]] = field(default_factory=list)
    training_answers: list[str] = field(default_factory=list)
    asked_training: int = 0

    def ask_unsaved(self, case_id: str, action: str) -> str:
        self.asked.append((case_id, action))
        return self.answers.pop(0) if self.answers else "discard"

    def ask_prediction_over_edits(self, case_id: str, edited: list[str]) -> str:
        self.asked_prediction.append((case_id, edited))
        return self.prediction_answer

    def ask_stop_training(self) -> str:
        self.asked_training += 1
        return self.training_answers.pop(0) if self.training_answers else "keep"

    def ask_conflict(self, case_id: str, started_from: str | None, head: str | None) -> str:
        self.asked.append((case_id, f"conflict {started_from} -> {head}"))
        return self.answers.pop(0) if self.answers else "cancel"

    def choose_store(self) -> Path | None:
        return self.store

    def choose_image_folder(self) -> Path | None:
        return self.folder

    def choose_new_store(self, suggestion: Path) -> Path | None:
        return self.new_store

    def choose_model_folder(self) -> Path | None:
        return self.model


def docked_annotator(make_napari_viewer: Any, show: bool = False) -> tuple[Any, Any]:
    """A viewer with the annotator docked through its napari.yaml contribution, dialogs scripted."""
    viewer = make_napari_viewer(show=show)
    _, widget = viewer.window.add_plugin_dock_widget("napari-ivd", "Spine annotator")
    widget.dialogs = ScriptedDialogs()
    widget.author_edit.setText("dr-test")
    return viewer, widget


def exceptions_closing_napari(qtbot: Any, viewer: Any, widget: Any, worker: Any, timeout_ms: int) -> list[Any]:
    """Close ``viewer`` while ``worker`` runs for ``widget``; the exceptions Qt's event loop saw until its end.

    Waits for Qt to delete ``widget``, then for the worker to stop (napari quits it) and
    its queued callbacks to run.
    """
    with qtbot.capture_exceptions() as exceptions:
        with qtbot.waitSignal(widget.destroyed, timeout=10_000):
            viewer.close()
        qtbot.waitUntil(lambda: not worker.is_running, timeout=timeout_ms)
        qtbot.wait(100)
    return list(exceptions)


def notifications_since(start: int) -> list[str]:
    """Notification messages emitted after record ``start``."""
    return [str(n.message) for n in notification_manager.records[start:]]


def make_store(root: Path, shared_data: Path, with_annotations: bool, extra_images: tuple[Path, ...] = ()) -> Path:
    """A store holding case-07 (image only, or with its reference discs, vertebrae and mask)."""
    location = root / "annotations.zarr"
    store = AnnotationStore.open(location, create=True, fsync=False)
    volume = read_volume(shared_data / CASE_07 / "image.nii.gz")
    if with_annotations:
        points, mask = find_annotations(shared_data / CASE_07, volume.geometry)
        store.add_case(volume, CASE_ID, points=points, mask=mask, author="reference", note="imported")
    else:
        store.add_case(volume, CASE_ID)
    for image in extra_images:
        store.add_case(read_volume(image))
    return location


def copy_store(template: Path, root: Path) -> Path:
    """A private copy of a template store (each test edits its own)."""
    return Path(shutil.copytree(template, root / template.name))


def canvas(viewer: Any) -> Any:
    """The vispy canvas's Qt widget, which receives the user's mouse and keys."""
    return viewer.window._qt_viewer.canvas.native


def world_to_canvas(viewer: Any, world: np.ndarray) -> QPointF:
    """Canvas pixel where a world point (mm) of the shown slice is drawn."""
    vispy = viewer.window._qt_viewer.canvas
    transform = vispy.view.transform * vispy.view.scene.transform
    shown = [world[d] for d in viewer.dims.displayed][::-1]  # vispy orders axes x, y
    x, y = transform.map([*shown, 0, 1])[:2]
    return QPointF(float(x), float(y))


def drag(viewer: Any, start_world: np.ndarray, end_world: np.ndarray, steps: int = 5) -> None:
    """Press the left button at one world point, move to another and release, as a hand would."""
    widget = canvas(viewer)
    start, end = world_to_canvas(viewer, start_world), world_to_canvas(viewer, end_world)

    def send(kind: QEvent.Type, at: QPointF, buttons: Any) -> None:
        button = Qt.MouseButton.LeftButton if kind != QEvent.Type.MouseMove else Qt.MouseButton.NoButton
        event = QMouseEvent(kind, at, widget.mapToGlobal(at), button, buttons, Qt.KeyboardModifier.NoModifier)
        QApplication.sendEvent(widget, event)
        QTest.qWait(30)  # let napari handle each move before the next (it coalesces fast moves)

    send(QEvent.Type.MouseMove, start, Qt.MouseButton.NoButton)
    send(QEvent.Type.MouseButtonPress, start, Qt.MouseButton.LeftButton)
    for t in np.linspace(0, 1, steps + 1)[1:]:
        at = QPointF(start.x() + t * (end.x() - start.x()), start.y() + t * (end.y() - start.y()))
        send(QEvent.Type.MouseMove, at, Qt.MouseButton.LeftButton)
    send(QEvent.Type.MouseButtonRelease, end, Qt.MouseButton.NoButton)
