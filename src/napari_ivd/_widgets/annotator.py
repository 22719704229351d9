"""The annotator dock widget: open a store, predict, correct, save, next case.

A thin view over a core :class:`~napari_ivd.annotator.Annotator`, which holds the open
case and its rules (unsaved, source, parent, conflicts, level shifts, undo): the widget
shows its points and mask in layers and forwards the user's actions to it. Every store or
model call of a case runs in a napari worker (see :mod:`._jobs`); the GUI thread only
adds and updates layers (listing a store's cases when it is opened, and a save while
napari closes, run on it).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import napari
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

from napari_ivd import worklist
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
from napari_ivd.active import check_prediction
from napari_ivd.annotator import Annotator, PredictionResult, SaveConflict, Saved
from napari_ivd.errors import CorrectionError, IvdError
from napari_ivd.layer_data import image_layer_data
from napari_ivd.model_versions import ModelChoice
from napari_ivd.models import cuda_available
from napari_ivd.progress import Job, Progress, Tally, call_job
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


def opening_job(annotator: Annotator, case_id: str) -> Job[tuple[worklist.OpenedCase, Any, Any]]:
    """Open ``case_id`` and prepare its layers' data: the annotator's open job, then one step of the view's own."""
    opening = annotator.open_steps(case_id)

    def body(tally: Tally) -> Generator[Progress, None, tuple[worklist.OpenedCase, Any, Any]]:
        opened = yield from tally.run(opening)
        yield tally.step("preparing layers")
        return opened, image_layer_data(opened.volume), prepare_labels(opened.mask_tss, opened.volume)

    return Job(opening.total + 1, body)


