"""The annotator's model: one case's shown points and mask, and the rules that edit, save and verify them.

No Qt, no napari: the annotator widget composes an :class:`Annotator`, shows its points
and mask in layers and forwards the user's actions to it (napari-animation's model/view
split); tests and scripts drive the same object with plain calls. The rules it keeps:

- *Unsaved* means the shown points or mask differ from what was opened, predicted or saved.
- A save records what the edit started from (the head revision, or the proposal of a case
  without one); a colleague's save in between comes back as a :class:`SaveConflict`, which
  the caller answers with ``on_top``, ``reload`` or ``cancel``; it is never superseded silently.
- A revision's source is ``model:<version>`` only when it stores a model's proposal
  unchanged, else ``manual``.
- *All levels* shifts relabel the mask with the points, and undo restores both.
- A level is either annotated (a point) or marked absent (not present in this scan), never
  both: marking a level with a point absent is refused, and a point given a level marked
  absent unmarks it (the researcher's latest word wins, and undo brings the mark back).
- A prediction that ends after the user edited the case keeps the edited points or mask
  unless told to replace them.

The long steps (read a case, predict, save, verify) are ``*_steps`` jobs
(:mod:`napari_ivd.progress`) that only use the store and return a result; the ``finish_*``
methods apply that result to the state. A GUI runs the jobs in a worker and the ``finish_*`` on its own thread;
:meth:`Annotator.open`, :meth:`~Annotator.save`, :meth:`~Annotator.verify`,
:meth:`~Annotator.next_case` and :meth:`~Annotator.predict` chain both for a plain caller.

The mask is kept on the display grid of the case's :class:`~napari_ivd.io.SagittalView`
(the grid napari paints in, so a view can share the array); :meth:`Annotator.mask_tss`
gives it on the image's own grid.

Example
-------
>>> annotator = Annotator(AnnotationStore.open("annotations.zarr"), author="dr-a")
>>> annotator.open("case-07")
>>> annotator.shift_levels(1)                      # every level one down: points and mask
>>> outcome = annotator.save()
>>> if isinstance(outcome, SaveConflict):          # a colleague saved meanwhile
...     outcome = annotator.answer_conflict(outcome, "on_top")
>>> annotator.verify()
>>> annotator.next_case()
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Generator, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from napari_ivd import anatomy, corrections, worklist
from napari_ivd.corrections import Points
from napari_ivd.errors import CorrectionError, IvdError, StoreConflictError
from napari_ivd.inference import Prediction, prediction_points
from napari_ivd.io import Volume
from napari_ivd.io.annotations import LabelledPoint
from napari_ivd.progress import Job, Progress, Tally, call_job, run_steps
from napari_ivd.store import AnnotationStore, CaseInfo, ProposalInfo, RevisionInfo
from napari_ivd.worklist import OpenedCase

log = logging.getLogger(__name__)

__all__ = [
    "KINDS",
    "Annotator",
    "ConflictAnswer",
    "PredictionResult",
    "PredictionStart",
    "SaveConflict",
    "SaveRequest",
    "Saved",
    "display_mask",
]

#: Point kinds in the order the annotator keeps them (a view shows one layer per kind, same order).
KINDS = ("vertebra", "disc")
#: The answers to a :class:`SaveConflict`: keep mine as a new revision on top, reload the case, or do nothing.
ConflictAnswer = Literal["on_top", "reload", "cancel"]


def display_mask(mask_tss: np.ndarray | None, volume: Volume) -> np.ndarray:
    """A file-grid mask (None: empty) on ``volume``'s display grid: a contiguous, writable uint8 copy."""
    mask = mask_tss if mask_tss is not None else np.zeros(volume.geometry.shape, np.uint8)
    return np.ascontiguousarray(volume.view.to_display(np.asarray(mask, np.uint8)))


def _digest(mask: np.ndarray) -> bytes:
    """A fingerprint of a mask, to tell later whether it was edited without keeping a copy."""
    return hashlib.blake2b(np.ascontiguousarray(mask).data, digest_size=16).digest()


