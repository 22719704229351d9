"""The list of a store's cases with their status, head revision and active-learning score and reason."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem, QWidget

from napari_ivd.store import CaseInfo

COLUMNS = ("Case", "Status", "Revision", "Score", "Reason")
STATUS, SCORE, REASON = COLUMNS.index("Status"), COLUMNS.index("Score"), COLUMNS.index("Reason")
#: Shown after the status of a case whose level names are marked unsure.
UNSURE = " · names unsure"


def status_text(info: CaseInfo) -> str:
    """The Status cell: the case's status, and the mark that its level names are unsure."""
    return info.status + (UNSURE if info.names_unsure else "")


class CaseTable(QTableWidget):
    """One row per case; ``case_chosen`` is emitted when the user picks a row.

    Rows keep the store's order until :meth:`set_order` puts them in a ranking's order
    (Next case walks the rows top-down).
    """

    case_chosen = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(0, len(COLUMNS), parent)
        self.setHorizontalHeaderLabels(COLUMNS)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.verticalHeader().setVisible(False)
        header = self.horizontalHeader()
        for column in range(len(COLUMNS)):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self.setMinimumHeight(120)
        self._quiet = False
        self.itemSelectionChanged.connect(self._selection_changed)

    def case_ids(self) -> list[str]:
        """Case ids in row order."""
        return [self.item(row, 0).text() for row in range(self.rowCount())]

    def statuses(self) -> dict[str, str]:
        """Status of each listed case."""
        return {
            self.item(row, 0).text(): self.item(row, STATUS).text().removesuffix(UNSURE)
            for row in range(self.rowCount())
        }

    def scores(self) -> dict[str, str]:
        """Score shown for each listed case (empty text: not scored)."""
        return {self.item(row, 0).text(): self.item(row, SCORE).text() for row in range(self.rowCount())}

    def _set_row(self, row: int, texts: Sequence[str]) -> None:
        for column, text in enumerate(texts):
            item = QTableWidgetItem(text)
            item.setFlags(Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsEnabled)
            if column == REASON:
                item.setToolTip(text)
            elif column == STATUS and text.endswith(UNSURE):
                item.setToolTip("level names unsure: Train learns this case's masks, not its names")
            self.setItem(row, column, item)

    def set_cases(self, cases: Sequence[CaseInfo], current: str | None = None) -> None:
        """Show ``cases`` (unscored) and highlight ``current`` without emitting ``case_chosen``."""
        self._quiet = True
        try:
            self.setRowCount(len(cases))
            for row, info in enumerate(cases):
                self._set_row(row, (info.case_id, status_text(info), info.head or "—", "", ""))
            self.show_current(current)
        finally:
            self._quiet = False

    def update_case(self, info: CaseInfo) -> None:
        """Refresh one row's status (and names-unsure mark) and revision; its score and reason stay."""
        ids = self.case_ids()
        if info.case_id in ids:
            row = ids.index(info.case_id)
            self._set_row(row, (info.case_id, status_text(info), info.head or "—"))

    def set_scores(self, scores: Mapping[str, tuple[float | None, str]]) -> None:
        """Show each listed case's ``(score, reason)``; cases left out are blanked."""
        for row, case_id in enumerate(self.case_ids()):
            score, reason = scores.get(case_id, (None, ""))
            self.item(row, SCORE).setText("" if score is None else f"{score:.2f}")
            self.item(row, REASON).setText(reason)
            self.item(row, REASON).setToolTip(reason)

    def set_order(self, case_ids: Sequence[str]) -> None:
        """Put the rows of ``case_ids`` first, in that order; the others follow in their current order.

        The selected case stays selected, and ``case_chosen`` is not emitted.
        """
        rows = {
            self.item(row, 0).text(): [self.item(row, c).text() for c in range(len(COLUMNS))]
            for row in range(self.rowCount())
        }
        first = [c for c in case_ids if c in rows]
        order = first + [c for c in rows if c not in set(first)]
        selected = {index.row() for index in self.selectedIndexes()}
        current = self.item(selected.pop(), 0).text() if len(selected) == 1 else None
        was, self._quiet = self._quiet, True
        try:
            for row, case_id in enumerate(order):
                self._set_row(row, rows[case_id])
            self.show_current(current)
        finally:
            self._quiet = was

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
