"""The annotator's Train section: fine-tune the active model on the store's corrected cases.

One click runs :func:`napari_ivd.training.finetune.finetune_steps` with its defaults (the
time budget is the one setting shown). The run is this panel's own worker with its own
:class:`~napari_ivd.store.AnnotationStore` on the same location (a store object is not
thread-safe), apart from the annotator's one-job-at-a-time worker, so cases can be opened,
predicted and saved while it trains. The core decides whether the new version becomes
active; the panel shows its reason and tells the annotator to re-list the models.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from napari.utils.notifications import show_info
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_ivd._widgets._jobs import start_job
from napari_ivd._widgets._loss_plot import LossPlot
from napari_ivd.errors import IvdError
from napari_ivd.metrics import mean_structure_dice
from napari_ivd.progress import Job, Progress
from napari_ivd.store import AnnotationStore
from napari_ivd.training.finetune import FineTuneConfig, FineTuneResult, Phase, finetune_steps
from napari_ivd.training.store_cases import plan_training

log = logging.getLogger(__name__)

#: Resolution of the progress bar (Progress.fraction is 0..1).
PROGRESS_MAX = 1000
WHAT = "Fine-tune"


class TrainPanel(QGroupBox):
    """Train / Cancel, a time budget, the cases a run would use, its progress and a live loss plot."""

    #: Emitted with the :class:`FineTuneResult` of a run that finished (not after a cancel or an error).
    trained = Signal(object)
    #: Emitted when a run has ended, however it ended.
    run_done = Signal()

    def __init__(
        self, device: Callable[[], str], author: Callable[[], str | None], parent: QWidget | None = None
    ) -> None:
        super().__init__("Train", parent)
        self._device, self._author = device, author
        self.store: AnnotationStore | None = None
        self.worker: Any = None
        self.running = False
        self._plan_ok = False
        #: FineTuneConfig fields that replace the defaults (tests shrink a run to seconds with these).
        self.config_overrides: dict[str, Any] = {}
        self._build()
        self.set_store(None)

    def _build(self) -> None:
        self.plan_label = QLabel()
        self.plan_label.setWordWrap(True)
        self.minutes_box = QDoubleSpinBox()
        self.minutes_box.setRange(0.5, 24 * 60)
        self.minutes_box.setDecimals(1)
        self.minutes_box.setSuffix(" min")
        self.minutes_box.setValue(FineTuneConfig().minutes)
        self.minutes_box.setToolTip(
            f"Time budget; training also stops early once {FineTuneConfig.patience} validations in a row "
            "were worse than the best"
        )
        self.train_button = QPushButton("Train")
        self.train_button.setToolTip(
            "Fine-tune the active model on every verified or corrected case, in the background; "
            "the new version becomes active only if it validates better than the active one on the same held-out "
            "cases (cases annotated by hand or imported; proposals accepted unchanged only train) and names no "
            "structure differently from it on up to six of the store's other cases"
        )
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop at the end of the current epoch; nothing is stored")
        self.train_button.clicked.connect(self.train)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setRange(0, PROGRESS_MAX)
        self.progress.setTextVisible(True)
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        self.plot = LossPlot()
        self.plot.setVisible(False)  # shown from the first run on
        row = QHBoxLayout()
        row.addWidget(QLabel("Budget"))
        row.addWidget(self.minutes_box)
        row.addWidget(self.train_button, 1)
        row.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.plan_label)
        layout.addLayout(row)
        layout.addWidget(self.progress)
        layout.addWidget(self.status_label)
        layout.addWidget(self.plot)

    # ------------------------------------------------------------------ store and plan
    def set_store(self, store: AnnotationStore | None) -> None:
        """Train on ``store`` from now on (a running run keeps its own store) and show its plan."""
        self.store = store
        self.refresh_plan()

    def refresh_plan(self) -> None:
        """Show which cases a run would learn from and validate on, or why it cannot run yet."""
        self._plan_ok = False
        if self.store is None:
            text = "Open a store to fine-tune the model on its corrected cases."
        else:
            try:
                text = "Fine-tuning " + plan_training(self.store, self.make_config().validation_fraction).describe()
                self._plan_ok = True
            except IvdError as exc:
                text = str(exc)
        self.plan_label.setText(text)
        self._update_buttons()

    def make_config(self) -> FineTuneConfig:
        """The settings of the next run: the defaults, the time budget and device, then ``config_overrides``."""
        settings: dict[str, Any] = {"minutes": self.minutes_box.value(), "device": self._device()}
        return FineTuneConfig(**{**settings, **self.config_overrides})

    def _update_buttons(self) -> None:
        self.train_button.setEnabled(self._plan_ok and not self.running)
        self.cancel_button.setEnabled(self.running)
        self.minutes_box.setEnabled(not self.running)

    # ------------------------------------------------------------------ a run
    def train(self) -> None:
        """Start a fine-tuning run in the background (its own worker and store)."""
        if self.store is None or self.running:
            return
        location, cfg, author = self.store.location, self.make_config(), self._author()

        def make() -> Job[FineTuneResult]:  # in the worker: planning reads the store
            store = AnnotationStore.open(location)  # this thread's own store object
            return finetune_steps(store, cfg, author=author)

        self.running = True
        self._update_buttons()
        self.plot.clear()
        self.plot.setVisible(True)
        self.progress.setValue(0)
        self.status_label.setText("starting…")
        self.worker = start_job(
            make,
            what=WHAT,
            on_yield=self._show_progress,
            on_return=self._finished,
            on_abort=self._cancelled,
            on_error=lambda exc: self.status_label.setText(f"Failed: {exc}"),
            on_finish=self._ended,
            owner=self,
        )

    def cancel(self) -> None:
        """Stop the run at its next report (the end of the current epoch); nothing is stored."""
        if self.worker is not None:
            self.worker.quit()
            self.status_label.setText("cancelling at the end of this epoch…")

    def _show_progress(self, report: Progress) -> None:
        self.progress.setValue(round(report.fraction * PROGRESS_MAX))
        self.status_label.setText(report.message)
        phase: Phase = report.detail
        if phase.epoch is None:
            return
        epoch = phase.epoch.epoch + 1
        if phase.before is not None and self.plot.parent_error_mm is None:
            self.plot.set_parent_error(phase.before.get("error_mm"))
        self.plot.add_loss(epoch, phase.epoch.loss)
        validation = phase.epoch.validation
        if validation is not None:
            dice = mean_structure_dice(validation.get("dice") or {})
            self.plot.add_validation(epoch, validation.get("error_mm"), dice)

    def _finished(self, result: FineTuneResult) -> None:
        assert result.model is not None  # only ranks > 0 of a torchrun job store nothing
        version = result.model.model_id
        if result.activated:
            text = f"{version} is now the active model: it {result.reason}"
        else:
            text = f"{version} stored; {result.reason}"
        self.progress.setValue(PROGRESS_MAX)
        self.status_label.setText(text)
        show_info(f"{WHAT}: {text}")
        self.trained.emit(result)

    def _cancelled(self) -> None:
        self.status_label.setText("Cancelled: nothing was stored")
        show_info(f"{WHAT}: cancelled; nothing was stored")

    def _ended(self) -> None:
        self.worker = None
        self.running = False
        self._update_buttons()
        self.run_done.emit()
