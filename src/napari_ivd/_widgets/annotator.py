"""The annotator dock widget: open a store, predict, correct, save, next case.

A thin view over :mod:`napari_ivd.worklist` (cases, prediction), :mod:`napari_ivd.store`
(revisions) and :mod:`napari_ivd.corrections` (point edits). Every store or model call
runs in a napari worker (see :mod:`._jobs`); the GUI thread only adds and updates layers.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Generator
from typing import Any

import napari
import numpy as np
import torch
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QObject, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_ivd import corrections, worklist
from napari_ivd._widgets._case_layers import CaseLayers, prepare_labels
from napari_ivd._widgets._case_table import CaseTable
from napari_ivd._widgets._dialogs import Dialogs
from napari_ivd._widgets._jobs import notify_error, start_job
from napari_ivd._widgets._model_picker import ModelPicker
from napari_ivd._widgets._point_tools import PointTools
from napari_ivd._widgets._ranking_panel import RankingPanel
from napari_ivd._widgets._scroll import VerticalScroll
from napari_ivd._widgets._store_actions import StoreActions
from napari_ivd._widgets._train_panel import TrainPanel
from napari_ivd.errors import IvdError
from napari_ivd.inference import prediction_points
from napari_ivd.layer_data import image_layer_data
from napari_ivd.model_versions import ModelChoice
from napari_ivd.store import AnnotationStore
from napari_ivd.store.schema import default_author

log = logging.getLogger(__name__)

#: (key as napari names it, what it does, method of AnnotatorWidget) — also listed in the tooltip and README.
SHORTCUTS: tuple[tuple[str, str, str], ...] = (
    ("Shift-P", "Predict the open case", "predict"),
    ("Shift-S", "Save correction (new revision)", "save"),
    ("Shift-C", "Mark verified (saves first if needed)", "mark_verified"),
    ("Shift-N", "Next case not verified yet", "next_case"),
    ("Shift-U", "All levels one up (L4 → L3)", "_all_up"),
    ("Shift-D", "All levels one down (L3 → L4)", "_all_down"),
    ("PageUp", "Selected point one level up", "_step_up"),
    ("PageDown", "Selected point one level down", "_step_down"),
    ("I", "Insert the disc between the two selected points", "_insert_disc"),
)
POINT_UNDO_KEYS = (
    "Ctrl+Z / Ctrl+Shift+Z on a points layer: undo / redo point edits (on the mask layer: napari's mask undo)"
)


def shortcuts_help() -> str:
    """The shortcut list shown as the widget's tooltip."""
    lines = [f"{key.replace('-', '+')}: {text}" for key, text, _ in SHORTCUTS]
    return "Keyboard shortcuts (in the viewer canvas):\n" + "\n".join(lines) + "\n" + POINT_UNDO_KEYS