class AnnotatorWidget(QWidget):
    """Predict, correct and save spine annotations case by case, from an annotation store.

    The view of an :class:`~napari_ivd.annotator.Annotator` (``annotator``), which holds the
    open case and its rules: this widget shows its points and mask in layers, forwards the
    user's actions to it and runs its long steps in workers.
    """

    #: Emitted once the widget is idle again after a case was shown / predicted / saved (revision id).
    case_opened = Signal(str)
    predicted = Signal(str)
    saved = Signal(str)
    #: Emitted when any job ends (done, failed or cancelled), before follow-up jobs start.
    job_done = Signal()

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        #: Asks the user; tests swap in an object with the same methods that answers without a window.
        self.dialogs: Any = Dialogs(self)
        self.annotator = Annotator()
        self.case: CaseLayers | None = None  # the layers showing the annotator's case
        self.worker: Any = None
        self._after_job: list[Callable[[], None]] = []
        self.stores = StoreActions(self)
        self._build()
        self._bind_keys()
        self._guarded_window: weakref.ReferenceType[QObject] | None = None
        self._close_after_training: weakref.ReferenceType[QObject] | None = None
        self.train_panel.run_done.connect(self._training_ended)
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
        self.folder_button.clicked.connect(lambda: self.stores.new_store_from_folder())
        self.layer_button.clicked.connect(lambda: self.stores.new_store_from_layer())
        self.table = CaseTable()
        self.table.case_chosen.connect(self.open_case)

        self.models = ModelPicker(lambda: self.dialogs.choose_model_folder())
        self.models.activate_requested.connect(self.make_active)
        self.model_box = self.models.box
        self.device_box = QComboBox()
        self.device_box.addItems(["auto", "cpu", "cuda"])
        if not cuda_available():
            self.device_box.model().item(2).setEnabled(False)
        self.author_edit = QLineEdit(default_author())
        self.author_edit.textChanged.connect(lambda _text: setattr(self.annotator, "author", self.author()))
        self.annotator.author = self.author()
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
        self.names_unsure_box = QCheckBox("Level names unsure (e.g. transitional vertebra): train masks only")
        self.names_unsure_box.setToolTip(
            "Tick when the levels of this case may be counted wrong (lumbosacral transitional vertebra, no end of "
            "the spine in view). Train then learns its masks but not its level names, and the case never judges a "
            "model's names. Stored with the case at once; no save needed."
        )
        self.names_unsure_box.toggled.connect(self.mark_names_unsure)
        self.tools = PointTools(self.annotator)
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
            lambda: self.annotator.store,
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
        actions.addWidget(self.names_unsure_box, 3, 0, 1, 2)
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
        for button in (self.predict_button, self.save_button, self.verify_button, self.names_unsure_box):
            button.setEnabled(not busy and has_case)
        if not busy:  # after every job (a failed mark unticks) and on a store change; a click shows while it runs
            self._show_names_unsure(self.annotator.names_unsure)
        self.next_button.setEnabled(not busy and self.annotator.store is not None)
        self.cancel_button.setEnabled(busy)
        self.models.set_busy(busy)

    def run_job(self, job: Job[Any], what: str, on_return: Callable[[Any], None]) -> None:
        """Run ``job`` in a worker (progress ``what``), then ``on_return(result)`` here.

        One job at a time; its follow-ups (:meth:`after_job`) run once it has ended.
        """
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
            job,
            what=what,
            on_yield=lambda report: self.status_label.setText(getattr(report, "message", "")),
            on_return=returned,
            on_abort=lambda: show_info(f"{what}: cancelled"),
            on_finish=finished,
            owner=self,
        )

    def after_job(self, follow_up: Callable[[], None]) -> None:
        """Call ``follow_up`` once the running job has ended (at once when none runs)."""
        if self._busy:
            self._after_job.append(follow_up)
        else:
            follow_up()

    # ------------------------------------------------------------------ store
    def open_store(self, location: str | Path | None = None) -> None:
        """Open an existing store (asks for the folder when ``location`` is None)."""
        self.stores.open_store(location)

    def use_store(self, store: AnnotationStore, open_first: bool = False) -> None:
        """Work on ``store``: list its cases (and open the first not verified when ``open_first``)."""
        self._close_case()
        self.annotator.use_store(store)
        self.store_label.setText(f"Store: {store.location}")
        self.refresh_cases()
        self.models.set_store(store)
        self.train_panel.set_store(store)
        self._set_busy(self._busy)
        self.guard_window()
        if open_first:
            self.after_job(self.next_case)

    def refresh_cases(self) -> None:
        """Re-read every case's status and head revision from the store."""
        store = self.annotator.store
        if store is not None:
            self.table.set_cases([store.case(c) for c in store.case_ids()], self.annotator.case_id)

    def cancel(self) -> None:
        """Stop the running job at its next step."""
        if self.worker is not None:
            self.worker.quit()

    # ------------------------------------------------------------------ cases
    def has_unsaved_changes(self) -> bool:
        """True when the shown points or mask differ from what was opened, predicted or saved."""
        return self.annotator.has_unsaved_changes()

    def confirm_leave(self, action: str, then: Callable[[], None] | None = None) -> bool:
        """Ask before unsaved edits would be dropped; True when the caller may go on now."""
        if not self.annotator.has_unsaved_changes():
            return True
        answer = self.dialogs.ask_unsaved(self.annotator.case_id, action)
        if answer == "save":
            self.save(then=then)  # goes on once saved
            return False
        return answer == "discard"

    def open_case(self, case_id: str) -> None:
        """Show a case (asks first when the open one has unsaved edits)."""
        if self.annotator.store is None or case_id == self.annotator.case_id:
            return
        if not self.confirm_leave(f"open {case_id}", then=lambda: self.open_case(case_id)):
            self.table.show_current(self.annotator.case_id)
            return
        self._open(case_id)

    def _open(self, case_id: str) -> None:
        """Read ``case_id`` in a worker and show it (whatever is shown now is dropped)."""
        self.run_job(opening_job(self.annotator, case_id), f"Open {case_id}", self._show_case)

    def _show_case(self, result: tuple[worklist.OpenedCase, Any, Any]) -> None:
        opened, image, labels = result
        if self.case is not None and self.case.intact():  # reuse the layers: swapping them costs seconds
            self.tools.set_case(None)
            self.case.load(opened.case_id, opened.volume, opened.points, image, labels)
        else:
            self._close_case()
            self.case = CaseLayers(self.viewer, opened.case_id, opened.volume, opened.points, image, labels)
            self.case.labels.events.paint.connect(self._update_status)
        self.annotator.finish_open(opened, mask=self.case.labels.data)  # napari paints into the annotator's mask
        self.tools.set_case(self.case)
        self._update_status()
        self.table.show_current(opened.case_id)
        self.viewer.layers.selection.active = self.case.points_layers["disc"]
        self._after_job.append(lambda case_id=opened.case_id: self.case_opened.emit(case_id))
        if opened.origin is None and self.auto_predict.isChecked():
            # start the worker once the event loop has drawn the case: the first draw of new
            # layers is slow on software OpenGL and must not compete with the prediction
            self._after_job.append(lambda: QTimer.singleShot(0, self.predict))

    def _close_case(self) -> None:
        if self.case is not None:
            self.tools.set_case(None)
            self.case.remove()
        self.case = None
        self.annotator.close_case()

    def next_case(self) -> None:
        """Open the next case that is not verified yet (in the table's order)."""
        if self.annotator.store is None:
            show_info("Open or create a store first")
            return
        found = self.annotator.next_case_id(self.table.case_ids(), self.table.statuses())
        if found is None:
            show_info("Every case is verified")
            return
        self.open_case(found)

    # ------------------------------------------------------------------ predict, save, verify
    def make_active(self, choice: ModelChoice) -> None:
        """Record ``choice`` as the store's active model: the default of everyone predicting or fine-tuning on it."""
        store = self.annotator.store
        if store is None:
            return
        author = self.author()
        reason = f"chosen in the viewer by {author or default_author()}"
        self.run_job(
            call_job(
                "setting the active model",
                store.set_active_model,
                choice.key,
                stored=choice.stored,
                reason=reason,
                author=author,
            ),
            f"Make {choice.key} active",
            lambda _active: self.models.refresh(),
        )

    def predict(self) -> None:
        """Propose points and a mask for the open case with the chosen model, off the GUI thread."""
        if self.case is None or not self.annotator.is_open:
            show_info("Open a case first")
            return
        if not self.confirm_leave("replace them with a new prediction", then=self.predict):
            return
        # started here, on the GUI thread: what is shown now tells the edits made while it runs
        job = self.annotator.predict_steps(self.models.current(), self.device_box.currentText())
        self.run_job(job, f"Predict {self.annotator.case_id}", self._show_prediction)

    def _show_prediction(self, result: PredictionResult) -> None:
        """Show the prediction; layers the user edited while it ran are kept unless the user chooses otherwise."""
        annotator, case_id = self.annotator, result.start.case_id
        self.table.update_case(result.case)
        if self.case is None or annotator.case_id != case_id:
            return
        edited = annotator.edited_since(result.start)
        replace = bool(edited) and self.dialogs.ask_prediction_over_edits(case_id, edited) != "keep"
        kept = annotator.apply_prediction(result, replace=replace)
        if "points" not in kept:
            self.case.set_points(annotator.points)
        if "mask" not in kept and annotator.mask is not None:
            self.case.set_mask(annotator.mask)
            annotator.set_mask(self.case.labels.data)  # napari paints into the annotator's mask
        self.tools.refresh()
        self._update_status()
        if kept:
            show_info(
                f"{case_id}: your edits to the {' and the '.join(kept)} made during the prediction are kept "
                "(unsaved); the prediction is kept in the case's history as a proposal"
            )
        prediction = result.prediction
        if not prediction.structures:
            show_warning(f"{case_id}: the model found no disc or vertebra; annotate by hand")
        elif annotator.volume is not None:  # what to look at first: missing levels, a count nothing checks
            checks = check_prediction(prediction, annotator.volume.view, absent=annotator.absent).in_words()
            if checks:
                show_info(f"{case_id}: check " + "; ".join(checks))

        def go_to_spine() -> None:  # a turn of its own: re-slicing every layer redraws the canvas
            if self.case is not None and self.case.case_id == case_id:
                self.viewer.dims.set_point(0, prediction.mid_sagittal_mm)
            self.predicted.emit(case_id)

        self._after_job.append(lambda: QTimer.singleShot(0, go_to_spine))

    def save(
        self, status: str | None = None, then: Callable[[], None] | None = None, on_conflict: str = "refuse"
    ) -> None:
        """Write the shown points and mask as a new revision (parent: the revision or proposal that was opened).

        When someone else saved the case meanwhile, the user chooses: reload it, or keep this
        edit as a new revision on top (``on_conflict="on_top"``, both recorded).
        """
        annotator = self.annotator
        if self.case is None or not annotator.is_open:
            return
        try:
            request = annotator.save_request(status, on_conflict)
        except CorrectionError as exc:
            show_error(str(exc))
            return
        job = annotator.save_steps(request)

        def done(outcome: Saved | SaveConflict) -> None:
            if isinstance(outcome, SaveConflict):
                self._after_job.append(lambda: self._resolve_conflict(outcome, then))
                return
            annotator.finish_save(outcome)
            self.table.update_case(outcome.case)
            revision_id = outcome.revision.revision_id
            show_info(f"{request.case_id}: saved {revision_id}" + (f" ({status})" if status else ""))
            self._after_job.append(lambda: self.saved.emit(revision_id))
            if then is not None:
                self._after_job.append(then)

        self.run_job(job, f"Save {request.case_id}", done)

    def _resolve_conflict(self, conflict: SaveConflict, then: Callable[[], None] | None) -> None:
        """Ask the user how to answer a save refused because someone saved the case meanwhile."""
        case_id = conflict.request.case_id
        if self.annotator.case_id != case_id:
            return
        answer = self.dialogs.ask_conflict(case_id, conflict.started_from, conflict.head)
        if answer == "on_top":
            self.save(conflict.request.status, then, on_conflict="on_top")
        elif answer == "reload":
            self._open(case_id)  # the user chose to drop the edit: no unsaved-changes question
        else:
            show_info(f"{case_id}: not saved; your edit is still shown")

    def author(self) -> str | None:
        """The author field (None when empty: the store then uses the login name)."""
        return self.author_edit.text().strip() or None

    def mark_verified(self) -> None:
        """Mark the open case verified, saving the shown annotation first when it is not saved yet."""
        if self.case is None or not self.annotator.is_open:
            return
        if self.annotator.verify_needs_save():
            self.save(status="verified")
            return
        self.run_job(self.annotator.verify_steps(), f"Verify {self.annotator.case_id}", self.table.update_case)

    def mark_names_unsure(self, unsure: bool) -> None:
        """Store (or clear) the open case's mark that its levels may be counted wrong, in a worker."""
        if self.case is None or not self.annotator.is_open or unsure == self.annotator.names_unsure:
            return
        what = f"Mark the level names of {self.annotator.case_id} {'unsure' if unsure else 'sure'}"
        # the box follows the annotator's mark once the job ends (_set_busy)
        self.run_job(self.annotator.names_unsure_steps(unsure), what, self.table.update_case)

    def _show_names_unsure(self, unsure: bool) -> None:
        """Tick the box as the store has it, without storing anything."""
        blocked = self.names_unsure_box.blockSignals(True)
        self.names_unsure_box.setChecked(unsure)
        self.names_unsure_box.blockSignals(blocked)

    def _update_status(self, *_: Any) -> None:
        annotator = self.annotator
        if self.case is None or not annotator.is_open:
            self.status_label.setText("")
            return
        if annotator.parent_revision is not None:
            shown = f"revision {annotator.parent_revision}"
        else:
            shown = f"proposal of {annotator.origin}" if annotator.origin else "no annotation yet"
        state = "unsaved changes" if annotator.has_unsaved_changes() else "no unsaved changes"
        self.status_label.setText(f"{annotator.case_id} · {shown} · {state}")

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

    def _training_blocks_close(self, window: QObject) -> bool:
        """True when a fine-tuning run must stop before ``window`` closes; asks the user first.

        Stopping takes until the end of the current epoch, so the close waits: the run is
        cancelled (nothing stored) and the window closes once it has ended.
        """
        if not self.train_panel.running:
            return False
        if self._close_after_training is not None:
            show_info("Fine-tune: still stopping the run; napari closes once it has stopped")
            return True
        if self.dialogs.ask_stop_training() == "stop":
            self._close_after_training = weakref.ref(window)
            self.train_panel.cancel()
            show_info("Fine-tune: stopping the run at the end of this epoch; napari closes once it has stopped")
        return True

    def _training_ended(self) -> None:
        """Close the window whose close waited for the fine-tuning run to stop."""
        window = self._close_after_training() if self._close_after_training is not None else None
        self._close_after_training = None
        if window is not None:
            QTimer.singleShot(0, window.close)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        """Ask before napari's window closes over a running fine-tuning or unsaved edits."""
        if event.type() == QEvent.Type.Close and self._training_blocks_close(watched):
            event.ignore()
            return True
        if event.type() == QEvent.Type.Close and self.has_unsaved_changes():
            answer = self.dialogs.ask_unsaved(self.annotator.case_id, "close napari")
            if answer == "cancel":
                event.ignore()
                return True
            if answer == "save" and self.annotator.is_open:
                try:  # the window is going away: save right here, not in a worker
                    self.annotator.save(on_conflict="on_top")
                except CorrectionError as exc:
                    show_error(str(exc))
                    event.ignore()
                    return True
                except IvdError as exc:
                    notify_error("Save before closing", exc)
                    event.ignore()
                    return True
        return super().eventFilter(watched, event)
