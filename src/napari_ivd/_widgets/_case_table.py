"""The list of a store's cases with their status and head revision."""

from __future__ import annotations

from collections.abc import Sequence

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem, QWidget

from napari_ivd.store import CaseInfo

COLUMNS = ("Case", "Status", "Revision")


class CaseTable(QTableWidget):
    """One row per case; ``case_chosen`` is emitted when the user picks a row."""

    case_chosen = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(0, len(COLUMNS), parent)
        self.setHorizontalHeaderLabels(COLUMNS)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.verticalHeader().setVisible(False)
        header = self.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for column in range(1, len(COLUMNS)):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        self.setMinimumHeight(120)
        self._quiet = False
        self.itemSelectionChanged.connect(self._selection_changed)

    def case_ids(self) -> list[str]:
        """Case ids in row order."""
        return [self.item(row, 0).text() for row in range(self.rowCount())]

    def statuses(self) -> dict[str, str]:
        """Status of each listed case."""
        return {self.item(row, 0).text(): self.item(row, 1).text() for row in range(self.rowCount())}

    def set_cases(self, cases: Sequence[CaseInfo], current: str | None = None) -> None:
        """Show ``cases`` and highlight ``current`` without emitting ``case_chosen``."""
        self._quiet = True
        try:
            self.setRowCount(len(cases))
            for row, info in enumerate(cases):
                for column, text in enumerate((info.case_id, info.status, info.head or "—")):
                    item = QTableWidgetItem(text)
                    item.setFlags(Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsEnabled)
                    self.setItem(row, column, item)
            self.show_current(current)
        finally:
            self._quiet = False

    def update_case(self, info: CaseInfo) -> None:
        """Refresh one row's status and revision."""
        ids = self.case_ids()
        if info.case_id in ids:
            row = ids.index(info.case_id)
            self.item(row, 1).setText(info.status)
            self.item(row, 2).setText(info.head or "—")

    def show_current(self, case_id: str | None) -> None:
        """Select ``case_id``'s row (or nothing) without emitting ``case_chosen``."""
        was, self._quiet = self._quiet, True
        try:
            ids = self.case_ids()
            if case_id in ids:
                self.selectRow(ids.index(case_id))
            else:
                self.clearSelection()
        finally:
            self._quiet = was

    def _selection_changed(self) -> None:
        if self._quiet:
            return
        rows = {index.row() for index in self.selectedIndexes()}
        if len(rows) == 1:
            self.case_chosen.emit(self.item(rows.pop(), 0).text())
