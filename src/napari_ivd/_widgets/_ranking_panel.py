"""The annotator's ranking panel: which case to correct next, and which of its points to check first.

A thin view over :func:`napari_ivd.active.score_store_steps`: pick a strategy, **Rank cases**
scores the store's cases off the GUI thread (cached per model version, so ranking again
is quick) and sorts the case table by the ranking, with each case's score and main
reason; **Next case** then walks down the ranking. The open case's most likely wrong
points get an orange border.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from typing import Any

from napari.utils.notifications import show_info
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from napari_ivd import active
from napari_ivd._widgets._case_layers import CaseLayers
from napari_ivd._widgets._case_table import CaseTable
from napari_ivd._widgets._jobs import start_job
from napari_ivd.store import AnnotationStore

log = logging.getLogger(__name__)

#: Strategies in the order offered, with their tooltips.
STRATEGY_HELP = {
    "uncertainty": "Most informative first: the model's doubts (perturbation spread, weak peaks, odd anatomy)",
    "uncertainty+diversity": "Informative and unlike the verified cases and each other (greedy k-center)",
    "random": "A seeded random order: the baseline",
}


class RankingPanel(QWidget):
    """Strategy, Rank cases / Cancel and progress; sorts ``table`` and highlights the open case's unsure points.

    Parameters
    ----------
    table : CaseTable
        The annotator's case list (sorted and given scores here).
    store, model, device, case : callables
        The open store, the chosen model (stored id, bundled name or folder; None: the
        store's active model), the device name and the open case's layers, read when needed.
    """

    #: Emitted with the :class:`napari_ivd.active.Ranking` once the table shows it.
    ranked = Signal(object)

    def __init__(
        self,
        table: CaseTable,
        store: Callable[[], AnnotationStore | None],
        model: Callable[[], str | None],
        device: Callable[[], str],
        case: Callable[[], CaseLayers | None],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.table, self._store, self._model, self._device, self._case = table, store, model, device, case
        self.ranking: active.Ranking | None = None
        self._ranked_store: AnnotationStore | None = None
        self.worker: Any = None
        self._reporting = False
        self.strategy_box = QComboBox()
        for strategy in ("uncertainty", "uncertainty+diversity", "random"):
            self.strategy_box.addItem(strategy)
            self.strategy_box.setItemData(
                self.strategy_box.count() - 1, STRATEGY_HELP[strategy], Qt.ItemDataRole.ToolTipRole
            )
        self.rank_button = QPushButton("Rank cases")
        self.rank_button.setToolTip("Score the cases not verified yet and sort the list: Next case follows it")
        self.rank_button.clicked.connect(lambda: self.rank())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("Next by"))
        row.addWidget(self.strategy_box, 1)
        row.addWidget(self.rank_button)
        row.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.status_label)
        self._set_running(False)

    def _set_running(self, running: bool) -> None:
        self.rank_button.setEnabled(not running)
        self.strategy_box.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def rank(self) -> None:
        """Score and rank the open store's cases by the chosen strategy, off the GUI thread."""
        store = self._store()
        if store is None:
            show_info("Open or create a store first")
            return
        if self.worker is not None:
            return
        strategy, model, device = self.strategy_box.currentText(), self._model(), self._device()
        self._set_running(True)
        self._reporting = True

        def steps() -> Generator[Any, None, Any]:
            return (yield from active.score_store_steps(store, model, device, strategy))

        def finished() -> None:
            self.worker = None
            self._set_running(False)

        self.worker = start_job(
            steps,
            what="Rank cases",
            on_yield=self._progress,
            on_return=lambda ranking: self._show(store, ranking),
            on_abort=lambda: self._conclude("Ranking cancelled"),
            on_error=lambda exc: self._conclude("Ranking failed"),
            on_finish=finished,
        )

    def refresh(self, *_: Any) -> None:
        """Rank again if the open store was ranked (after a fine-tuning: the new model scores afresh)."""
        if self.ranking is not None and self._ranked_store is self._store():
            self.rank()

    def _progress(self, report: Any) -> None:
        if self._reporting:  # a report queued behind the outcome must not overwrite it
            self.status_label.setText(getattr(report, "message", ""))

    def _conclude(self, text: str) -> None:
        self._reporting = False
        self.status_label.setText(text)

    def cancel(self) -> None:
        """Stop the ranking after the case being scored (scores already computed stay cached)."""
        if self.worker is not None:
            self.worker.quit()

    def _show(self, store: AnnotationStore, ranking: active.Ranking) -> None:
        if store is not self._store():
            self._conclude("")
            return  # another store was opened meanwhile
        self.ranking, self._ranked_store = ranking, store
        self.table.set_scores({r.case_id: (r.score, r.reason) for r in ranking.cases})
        self.table.set_order(ranking.case_ids())
        top = f"; next: {ranking.cases[0].case_id}" if ranking.cases else "; every case is verified"
        self._conclude(f"{len(ranking.cases)} cases ranked by {ranking.strategy}{top}")
        self.highlight()
        self.ranked.emit(ranking)

    def unsure_levels(self, case_id: str) -> dict[str, float]:
        """The levels of ``case_id`` the last ranking of the open store finds likely wrong."""
        if self.ranking is None or self._ranked_store is not self._store():
            return {}
        score = self.ranking.scores.get(case_id)
        return {} if score is None else score.unsure_levels()

    def highlight(self, *_: Any) -> None:
        """Border the open case's likely-wrong points (call when a case opens)."""
        case = self._case()
        if case is not None:
            case.set_unsure(self.unsure_levels(case.case_id))
