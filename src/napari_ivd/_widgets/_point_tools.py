"""Correction tools for the case's points: level of the selected point, shift all, insert a disc, undo/redo.

napari's own Points tools move, add and delete points; this panel adds the edits that
fit how spine labelling goes wrong (see :mod:`napari_ivd.corrections`, which does the
work) and keeps an undo/redo history over all point edits, napari's included.
"""

from __future__ import annotations

import logging
from typing import Any

from napari.utils.notifications import show_error
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QGridLayout, QLabel, QPushButton, QWidget

from napari_ivd import anatomy, corrections
from napari_ivd._widgets._case_layers import KINDS, CaseLayers
from napari_ivd.errors import IvdError

log = logging.getLogger(__name__)


class PointTools(QWidget):
    """The point-correction panel; ``edited`` is emitted after every point edit (user's or its own)."""

    edited = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.case: CaseLayers | None = None
        self.history = corrections.EditHistory()
        self.level_box = QComboBox()
        # a fixed width: filling the list on selection must not resize the dock (and the canvas under the mouse)
        self.level_box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.level_box.setMinimumContentsLength(8)
        self.level_box.setToolTip("Level of the selected point (PageUp / PageDown: one level up / down)")
        self.level_box.activated.connect(self._level_chosen)
        self.up_button = QPushButton("All levels ↑")
        self.up_button.setToolTip("Rename every point one level up, e.g. L4 → L3 (Shift+U)")
        self.down_button = QPushButton("All levels ↓")
        self.down_button.setToolTip("Rename every point one level down, e.g. L3 → L4 (Shift+D)")
        self.insert_button = QPushButton("Insert disc")
        self.insert_button.setToolTip("Add the disc missing between the two selected vertebrae or discs (I)")
        self.undo_button = QPushButton("Undo")
        self.undo_button.setToolTip("Undo the last point edit (Ctrl+Z on a points layer)")
        self.redo_button = QPushButton("Redo")
        self.redo_button.setToolTip("Redo (Ctrl+Shift+Z on a points layer)")
        self.up_button.clicked.connect(lambda: self.shift_all(-1))
        self.down_button.clicked.connect(lambda: self.shift_all(1))
        self.insert_button.clicked.connect(self.insert_disc)
        self.undo_button.clicked.connect(self.undo)
        self.redo_button.clicked.connect(self.redo)
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.addWidget(QLabel("Level"), 0, 0)
        grid.addWidget(self.level_box, 0, 1, 1, 2)
        grid.addWidget(self.up_button, 1, 0)
        grid.addWidget(self.down_button, 1, 1)
        grid.addWidget(self.insert_button, 1, 2)
        grid.addWidget(self.undo_button, 2, 0)
        grid.addWidget(self.redo_button, 2, 1)
        self.set_case(None)

    # ------------------------------------------------------------------ case
    def set_case(self, case: CaseLayers | None) -> None:
        """Work on ``case``'s layers (None: nothing open); history starts over."""
        if self.case is not None:
            for layer in self.case.points_layers.values():
                layer.events.data.disconnect(self._on_data)
                layer.selected_data.events.items_changed.disconnect(self._on_selection)
        self.case = case
        self.history.reset(case.points() if case else ())
        if case is not None:
            for layer in case.points_layers.values():
                layer.events.data.connect(self._on_data)
                layer.selected_data.events.items_changed.connect(self._on_selection)
                layer.bind_key("Control-Z", lambda _layer: self.undo(), overwrite=True)
                layer.bind_key("Control-Shift-Z", lambda _layer: self.redo(), overwrite=True)
        self._refresh()

    def reset_history(self) -> None:
        """Forget the edits so far (after a save or a new prediction)."""
        self.history.reset(self.case.points() if self.case else ())
        self._refresh()

    def _refresh(self) -> None:
        has_case = self.case is not None
        for button in (self.up_button, self.down_button, self.insert_button):
            button.setEnabled(has_case)
        self.undo_button.setEnabled(self.history.can_undo)
        self.redo_button.setEnabled(self.history.can_redo)
        self._on_selection()

    # ------------------------------------------------------------------ napari's edits
    def _on_data(self, event: Any) -> None:
        case = self.case
        if case is None or case.updating:
            return
        kind = case.kind_of(event.source)
        action = getattr(event, "action", None)
        if kind is None or action not in ("added", "removed", "changed"):
            return
        layer = case.points_layers[kind]
        indices = sorted({int(i) % len(layer.data) for i in event.data_indices} if len(layer.data) else set())
        merge_key = None
        if action == "added":
            for i in indices:
                others = [p for j, p in enumerate(case.layer_points(kind)) if j not in indices]
                others += case.layer_points(KINDS[1 - KINDS.index(kind)])
                ijk = case.view.display_to_vox(layer.data[i][None])[0]
                level = corrections.level_for_new_point(others, ijk, kind, case.volume.geometry)
                case.set_features(kind, i, level=level, score=corrections.REVIEWED_SCORE)
        elif action == "changed":
            merge_key = ("move", kind, tuple(indices))
            low = [i for i in indices if float(layer.features["score"].iloc[i]) < corrections.REVIEWED_SCORE]
            for i in low:  # a point the annotator placed is reviewed
                case.set_features(kind, i, score=corrections.REVIEWED_SCORE)
        self._record(merge_key)

    def _record(self, merge_key: Any = None) -> None:
        if self.case is not None and self.history.record(self.case.points(), merge_key=merge_key):
            self.edited.emit()
        self._refresh()

    def _on_selection(self, *_: Any) -> None:
        """The level box and the Labels layer's selected label follow the selected point."""
        kind, selected = self.case.selected() if self.case else (None, [])
        self.level_box.blockSignals(True)
        self.level_box.clear()
        if kind is not None and len(selected) == 1 and self.case is not None:
            level = str(self.case.points_layers[kind].features["level"].iloc[selected[0]])
            names = [s.name for s in (anatomy.VERTEBRAE if kind == "vertebra" else anatomy.DISCS)]
            self.level_box.addItems(names)
            if level in names:
                self.level_box.setCurrentIndex(names.index(level))
                tss = anatomy.structure(level).tss_value
                if tss is not None:
                    self.case.labels.selected_label = tss
        self.level_box.setEnabled(self.level_box.count() > 0)
        self.level_box.blockSignals(False)
        self.insert_button.setEnabled(self.case is not None and len(selected) == 2)

    # ------------------------------------------------------------------ our edits
    def apply(self, new_points: corrections.Points, what: str) -> None:
        """Show ``new_points`` as one undoable edit (another panel's, e.g. an accepted missing level)."""
        if self.case is not None:
            self._apply(new_points, [], what)

    def _apply(self, new_points: corrections.Points, select: list[int], what: str) -> None:
        assert self.case is not None
        self.case.set_points(new_points, select=select)
        log.debug("%s: %s", self.case.case_id, what)
        self._record()

    def _selected_global(self) -> list[int]:
        if self.case is None:
            return []
        kind, selected = self.case.selected()
        return [self.case.global_index(kind, i) for i in selected] if kind else []

    def shift_all(self, steps: int) -> None:
        """Rename every point ``steps`` levels down (negative: up)."""
        if self.case is None:
            return
        try:
            new = corrections.shift_levels(self.case.points(), steps)
        except IvdError as exc:
            show_error(str(exc))
            return
        self._apply(new, self._selected_global(), f"levels shifted by {steps:+d}")

    def step_selected(self, steps: int) -> None:
        """Move the selected point's level ``steps`` down (negative: up)."""
        selected = self._selected_global()
        if self.case is None or len(selected) != 1:
            return
        try:
            new = corrections.step_level(self.case.points(), selected[0], steps)
        except IvdError as exc:
            show_error(str(exc))
            return
        self._apply(new, selected, "level stepped")

    def _level_chosen(self, row: int) -> None:
        selected = self._selected_global()
        if self.case is None or len(selected) != 1 or row < 0:
            return
        try:
            new = corrections.set_level(self.case.points(), selected[0], self.level_box.itemText(row))
        except IvdError as exc:
            show_error(str(exc))
            return
        self._apply(new, selected, "level set")

    def insert_disc(self) -> None:
        """Insert the disc missing between the two selected points."""
        selected = self._selected_global()
        if self.case is None:
            return
        if len(selected) != 2:
            show_error("Insert disc: select two neighbouring vertebrae or discs first (Shift+click)")
            return
        try:
            new, level = corrections.insert_disc(self.case.points(), *selected)
        except IvdError as exc:
            show_error(str(exc))
            return
        self._apply(new, [len(new) - 1], f"inserted {level}")
        self.case.viewer.layers.selection.active = self.case.points_layers["disc"]

    def undo(self) -> None:
        """Undo the last point edit."""
        points = self.history.undo()
        if points is not None and self.case is not None:
            self.case.set_points(points)
            self.edited.emit()
        self._refresh()

    def redo(self) -> None:
        """Redo the last undone point edit."""
        points = self.history.redo()
        if points is not None and self.case is not None:
            self.case.set_points(points)
            self.edited.emit()
        self._refresh()
