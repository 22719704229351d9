"""The annotator's model list: bundled models, the store's fine-tuned versions (★ active), Browse….

Choosing an entry picks the model this viewer's Predict uses; **Make active** records it as
the store's active model, the one everybody working on the store (and the next
fine-tuning run) starts from. The two are kept apart on purpose: trying an older version
on one case should not change the model the whole lab predicts with.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from napari_ivd.model_versions import ModelChoice, active_choice, model_choices
from napari_ivd.store import AnnotationStore

BROWSE = "Browse…"
#: Why the bundled starter is active when the store never chose a model.
STARTER_REASON = "bundled starter model"


class ModelPicker(QWidget):
    """A model combo box (item data: stored id, bundled name or folder path), Make active, the active model."""

    #: Emitted with the chosen :class:`ModelChoice` when the user asks to make it the store's active model.
    activate_requested = Signal(object)

    def __init__(self, choose_folder: Callable[[], Path | None], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._choose_folder = choose_folder
        self.store: AnnotationStore | None = None
        self._choices: dict[str, ModelChoice] = {}
        self._active: ModelChoice | None = None
        self._browsed: list[Path] = []
        self._index = 0
        self._busy = False
        self.box = QComboBox()
        self.box.setToolTip("The model Predict uses in this viewer (★: the store's active model)")
        self.box.activated.connect(self._chosen)
        self.box.currentIndexChanged.connect(lambda _: self._update_button())
        self.activate_button = QPushButton("Make active")
        self.activate_button.setToolTip("Make the chosen model the store's active one (the default for everyone)")
        self.activate_button.clicked.connect(self._activate)
        self.active_label = QLabel()
        self.active_label.setWordWrap(True)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.box, 1)
        row.addWidget(self.activate_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.active_label)
        self.refresh()

    def current(self) -> str | None:
        """What Predict should use: a stored version's id, a bundled model's name or a model folder."""
        return self.box.currentData()

    def set_store(self, store: AnnotationStore | None) -> None:
        """List ``store``'s versions and select its active model."""
        self.store = store
        self.refresh()

    def set_busy(self, busy: bool) -> None:
        """Disable Make active while the annotator runs a job."""
        self._busy = busy
        self._update_button()

    def refresh(self, follow_active: bool = True) -> None:
        """Re-read the models; select the active one, or keep the current choice when ``follow_active`` is False."""
        keep = None if follow_active else self.current()
        choices = model_choices(self.store)
        self._active = active_choice(self.store)
        self._choices = {c.key: c for c in choices}
        self.box.blockSignals(True)
        try:
            self.box.clear()
            for choice in choices:
                self.box.addItem(choice.label(active=choice == self._active), choice.key)
            for folder in self._browsed:
                self.box.addItem(folder.name, str(folder))
            self.box.addItem(BROWSE, None)
            index = self.box.findData(keep) if keep is not None else -1
            self._index = index if index >= 0 else self.box.findData(self._active.key)
            self.box.setCurrentIndex(self._index)
        finally:
            self.box.blockSignals(False)
        record = self.store.active_model() if self.store is not None else None
        reason = record.reason if record is not None and record.model == self._active.key else STARTER_REASON
        self.active_label.setText(f"Active: {self._active.key} — {reason}")
        self._update_button()

    def _chosen(self, index: int) -> None:
        if self.box.itemText(index) != BROWSE:
            self._index = index
            return
        folder = self._choose_folder()
        if folder is None:
            self.box.setCurrentIndex(self._index)
            return
        self._browsed.append(Path(folder))
        self.box.insertItem(index, Path(folder).name, str(folder))
        self.box.setCurrentIndex(index)
        self._index = index

    def _update_button(self) -> None:
        choice = self._choices.get(self.current() or "")
        can = self.store is not None and not self._busy and choice is not None and choice != self._active
        self.activate_button.setEnabled(can)

    def _activate(self) -> None:
        choice = self._choices.get(self.current() or "")
        if choice is not None:
            self.activate_requested.emit(choice)