def _by_kind(points: Iterable[LabelledPoint]) -> Points:
    """Vertebrae, then discs, each in their given order: the order a view's layers list them in."""
    points = tuple(points)
    return tuple(p for kind in KINDS for p in points if p.kind == kind)


@dataclass(frozen=True, eq=False)
class SaveRequest:
    """A revision ready to commit: its content, what it started from, who saves it and how.

    ``points`` are sorted cranio-caudally; ``mask_tss`` is on the image grid (None: a
    points-only revision, when nothing was drawn and nothing is to be erased); ``absent``
    the levels marked not present in the scan, cranio-caudal.
    """

    case_id: str
    points: Points
    mask_tss: np.ndarray | None
    source: str
    parent: str | None
    proposal: str | None
    author: str | None
    status: str | None
    on_conflict: str
    absent: tuple[str, ...] = ()


@dataclass(frozen=True)
class Saved:
    """A committed revision and the case's row as the store lists it afterwards."""

    request: SaveRequest
    revision: RevisionInfo
    case: CaseInfo


@dataclass(frozen=True)
class SaveConflict:
    """A save refused because ``head`` was saved after the edit started from ``started_from``."""

    request: SaveRequest
    started_from: str | None
    head: str | None


@dataclass(frozen=True, eq=False)
class PredictionStart:
    """What the shown points and mask were when a prediction started (to tell edits made meanwhile)."""

    case_id: str
    points: Points
    mask_digest: bytes


@dataclass(frozen=True, eq=False)
class PredictionResult:
    """A prediction kept as a proposal: its points, its mask on the display grid, and the case's row."""

    start: PredictionStart
    prediction: Prediction
    proposal: ProposalInfo
    points: Points
    mask: np.ndarray
    case: CaseInfo


