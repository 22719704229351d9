"""Correction tools for the case's points: level of the selected point, shift all, insert a disc, undo/redo.

napari's own Points tools move, add and delete points; this panel adds the edits that
fit how spine labelling goes wrong. It forwards every edit, napari's included, to the
:class:`~napari_ivd.annotator.Annotator` (which applies :mod:`napari_ivd.corrections` and
keeps the undo/redo history) and shows the result in the case's layers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from napari.utils.notifications import show_error
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QGridLayout, QLabel, QPushButton, QWidget

from napari_ivd import anatomy, corrections
from napari_ivd._widgets._case_layers import KINDS, CaseLayers
from napari_ivd.annotator import Annotator
from napari_ivd.errors import IvdError

log = logging.getLogger(__name__)


class PointTools(QWidget):
    """The point-correction panel; ``edited`` is emitted after every point edit (user's or its own)."""

    edited = Signal()

    def __init__(self, annotator: Annotator, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.annotator = annotator
        self.case: CaseLayers | None = None
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
        """Work on ``case``'s layers (None: nothing open), which show the annotator's case."""
        if self.case is not None:
            for layer in self.case.points_layers.values():
                layer.events.data.disconnect(self._on_data)
                layer.selected_data.events.items_changed.disconnect(self._on_selection)
        self.case = case
        if case is not None:
            for layer in case.points_layers.values():
                layer.events.data.connect(self._on_data)
                layer.selected_data.events.items_changed.connect(self._on_selection)
                layer.bind_key("Control-Z", lambda _layer: self.undo(), overwrite=True)
                layer.bind_key("Control-Shift-Z", lambda _layer: self.redo(), overwrite=True)
        self.refresh()

    def refresh(self) -> None:
        """Enable the buttons that apply now (after the annotator's state changed)."""
        has_case = self.case is not None
        for button in (self.up_button, self.down_button, self.insert_button):
            button.setEnabled(has_case)
        self.undo_button.setEnabled(self.annotator.can_undo)
        self.redo_button.setEnabled(self.annotator.can_redo)
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
        """Hand the points as napari left them to the annotator."""
        if self.case is not None and self.annotator.edit_points(self.case.points(), merge_key=merge_key):
            self.edited.emit()
        self.refresh()

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
        self._apply(lambda: self.annotator.edit_points(new_points), lambda: (), what)

    def mark_absent(self, levels: Sequence[str]) -> None:
        """Mark ``levels`` as not present in this scan, as one undoable edit (another panel's: Delete missing)."""
        self._apply(lambda: self.annotator.mark_absent(levels), lambda: (), "marked absent: " + ", ".join(levels))

    def _apply(self, edit: Callable[[], object], select: Callable[[], Sequence[int]], what: str) -> bool:
        """Run one of the annotator's edits and show its points (and mask); an IvdError is shown, nothing changes."""
        if self.case is None:
            return False
        try:
            edit()
        except IvdError as exc:
            show_error(str(exc))
            return False
        self._show(select())
        log.debug("%s: %s", self.case.case_id, what)
        return True

    def _show(self, select: Sequence[int] = ()) -> None:
        """Show the annotator's points (selecting ``select``) and its mask, which it may have relabelled."""
        assert self.case is not None
        self.case.set_points(self.annotator.points, select=select)
        self.case.labels.refresh()
        self.edited.emit()
        self.refresh()

    def _selected_global(self) -> list[int]:
        if self.case is None:
            return []
        kind, selected = self.case.selected()
        return [self.case.global_index(kind, i) for i in selected] if kind else []

    def shift_all(self, steps: int) -> None:
        """Rename every point ``steps`` levels down (negative: up), and relabel the mask's levels alike."""
        selected = self._selected_global()
        self._apply(lambda: self.annotator.shift_levels(steps), lambda: selected, f"levels shifted by {steps:+d}")

    def step_selected(self, steps: int) -> None:
        """Move the selected point's level ``steps`` down (negative: up)."""
        selected = self._selected_global()
        if len(selected) == 1:
            self._apply(lambda: self.annotator.step_level(selected[0], steps), lambda: selected, "level stepped")

    def _level_chosen(self, row: int) -> None:
        selected = self._selected_global()
        if len(selected) == 1 and row >= 0:
            level = self.level_box.itemText(row)
            self._apply(lambda: self.annotator.set_level(selected[0], level), lambda: selected, "level set")

    def insert_disc(self) -> None:
        """Insert the disc missing between the two selected points."""
        selected = self._selected_global()
        if self.case is None:
            return
        if len(selected) != 2:
            show_error("Insert disc: select two neighbouring vertebrae or discs first (Shift+click)")
            return

        def inserted() -> list[int]:  # the inserted disc is the annotator's last point
            return [len(self.annotator.points) - 1]

        if self._apply(lambda: self.annotator.insert_disc(*selected), inserted, "disc inserted"):
            self.case.viewer.layers.selection.active = self.case.points_layers["disc"]

    def undo(self) -> None:
        """Undo the last point edit (an *All levels* shift: of the points and the mask)."""
        self._step(self.annotator.undo)

    def redo(self) -> None:
        """Redo the last undone point edit."""
        self._step(self.annotator.redo)

    def _step(self, step: Callable[[], bool]) -> None:
        """Move through the annotator's history and show where it is."""
        try:
            changed = step()
        except IvdError as exc:  # e.g. a label painted since that cannot move back: nothing changes
            show_error(f"Cannot undo/redo the level shift of the mask: {exc}")
            changed = False
        if changed and self.case is not None:
            self._show()
        self.refresh()
