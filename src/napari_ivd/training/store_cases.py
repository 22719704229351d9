"""Which of a store's cases a fine-tuning run learns from and which it checks on.

Fine-tuning uses every case a person has vouched for: verified cases and cases whose head
revision was saved by hand (``source == "manual"``), each at that exact revision, so the
model card can name what the model saw. A few of them are held out for validation,
chosen from the case ids alone (verified cases first), so the same cases keep being the
yardstick as the store grows and a parent and its fine-tuned child are compared on equal
terms.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

from napari_ivd.errors import TrainingError
from napari_ivd.io.annotations import points_from_tss_mask
from napari_ivd.store import AnnotationStore, RevisionInfo
from napari_ivd.training.cases import LabelledCase, guess_contrast, mask_kinds_of
from napari_ivd.worklist import StepProgress

log = logging.getLogger(__name__)

__all__ = [
    "MIN_CASES",
    "PlannedCase",
    "TrainingPlan",
    "labelled_case",
    "load_planned_cases",
    "nothing_to_learn",
    "plan_training",
]

#: One case to learn from and one to validate on, at the very least.
MIN_CASES = 2


@dataclass(frozen=True)
class PlannedCase:
    """A case at the revision a run uses."""

    case_id: str
    revision: str
    status: str


@dataclass(frozen=True)
class TrainingPlan:
    """The cases of one fine-tuning run, and those left out with the reason."""

    train: tuple[PlannedCase, ...]
    validation: tuple[PlannedCase, ...]
    skipped: tuple[tuple[str, str], ...] = ()

    def revisions(self) -> dict[str, dict[str, str]]:
        """``{"train": {case: revision}, "validation": {...}}``, for the model card."""
        return {
            "train": {c.case_id: c.revision for c in self.train},
            "validation": {c.case_id: c.revision for c in self.validation},
        }

    def describe(self) -> str:
        """One line for the widget and the CLI."""
        held_out = ", ".join(c.case_id for c in self.validation)
        return f"learns from {len(self.train)} corrected cases; validates on {len(self.validation)}: {held_out}"


def _hash_order(case_id: str) -> str:
    return hashlib.sha1(case_id.encode()).hexdigest()


def plan_training(store: AnnotationStore, validation_fraction: float = 0.2) -> TrainingPlan:
    """Pick the corrected cases of ``store`` and hold some out for validation (records only, fast).

    Parameters
    ----------
    store : AnnotationStore
    validation_fraction : float
        Share of the usable cases held out (at least one).

    Raises
    ------
    TrainingError
        Fewer than :data:`MIN_CASES` corrected or verified cases.
    """
    usable: list[PlannedCase] = []
    skipped: list[tuple[str, str]] = []
    for case_id in store.case_ids():
        case = store.case(case_id)
        if case.head is None:
            skipped.append((case_id, "no saved revision"))
            continue
        revision = store.revision(case_id)
        if case.status != "verified" and revision.source != "manual":
            skipped.append((case_id, f"head revision is an uncorrected proposal ({revision.source})"))
            continue
        reason = nothing_to_learn(store, case_id, revision)
        if reason is not None:
            skipped.append((case_id, reason))
            continue
        usable.append(PlannedCase(case_id, case.head, case.status))
    if len(usable) < MIN_CASES:
        raise TrainingError(
            f"fine-tuning needs at least {MIN_CASES} corrected or verified cases (one to learn from, one to "
            f"check on); {store.location} has {len(usable)}. Correct and save more cases first"
        )
    n_val = min(len(usable) - 1, max(1, round(validation_fraction * len(usable))))
    ordered = sorted(usable, key=lambda c: (c.status != "verified", _hash_order(c.case_id)))
    held = {c.case_id for c in ordered[:n_val]}
    return TrainingPlan(
        train=tuple(c for c in usable if c.case_id not in held),
        validation=tuple(c for c in usable if c.case_id in held),
        skipped=tuple(skipped),
    )


def nothing_to_learn(store: AnnotationStore, case_id: str, revision: RevisionInfo) -> str | None:
    """Why a revision gives a model nothing to learn (no point, no vertebra or disc in its mask), else None.

    Any named point can be learnt (a model grows to the levels its cases name); a mask only
    when it holds vertebrae or discs, so only a revision without points has its mask read.
    """
    if revision.n_points:
        return None
    if not revision.has_mask:
        return "head revision is empty"
    mask = store.load(case_id, revision.revision_id).mask_tss
    if mask is None or not mask_kinds_of(mask):
        return "head revision has no point and its mask holds no vertebra or disc (nothing a model learns)"
    return None


def labelled_case(store: AnnotationStore, planned: PlannedCase) -> LabelledCase:
    """One planned case as training data: its image and the points and mask of its planned revision.

    A level its mask holds but no point names gets a keypoint at the centroid of its mask,
    so the levels of a mask-only annotation are learnt too.
    """
    volume = store.read_image(planned.case_id)
    annotation = store.load(planned.case_id, planned.revision)
    mask = annotation.mask_tss
    kinds = frozenset() if mask is None else mask_kinds_of(mask)
    from_mask = points_from_tss_mask(mask, kinds=kinds) if kinds else []
    points = {p.level: np.asarray(p.ijk_vox) for p in (*from_mask, *annotation.points)}  # named points win
    return LabelledCase(
        name=planned.case_id,
        contrast=guess_contrast(f"{planned.case_id} {store.case(planned.case_id).source_path}"),
        volume=volume,
        keypoints_vox=points,
        mask_tss=mask if kinds else None,
        mask_kinds=kinds,
    )


def load_planned_cases(
    store: AnnotationStore, plan: TrainingPlan
) -> Generator[StepProgress, None, tuple[list[LabelledCase], list[LabelledCase]]]:
    """Read every planned case, yielding progress; returns (train cases, validation cases)."""
    everything = (*plan.train, *plan.validation)
    loaded: list[LabelledCase] = []
    for i, planned in enumerate(everything):
        yield StepProgress(i, len(everything), f"reading {planned.case_id} ({planned.revision})")
        loaded.append(labelled_case(store, planned))
    n = len(plan.train)
    return loaded[:n], loaded[n:]