class AnnotatorWidget(StoreActions, QWidget):
    """Predict, correct and save spine annotations case by case, from an annotation store."""

    #: Emitted once the widget is idle again after a case was shown / predicted / saved (revision id).
    case_opened = Signal(str)
    predicted = Signal(str)
    saved = Signal(str)
    #: Emitted when any job ends (done, failed or cancelled), before follow-up jobs start.
    job_done = Signal()

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.dialogs: Any = Dialogs(self)
        self.store: AnnotationStore | None = None
        self.case: CaseLayers | None = None
        self.case_id: str | None = None
        self.parent_revision: str | None = None
        self.origin: str | None = None
        self.worker: Any = None
        self._after_job: list[Callable[[], None]] = []
        self._baseline_points: corrections.Points = ()
        self._baseline_mask: np.ndarray | None = None
        self._build()
        self._bind_keys()
        self._guarded_window: weakref.ReferenceType[QObject] | None = None
        self._set_busy(False)

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        self.setToolTip(shortcuts_help())
        self.store_label = QLabel("No store open")
        self.store_label.setWordWrap(True)
        self.open_button = QPushButton("Open store…")
        self.folder_button = QPushButton("New from folder…")
        self.folder_button.setToolTip("Create a store from every scan under a folder (BIDS included)")
        self.layer_button = QPushButton("New from layer")
        self.layer_button.setToolTip("Create a store from the selected image layer")
        self.open_button.clicked.connect(lambda: self.open_store())
        self.folder_button.clicked.connect(lambda: self.new_store_from_folder())
        self.layer_button.clicked.connect(lambda: self.new_store_from_layer())
        self.table = CaseTable()
        self.table.case_chosen.connect(self.open_case)

        self.models = ModelPicker(lambda: self.dialogs.choose_model_folder())
        self.models.activate_requested.connect(self.make_active)
        self.model_box = self.models.box
        self.device_box = QComboBox()
        self.device_box.addItems(["auto", "cpu", "cuda"])
        if not torch.cuda.is_available():
            self.device_box.model().item(2).setEnabled(False)
        self.author_edit = QLineEdit(default_author())
        self.auto_predict = QCheckBox("Predict cases without proposals when opened")
        self.auto_predict.setChecked(True)

        self.predict_button = QPushButton("Predict")
        self.cancel_button = QPushButton("Cancel")
        self.save_button = QPushButton("Save correction")
        self.verify_button = QPushButton("Mark verified")
        self.next_button = QPushButton("Next case")
        self.predict_button.clicked.connect(lambda: self.predict())
        self.cancel_button.clicked.connect(self.cancel)
        self.save_button.clicked.connect(lambda: self.save())
        self.verify_button.clicked.connect(lambda: self.mark_verified())
        self.next_button.clicked.connect(lambda: self.next_case())
        self.tools = PointTools()
        self.tools.edited.connect(self._update_status)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)

        store_box = QGroupBox("Cases")
        store_layout = QVBoxLayout(store_box)
        row = QHBoxLayout()
        for button in (self.open_button, self.folder_button, self.layer_button):
            row.addWidget(button)
        store_layout.addLayout(row)
        store_layout.addWidget(self.store_label)
        store_layout.addWidget(self.table)
        self.ranking = RankingPanel(
            self.table,
            lambda: self.store,
            self.models.current,
            self.device_box.currentText,
            lambda: self.case,
            self.tools,
        )
        self.case_opened.connect(self.ranking.highlight)
        store_layout.addWidget(self.ranking)
        model_box = QGroupBox("Model")
        form = QFormLayout(model_box)
        form.addRow("Model", self.models)
        form.addRow("Device", self.device_box)
        form.addRow("Author", self.author_edit)
        form.addRow(self.auto_predict)
        actions = QGridLayout()
        actions.addWidget(self.predict_button, 0, 0)
        actions.addWidget(self.cancel_button, 0, 1)
        actions.addWidget(self.save_button, 1, 0)
        actions.addWidget(self.verify_button, 1, 1)
        actions.addWidget(self.next_button, 2, 0, 1, 2)
        tools_box = QGroupBox("Correct points (mask: napari's label tools)")
        QVBoxLayout(tools_box).addWidget(self.tools)
        body = QWidget()
        layout = QVBoxLayout(body)
        for part in (store_box, model_box, tools_box):
            layout.addWidget(part)
        layout.addLayout(actions)
        layout.addWidget(self.status_label)
        self.train_panel = TrainPanel(self.device_box.currentText, self.author)
        self.train_panel.trained.connect(lambda result: self.models.refresh(follow_active=result.activated))
        self.train_panel.trained.connect(self.ranking.refresh)  # a new model version: scores are recomputed
        self.job_done.connect(self.train_panel.refresh_plan)  # a save or a verification may change the plan
        layout.addWidget(self.train_panel)
        layout.addStretch(1)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(VerticalScroll(body))

    def _bind_keys(self) -> None:
        for key, _, method in SHORTCUTS:
            action = getattr(self, method)
            self.viewer.bind_key(key, lambda _viewer, action=action: action(), overwrite=True)

    def _all_up(self) -> None:
        self.tools.shift_all(-1)

    def _all_down(self) -> None:
        self.tools.shift_all(1)

    def _step_up(self) -> None:
        self.tools.step_selected(-1)

    def _step_down(self) -> None:
        self.tools.step_selected(1)

    def _insert_disc(self) -> None:
        self.tools.insert_disc()

    # ------------------------------------------------------------------ jobs
    def _set_busy(self, busy: bool) -> None:
        self._busy = busy
        has_case = self.case is not None
        for button in (self.open_button, self.folder_button, self.layer_button, self.table):
            button.setEnabled(not busy)
        for button in (self.predict_button, self.save_button, self.verify_button):
            button.setEnabled(not busy and has_case)
        self.next_button.setEnabled(not busy and self.store is not None)
        self.cancel_button.setEnabled(busy)
        self.models.set_busy(busy)

    def _run(
        self, steps: Callable[[], Generator[Any, None, Any]], what: str, on_return: Callable[[Any], None], total: int
    ) -> None:
        if self._busy:
            show_info("napari-ivd is busy; wait for the running job or cancel it")
            return
        self._set_busy(True)

        def returned(result: Any) -> None:
            try:
                on_return(result)
            except IvdError as exc:
                notify_error(what, exc)

        def finished() -> None:
            self.worker = None
            self._set_busy(False)
            self._update_status()
            follow_ups, self._after_job = self._after_job, []
            self.job_done.emit()
            for follow_up in follow_ups:
                follow_up()

        self.worker = start_job(
            steps,
            what=what,
            total=total,
            on_yield=lambda report: self.status_label.setText(getattr(report, "message", "")),
            on_return=returned,
            on_abort=lambda: show_info(f"{what}: cancelled"),
            on_finish=finished,
        )

    def cancel(self) -> None:
        """Stop the running job at its next step."""
        if self.worker is not None:
            self.worker.quit()

    # ------------------------------------------------------------------ cases
    def has_unsaved_changes(self) -> bool:
        """True when the shown points or mask differ from what was opened, predicted or saved."""
        if self.case is None:
            return False
        if not corrections.same_points(self.case.points(), self._baseline_points):
            return True
        return self._baseline_mask is None or not np.array_equal(self.case.labels.data, self._baseline_mask)

    def _confirm_leave(self, action: str, then: Callable[[], None] | None = None) -> bool:
        """Ask before unsaved edits would be dropped; True when the caller may go on now."""
        if not self.has_unsaved_changes():
            return True
        answer = self.dialogs.ask_unsaved(self.case_id, action)
        if answer == "save":
            self.save(then=then)  # goes on once saved
            return False
        return answer == "discard"

    def open_case(self, case_id: str) -> None:
        """Show a case (asks first when the open one has unsaved edits)."""
        if self.store is None or case_id == self.case_id:
            return
        if not self._confirm_leave(f"open {case_id}", then=lambda: self.open_case(case_id)):
            self.table.show_current(self.case_id)
            return
        store = self.store

        def steps() -> Generator[Any, None, Any]:
            opened = yield from worklist.open_case_steps(store, case_id)
            yield worklist.StepProgress(2, 2, "preparing layers")
            return opened, image_layer_data(opened.volume), prepare_labels(opened.mask_tss, opened.volume)

        self._run(steps, f"Open {case_id}", self._show_case, 4)

    def _show_case(self, result: tuple[worklist.OpenedCase, Any, Any]) -> None:
        opened, image, labels = result
        if self.case is not None and self.case.intact():  # reuse the layers: swapping them costs seconds
            self.tools.set_case(None)
            self.case.load(opened.case_id, opened.volume, opened.points, image, labels)
        else:
            self._close_case()
            self.case = CaseLayers(self.viewer, opened.case_id, opened.volume, opened.points, image, labels)
            self.case.labels.events.paint.connect(self._update_status)
        self.case_id, self.parent_revision, self.origin = opened.case_id, opened.revision, opened.origin
        self.tools.set_case(self.case)
        self._set_baseline()
        self.table.show_current(self.case_id)
        self.viewer.layers.selection.active = self.case.points_layers["disc"]
        self._after_job.append(lambda case_id=self.case_id: self.case_opened.emit(case_id))
        if opened.origin is None and self.auto_predict.isChecked():
            # start the worker once the event loop has drawn the case: the first draw of new
            # layers is slow on software OpenGL and must not compete with the prediction
            self._after_job.append(lambda: QTimer.singleShot(0, self.predict))

    def _close_case(self) -> None:
        if self.case is not None:
            self.tools.set_case(None)
            self.case.remove()
        self.case, self.case_id, self.parent_revision, self.origin = None, None, None, None

    def _set_baseline(self) -> None:
        assert self.case is not None
        self._baseline_points = self.case.points()
        self._baseline_mask = np.array(self.case.labels.data, copy=True)
        self._update_status()

    def next_case(self) -> None:
        """Open the next case that is not verified yet."""
        if self.store is None:
            show_info("Open or create a store first")
            return
        found = worklist.next_case(self.table.case_ids(), self.table.statuses(), self.case_id)
        if found is None:
            show_info("Every case is verified")
            return
        self.open_case(found)

    # ------------------------------------------------------------------ predict, save, verify
    def make_active(self, choice: ModelChoice) -> None:
        """Record ``choice`` as the store's active model: the default of everyone predicting or fine-tuning on it."""
        if self.store is None:
            return
        store, author = self.store, self.author()
        reason = f"chosen in the viewer by {author or default_author()}"
        self._run(
            lambda: worklist.call_steps(
                "setting the active model",
                store.set_active_model,
                choice.key,
                stored=choice.stored,
                reason=reason,
                author=author,
            ),
            f"Make {choice.key} active",
            lambda _active: self.models.refresh(),
            1,
        )

    def predict(self) -> None:
        """Propose points and a mask for the open case with the chosen model, off the GUI thread."""
        if self.case is None or self.store is None:
            show_info("Open a case first")
            return
        if not self._confirm_leave("replace them with a new prediction", then=self.predict):
            return
        store, case_id, volume = self.store, self.case.case_id, self.case.volume
        model, device = self.models.current(), self.device_box.currentText()

        def steps() -> Generator[Any, None, Any]:
            prediction, proposal = yield from worklist.predict_case_steps(store, case_id, volume, model, device)
            return prediction, proposal, prepare_labels(prediction.mask_tss, volume)

        self._run(steps, f"Predict {case_id}", self._show_prediction, worklist.PREDICT_STEPS)

    def _show_prediction(self, result: tuple[Any, Any, Any]) -> None:
        prediction, proposal, labels = result
        if self.case is None:
            return
        self.case.set_points(prediction_points(prediction))
        self.case.set_mask(labels)
        self.origin = f"model:{proposal.model}"  # the model version, as the proposal names it: it cannot judge it
        self.tools.reset_history()
        self._set_baseline()
        self._refresh_row()
        if not prediction.structures:
            show_warning(f"{self.case.case_id}: the model found no disc or vertebra; annotate by hand")
        case_id = self.case.case_id

        def go_to_spine() -> None:  # a turn of its own: re-slicing every layer redraws the canvas
            if self.case is not None and self.case.case_id == case_id:
                self.viewer.dims.set_point(0, prediction.mid_sagittal_mm)
            self.predicted.emit(case_id)

        self._after_job.append(lambda: QTimer.singleShot(0, go_to_spine))

    def save(self, status: str | None = None, then: Callable[[], None] | None = None) -> None:
        """Write the shown points and mask as a new revision (parent: the revision that was opened)."""
        if self.case is None or self.store is None:
            return
        payload = self._revision_payload()
        if payload is None:
            return
        points, mask, source = payload
        store, case_id = self.store, self.case.case_id
        kwargs = {"author": self.author(), "parent": self.parent_revision, "source": source, "status": status}

        def done(info: Any) -> None:
            if self.case_id == case_id:
                self.parent_revision, self.origin = info.revision_id, source
                self._set_baseline()
            self._refresh_row()
            show_info(f"{case_id}: saved {info.revision_id}" + (f" ({status})" if status else ""))
            self._after_job.append(lambda: self.saved.emit(info.revision_id))
            if then is not None:
                self._after_job.append(then)

        steps = lambda: worklist.call_steps("saving", store.save_revision, case_id, points, mask, **kwargs)  # noqa: E731
        self._run(steps, f"Save {case_id}", done, 1)

    def author(self) -> str | None:
        """The author field (None when empty: the store then uses the login name)."""
        return self.author_edit.text().strip() or None

    def _revision_payload(self) -> tuple[corrections.Points, np.ndarray | None, str] | None:
        """Points, mask (None when there is none to keep) and source of the next revision; None if not savable."""
        assert self.case is not None
        points = corrections.sorted_points(self.case.points())
        twice = corrections.duplicate_levels(points)
        if twice:
            show_error(f"Not saved: {', '.join(twice)} given to more than one point; rename or delete one")
            return None
        mask: np.ndarray | None = self.case.mask_tss()
        if not mask.any() and not (self._baseline_mask is not None and self._baseline_mask.any()):
            mask = None  # nothing drawn and nothing to erase: a points-only revision
        unchanged = not self.has_unsaved_changes()
        source = self.origin if unchanged and self.origin and self.origin.startswith("model:") else "manual"
        return points, mask, source

    def mark_verified(self) -> None:
        """Mark the open case verified, saving the shown annotation first when it is not saved yet."""
        if self.case is None or self.store is None:
            return
        if self.has_unsaved_changes() or self.parent_revision is None:
            self.save(status="verified")
            return
        store, case_id = self.store, self.case.case_id
        self._run(
            lambda: worklist.call_steps("verifying", store.set_status, case_id, "verified"),
            f"Verify {case_id}",
            lambda info: self._refresh_row(),
            1,
        )

    def _refresh_row(self) -> None:
        if self.store is not None and self.case_id is not None:
            self.table.update_case(self.store.case(self.case_id))

    def _update_status(self, *_: Any) -> None:
        if self.case is None:
            self.status_label.setText("")
            return
        if self.parent_revision is not None:
            shown = f"revision {self.parent_revision}"
        else:
            shown = f"proposal of {self.origin}" if self.origin else "no annotation yet"
        state = "unsaved changes" if self.has_unsaved_changes() else "no unsaved changes"
        self.status_label.setText(f"{self.case_id} · {shown} · {state}")

    # ------------------------------------------------------------------ closing napari
    def showEvent(self, event: Any) -> None:
        """Once docked, watch napari's main window so closing it over unsaved edits asks first."""
        super().showEvent(event)
        self.guard_window()

    def guard_window(self) -> None:
        """Install the close guard on the window this widget is docked in (napari has no public hook)."""
        window = self.window()
        guarded = self._guarded_window() if self._guarded_window is not None else None
        if window is not self and window is not guarded:
            window.installEventFilter(self)
            self._guarded_window = weakref.ref(window)  # a strong one would keep napari's window alive

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        """Ask before napari's window closes over unsaved edits."""
        if event.type() == QEvent.Type.Close and self.has_unsaved_changes():
            answer = self.dialogs.ask_unsaved(self.case_id, "close napari")
            if answer == "cancel":
                event.ignore()
                return True
            if answer == "save" and self.store is not None and self.case is not None:
                payload = self._revision_payload()
                if payload is None:
                    event.ignore()
                    return True
                points, mask, source = payload
                try:  # the window is going away: save right here, not in a worker
                    self.store.save_revision(
                        self.case.case_id,
                        points,
                        mask,
                        author=self.author(),
                        parent=self.parent_revision,
                        source=source,
                    )
                except IvdError as exc:
                    notify_error("Save before closing", exc)
                    event.ignore()
                    return True
        return super().eventFilter(watched, event)