class Annotator:
    """One annotator's work on a store: the open case, its shown points and mask, and their rules.

    Parameters
    ----------
    store : AnnotationStore, optional
        The store to work on (see :meth:`use_store`).
    author : str, optional
        Written into every revision; None lets the store use the login name.
    """

    def __init__(self, store: AnnotationStore | None = None, author: str | None = None) -> None:
        self.store = store
        self.author = author
        self.history = corrections.EditHistory()
        self._close()

    def _close(self) -> None:
        self.case_id: str | None = None
        self.volume: Volume | None = None
        #: The head revision when the case was opened or last saved: the parent of the next save.
        self.parent_revision: str | None = None
        #: The proposal shown in a case without revision (the next save records it).
        self.proposal: str | None = None
        #: Where the shown annotation came from: ``"manual"``, ``"model:<version>"`` or None.
        self.origin: str | None = None
        self.points: Points = ()
        self.mask: np.ndarray | None = None
        #: Levels marked not present in this scan (saved with the next revision).
        self.absent: frozenset[str] = frozenset()
        #: The store's mark that this case's levels may be counted wrong (a case mark, not part of an edit).
        self.names_unsure = False
        self._baseline_points: Points = ()
        self._baseline_mask: np.ndarray | None = None
        self._baseline_absent: frozenset[str] = frozenset()
        self.history.reset(())

    def use_store(self, store: AnnotationStore) -> None:
        """Work on ``store`` from now on; the open case is closed."""
        self.store = store
        self._close()

    def close_case(self) -> None:
        """Forget the open case (its unsaved edits included)."""
        self._close()

    def _require_store(self) -> AnnotationStore:
        if self.store is None:
            raise IvdError("no annotation store is open; open or create one first")
        return self.store

    def _require_case(self) -> tuple[AnnotationStore, str, Volume, np.ndarray]:
        store = self._require_store()
        if self.case_id is None or self.volume is None or self.mask is None:
            raise IvdError("no case is open; open one first")
        return store, self.case_id, self.volume, self.mask

    # ------------------------------------------------------------------ open, next
    def open_steps(self, case_id: str) -> Job[OpenedCase]:
        """Read ``case_id``'s image and head revision (or latest proposal); apply with :meth:`finish_open`."""
        return worklist.open_case_steps(self._require_store(), case_id)

    def finish_open(self, opened: OpenedCase, mask: np.ndarray | None = None) -> None:
        """Make ``opened`` the case shown; ``mask`` is its mask on the display grid when a view already made it."""
        self._close()
        self.case_id, self.volume = opened.case_id, opened.volume
        self.parent_revision, self.proposal, self.origin = opened.revision, opened.proposal, opened.origin
        self.points = _by_kind(opened.points)
        self.mask = mask if mask is not None else display_mask(opened.mask_tss, opened.volume)
        self.absent = self._baseline_absent = opened.absent
        self.names_unsure = opened.names_unsure
        self.history.reset(self.points, self.absent)
        self._set_baseline(self.points, self.mask)

    def open(self, case_id: str) -> OpenedCase:
        """Open ``case_id`` (unsaved edits of the shown case are dropped: ask before calling)."""
        opened = run_steps(self.open_steps(case_id))
        self.finish_open(opened)
        return opened

    def next_case_id(self, order: Sequence[str] | None = None, statuses: Mapping[str, str] | None = None) -> str | None:
        """The next case after the open one that is not verified yet (wrapping around), or None when all are.

        ``order`` and ``statuses`` default to the store's (a view passes the order it lists them in).
        """
        if order is None or statuses is None:
            store = self._require_store()
            order = store.case_ids() if order is None else order
            statuses = {c: store.case(c).status for c in order} if statuses is None else statuses
        return worklist.next_case(list(order), statuses, self.case_id)

    def next_case(self) -> OpenedCase | None:
        """Open the next case not verified yet; None (nothing opened) when every case is."""
        found = self.next_case_id()
        return None if found is None else self.open(found)

    # ------------------------------------------------------------------ the shown annotation
    @property
    def is_open(self) -> bool:
        """True while a case is open."""
        return self.case_id is not None

    def mask_tss(self) -> np.ndarray:
        """The shown mask on the image's own grid (a uint8 copy)."""
        _, _, volume, mask = self._require_case()
        return np.ascontiguousarray(volume.view.to_file(np.asarray(mask)), dtype=np.uint8)

    def _set_baseline(self, points: Points, mask: np.ndarray) -> None:
        """What counts as saved from now on: ``points`` and a copy of ``mask``."""
        self._baseline_points = tuple(points)
        self._baseline_mask = np.array(mask, copy=True)

    @property
    def baseline(self) -> tuple[Points, np.ndarray | None]:
        """The points and mask last opened, predicted or saved (what *unsaved* compares with)."""
        return self._baseline_points, self._baseline_mask

    def has_unsaved_changes(self) -> bool:
        """True when the shown points, absent levels or mask differ from what was opened, predicted or saved."""
        if self.mask is None:
            return False
        if self.absent != self._baseline_absent or not corrections.same_points(self.points, self._baseline_points):
            return True
        return self._baseline_mask is None or not np.array_equal(self.mask, self._baseline_mask)

    # ------------------------------------------------------------------ edits
    def edit_points(self, points: Iterable[LabelledPoint], merge_key: Hashable | None = None) -> bool:
        """Take the points as the user left them (moved, added, deleted in a view); False when nothing changed.

        Edits sharing ``merge_key`` within a second merge into one undo step (one drag).
        """
        self.points = _by_kind(points)
        self.absent = self._still_absent()
        return self.history.record(self.points, merge_key=merge_key, absent=self.absent)

    def set_mask(self, mask: np.ndarray) -> None:
        """Show ``mask`` (display grid) instead of the current one; a view that paints in place need not call this."""
        current = self._require_case()[3]
        if mask.shape != current.shape:
            raise IvdError(f"{self.case_id}: a mask of shape {mask.shape} does not fit the case's {current.shape}")
        self.mask = mask

    def _apply(self, points: Points, mask_shift: int | None = None) -> None:
        self.points = _by_kind(points)
        self.absent = self._still_absent()
        self.history.record(self.points, mask_shift=mask_shift, absent=self.absent)

    def _still_absent(self) -> frozenset[str]:
        """The levels marked absent less those a shown point names: a point says its level is there."""
        return self.absent - {p.level for p in self.points}

    def mark_absent(self, levels: Iterable[str]) -> frozenset[str]:
        """Mark ``levels`` as not present in this scan: one undoable edit, saved with the next revision.

        What the ranking's *Delete missing* does with the placeholders of missing levels: the
        researcher knows the level is not there (a sacralised L5 has no L5-S1 disc), so
        fine-tuning learns it as background and the ranking stops calling it missing. Only
        for real anatomical absence; a level the scan does not reach is simply left out.
        Returns the levels, canonical.

        Raises
        ------
        UnknownLevelError
            A level the anatomy vocabulary does not know.
        CorrectionError
            A shown point has one of the levels (delete it first); nothing changes then.
        """
        self._require_case()
        names = frozenset(anatomy.structure(level).name for level in levels)
        pointed = sorted(names & {p.level for p in self.points}, key=lambda n: anatomy.structure(n).order)
        if pointed:
            raise CorrectionError(f"{', '.join(pointed)} has a point; delete it first to mark the level absent")
        self.absent = self.absent | names
        self.history.record(self.points, absent=self.absent)
        return names

    def shift_levels(self, steps: int) -> None:
        """Rename every point ``steps`` levels down (negative: up) and relabel the mask alike.

        Raises
        ------
        CorrectionError
            A point or a mask label would leave the spine; nothing changes then.
        """
        _, _, _, mask = self._require_case()
        shifted = corrections.shift_levels(self.points, steps)
        corrections.shift_mask_levels(mask, steps)  # refuses before changing anything, as shift_levels does
        self._apply(shifted, self.history.mask_shift + steps)

    def step_level(self, index: int, steps: int) -> None:
        """Move point ``index``'s level ``steps`` down (negative: up).

        Raises
        ------
        CorrectionError
            The level would leave the spine or is taken.
        """
        self._apply(corrections.step_level(self.points, index, steps))

    def set_level(self, index: int, level: str) -> None:
        """Give point ``index`` another level of its kind.

        Raises
        ------
        CorrectionError
            ``level`` is another kind's or taken.
        """
        self._apply(corrections.set_level(self.points, index, level))

    def insert_disc(self, first: int, second: int) -> str:
        """Insert the disc missing between points ``first`` and ``second``; returns its level (the last disc).

        Raises
        ------
        CorrectionError
            The two points are not neighbours with a disc missing between them.
        """
        points, level = corrections.insert_disc(self.points, first, second)
        self._apply(points)
        return level

    @property
    def can_undo(self) -> bool:
        """True when there is an edit to undo."""
        return self.history.can_undo

    @property
    def can_redo(self) -> bool:
        """True when there is an undone edit to redo."""
        return self.history.can_redo

    def undo(self) -> bool:
        """Undo the last point edit (an *All levels* shift: of the points and the mask); False when none.

        Raises
        ------
        CorrectionError
            The mask cannot be relabelled back (a label painted since would leave the spine);
            nothing changes then.
        """
        return self._step(self.history.undo, self.history.redo)

    def redo(self) -> bool:
        """Redo the last undone edit; False when none (raises as :meth:`undo`)."""
        return self._step(self.history.redo, self.history.undo)

    def _step(self, step: Callable[[], Points | None], back: Callable[[], Points | None]) -> bool:
        before = self.history.mask_shift
        points = step()
        if points is None:
            return False
        if self.mask is not None:
            try:
                corrections.shift_mask_levels(self.mask, self.history.mask_shift - before)
            except CorrectionError:
                back()
                raise
        self.points, self.absent = points, self.history.absent
        return True

    # ------------------------------------------------------------------ predict
    def prediction_start(self) -> PredictionStart:
        """What is shown now, so that :meth:`apply_prediction` can tell the edits made while a prediction ran."""
        _, case_id, _, mask = self._require_case()
        return PredictionStart(case_id, self.points, _digest(mask))

    def predict_steps(
        self, model: str | Path | None = None, device: str = "auto", start: PredictionStart | None = None
    ) -> Job[PredictionResult]:
        """Predict the open case and keep the result as a proposal; apply it with :meth:`apply_prediction`.

        Raises
        ------
        CheckpointError
            The model cannot be loaded.
        """
        store, case_id, volume, _ = self._require_case()
        start = start or self.prediction_start()

        predicting = worklist.predict_case_steps(store, case_id, volume, model, device)

        def body(tally: Tally) -> Generator[Progress, None, PredictionResult]:
            prediction, proposal = yield from tally.run(predicting)
            points = _by_kind(prediction_points(prediction))
            mask = display_mask(prediction.mask_tss, volume)
            return PredictionResult(start, prediction, proposal, points, mask, store.case(case_id))

        return Job(predicting.total, body)

    def edited_since(self, start: PredictionStart) -> list[str]:
        """The shown layers (``"points"``, ``"mask"``) changed since ``start``."""
        if self.mask is None or self.case_id != start.case_id:
            return []
        edited = []
        if not corrections.same_points(self.points, start.points):
            edited.append("points")
        if _digest(self.mask) != start.mask_digest:
            edited.append("mask")
        return edited

    def apply_prediction(self, result: PredictionResult, replace: bool = False) -> list[str]:
        """Show a finished prediction; the points or mask edited while it ran are kept unless ``replace``.

        The prediction becomes the baseline, so kept edits count as unsaved, and its model
        version becomes the origin (saved unchanged, the revision's source is that model).
        Returns the layers kept; nothing changes when another case is open now.
        """
        if self.case_id != result.start.case_id:
            return []
        kept = [] if replace else self.edited_since(result.start)
        if "points" not in kept:
            self.points = result.points
        if "mask" not in kept:
            self.mask = result.mask
        self.proposal = None if self.parent_revision else result.proposal.proposal_id
        self.origin = f"model:{result.proposal.model}"  # the model version, as the proposal names it
        self.absent = self._still_absent()  # a model is no judge of absence: the marks stay, less what it names
        self.history.reset(self.points, self.absent)
        self._set_baseline(result.points, result.mask)
        return kept

    def predict(self, model: str | Path | None = None, device: str = "auto") -> PredictionResult:
        """Predict the open case and show the result (a plain caller has made no edits meanwhile)."""
        result = run_steps(self.predict_steps(model, device))
        self.apply_prediction(result)
        return result

    # ------------------------------------------------------------------ save
    def save_request(self, status: str | None = None, on_conflict: str = "refuse") -> SaveRequest:
        """The revision a save would commit now: sorted points, mask, source, and what it started from.

        Raises
        ------
        CorrectionError
            A level is given to more than one point (the store refuses those).
        """
        case_id = self._require_case()[1]
        points = corrections.sorted_points(self.points)
        twice = corrections.duplicate_levels(points)
        if twice:
            raise CorrectionError(f"Not saved: {', '.join(twice)} given to more than one point; rename or delete one")
        mask_tss: np.ndarray | None = self.mask_tss()
        if not mask_tss.any() and not (self._baseline_mask is not None and self._baseline_mask.any()):
            mask_tss = None  # nothing drawn and nothing to erase: a points-only revision
        unchanged = not self.has_unsaved_changes()
        from_model = unchanged and self.origin is not None and self.origin.startswith("model:")
        return SaveRequest(
            case_id=case_id,
            points=points,
            mask_tss=mask_tss,
            source=self.origin if from_model and self.origin else "manual",
            parent=self.parent_revision,
            proposal=None if self.parent_revision else self.proposal,
            author=self.author,
            status=status,
            on_conflict=on_conflict,
            absent=tuple(sorted(self.absent, key=lambda n: anatomy.structure(n).order)),
        )

    def save_steps(self, request: SaveRequest) -> Job[Saved | SaveConflict]:
        """Commit ``request`` (:meth:`AnnotationStore.save_revision`); a colleague's save in between is a conflict.

        Apply the outcome with :meth:`finish_save`.
        """
        store = self._require_store()

        def body(tally: Tally) -> Generator[Progress, None, Saved | SaveConflict]:
            yield tally.step("saving")
            try:
                revision = store.save_revision(
                    request.case_id,
                    request.points,
                    request.mask_tss,
                    absent=request.absent,
                    author=request.author,
                    source=request.source,
                    parent=request.parent,
                    proposal=request.proposal,
                    on_conflict=request.on_conflict,
                    status=request.status,
                )
            except StoreConflictError as exc:  # not a failure: a choice for the user
                return SaveConflict(request, exc.started_from, exc.head)
            return Saved(request, revision, store.case(request.case_id))

        return Job(1, body)

    def finish_save(self, outcome: Saved | SaveConflict) -> None:
        """After a save: the new revision is the parent of the next one and what was saved is the baseline."""
        if not isinstance(outcome, Saved) or outcome.request.case_id != self.case_id or self.volume is None:
            return
        request = outcome.request
        self.parent_revision, self.origin, self.proposal = outcome.revision.revision_id, request.source, None
        assert self.mask is not None
        saved_mask = self.volume.view.to_display(request.mask_tss) if request.mask_tss is not None else None
        self._baseline_points, self._baseline_absent = request.points, frozenset(request.absent)
        self._baseline_mask = saved_mask if saved_mask is not None else np.zeros_like(self.mask)

    def save(self, status: str | None = None, on_conflict: str = "refuse") -> Saved | SaveConflict:
        """Save the shown points and mask as a new revision, or return the conflict to answer.

        Raises
        ------
        CorrectionError
            A level is given to more than one point.
        StoreError
            The store refused the revision for another reason.
        """
        outcome = run_steps(self.save_steps(self.save_request(status, on_conflict)))
        self.finish_save(outcome)
        return outcome

    def answer_conflict(self, conflict: SaveConflict, answer: ConflictAnswer) -> Saved | SaveConflict | None:
        """Answer a :class:`SaveConflict`: save mine as a new revision on top, reload the case, or leave it.

        Returns the outcome of the save on top, or None (reloaded or cancelled).
        """
        if answer == "on_top":
            return self.save(conflict.request.status, on_conflict="on_top")
        if answer == "reload":
            self.open(conflict.request.case_id)
        return None

    # ------------------------------------------------------------------ verify
    def verify_needs_save(self) -> bool:
        """True when marking verified must save first (unsaved edits, or no revision yet)."""
        return self.has_unsaved_changes() or self.parent_revision is None

    def verify_steps(self) -> Job[CaseInfo]:
        """Mark the open case verified in the store (its head revision); returns its row."""
        store, case_id, _, _ = self._require_case()
        return call_job("verifying", store.set_status, case_id, "verified")

    def names_unsure_steps(self, unsure: bool) -> Job[CaseInfo]:
        """Mark (or clear) that the open case's levels may be counted wrong; returns its row.

        A store mark, independent of the shown edit: it needs no save, and it changes what
        the next Train learns from the case (masks only) and what the case may judge (nothing).
        """
        store, case_id, _, _ = self._require_case()

        def mark() -> CaseInfo:
            info = store.set_names_unsure(case_id, unsure)
            if self.case_id == case_id:
                self.names_unsure = info.names_unsure
            return info

        return call_job("marking the level names " + ("unsure" if unsure else "sure"), mark)

    def verify(self) -> Saved | SaveConflict | CaseInfo:
        """Mark the open case verified, saving the shown annotation first when it is not saved yet."""
        if self.verify_needs_save():
            return self.save(status="verified")
        return run_steps(self.verify_steps())
