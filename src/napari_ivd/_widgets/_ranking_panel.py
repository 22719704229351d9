"""The annotator's ranking panel: which case to correct next, and which of its points to check first.

A thin view over :func:`napari_ivd.active.score_store_steps`: pick a strategy, **Rank cases**
scores the store's cases off the GUI thread (cached per model version, so ranking again
is quick) and sorts the case table by the ranking, with each case's score and main
reason; **Next case** then walks down the ranking. The open case's most likely wrong
points get an orange border, and each level the ranking finds missing an orange cross
where it should be: **Accept missing** makes the selected crosses (all, when none is
selected) points of their level, as one undoable point edit; **Delete missing** marks their
levels as not present in this scan (undoable, saved with the next revision), so fine-tuning
learns them as background and the ranking no longer calls them missing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from napari.utils.notifications import show_info
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from napari_ivd import active
from napari_ivd._widgets._case_layers import CaseLayers
from napari_ivd._widgets._case_table import CaseTable
from napari_ivd._widgets._jobs import start_job
from napari_ivd._widgets._point_tools import PointTools
from napari_ivd.store import AnnotationStore

log = logging.getLogger(__name__)

#: Strategies in the order offered, with their tooltips. What they say of learning speed is the
#: README's active-learning simulation with today's order (VB3 left out, 5 seeds, 2026-12-07).
STRATEGY_HELP = {
    "uncertainty": "The cases most likely wrong first: nothing found, missing or miscounted levels, then the"
    " model's doubts (perturbation spread, weak peaks, odd anatomy) - the order to check cases in; in simulation"
    " it taught the model no faster than random (level after 10 cases over 5 runs): no fewer corrections",
    "uncertainty+diversity": "Doubtful and unlike the verified cases and each other (greedy k-center);"
    " in simulation it taught the model less than random (ahead in 1 of 5 runs)",
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
    tools : PointTools
        The point tools, whose undo history records an accepted missing level.
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
        tools: PointTools,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.table, self._store, self._model, self._device, self._case = table, store, model, device, case
        self.tools = tools
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
        self.accept_button = QPushButton("Accept missing")
        self.accept_button.setToolTip(
            "Make the selected orange crosses (all, when none is selected) points of their level (undoable)"
        )
        self.accept_button.clicked.connect(self.accept_missing)
        self.delete_button = QPushButton("Delete missing")
        self.delete_button.setToolTip(
            "Mark the selected missing levels as not present in this scan (all, when none is selected; undoable)"
        )
        self.delete_button.clicked.connect(self.delete_missing)
        missing = QHBoxLayout()
        missing.setContentsMargins(0, 0, 0, 0)
        missing.addWidget(self.accept_button)
        missing.addWidget(self.delete_button)
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
        layout.addLayout(missing)
        self._set_running(False)
        self._enable_missing()

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

        def finished() -> None:
            self.worker = None
            self._set_running(False)

        self.worker = start_job(
            lambda: active.score_store_steps(store, model, device, strategy),  # reads the store: in the worker
            what="Rank cases",
            on_yield=self._progress,
            on_return=lambda ranking: self._show(store, ranking),
            on_abort=lambda: self._conclude("Ranking cancelled"),
            on_error=lambda exc: self._conclude("Ranking failed"),
            on_finish=finished,
            owner=self,
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
        """Border the open case's likely-wrong points and place its missing levels (call when a case opens)."""
        case = self._case()
        if case is not None:
            case.set_unsure(self.unsure_levels(case.case_id))
            case.set_placeholders([(p.level, p.position, p.reason) for p in self.missing_levels(case.case_id)])
        self._enable_missing()

    def missing_levels(self, case_id: str) -> tuple[active.Placeholder, ...]:
        """The levels of ``case_id`` the last ranking of the open store finds missing, where they should be.

        Levels marked absent since (shown case) are left out: they are known not to be there.
        """
        if self.ranking is None or self._ranked_store is not self._store():
            return ()
        score = self.ranking.scores.get(case_id)
        annotator = self.tools.annotator
        absent = annotator.absent if annotator.case_id == case_id else frozenset()
        return () if score is None else tuple(p for p in score.placeholders if p.level not in absent)

    def _enable_missing(self) -> None:
        case = self._case()
        shown = case is not None and case.placeholders is not None and len(case.placeholders.data) > 0
        self.accept_button.setEnabled(shown)
        self.delete_button.setEnabled(shown)

    def _chosen_missing(self, case: CaseLayers) -> list[int]:
        """The selected placeholders of the open case, or all of them when none is selected."""
        layer = case.placeholders
        return sorted(layer.selected_data) or list(range(len(layer.data)))

    def accept_missing(self) -> None:
        """Make the chosen placeholders points of their level, as one undoable point edit."""
        case = self._case()
        if case is None or case.placeholders is None:
            return
        accepted = case.take_placeholders(self._chosen_missing(case))
        if accepted:
            self.tools.apply((*case.points(), *accepted), "accepted " + ", ".join(p.level for p in accepted))
        self._enable_missing()

    def delete_missing(self) -> None:
        """Mark the chosen placeholders' levels as not present in this scan, as one undoable edit."""
        case = self._case()
        if case is not None and case.placeholders is not None:
            deleted = case.take_placeholders(self._chosen_missing(case))
            if deleted:
                self.tools.mark_absent([p.level for p in deleted])
        self._enable_missing()
