"""Which of a store's cases a fine-tuning run learns from and which judge it.

Fine-tuning uses every case a person has vouched for: verified cases and cases whose head
revision was saved by hand (``source == "manual"``), each at that exact revision, so the
model card can name what the model saw. Only cases whose annotation no model produced
(:func:`can_judge`: edited by a person or imported) are held out to judge a run: a case
verified unchanged from a proposal of model M would score M on its own output, so it
trains but never judges. Held-out cases are chosen from the case ids alone (verified ones
first), so the same cases keep being the yardstick as the store grows, and a parent and
its fine-tuned child are scored on the same ones in the same run. With no independent
case, or only one case in all, a run trains on everything and its result is stored
un-judged (never made active by the run).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Generator, Mapping
from dataclasses import dataclass

import numpy as np

from napari_ivd.errors import TrainingError
from napari_ivd.io.annotations import points_from_tss_mask
from napari_ivd.progress import Job, Progress, Tally
from napari_ivd.store import AnnotationStore, CaseInfo, RevisionInfo
from napari_ivd.training.cases import LabelledCase, guess_contrast, mask_kinds_of

log = logging.getLogger(__name__)

__all__ = [
    "MIN_CASES",
    "NOT_JUDGED",
    "PlannedCase",
    "TrainingPlan",
    "can_judge",
    "labelled_case",
    "load_planned_cases",
    "nothing_to_learn",
    "plan_training",
]

#: One case to learn from, at the very least (judging the result needs one more, independent case).
MIN_CASES = 1
#: Cases (of those a run neither trains nor validates on) on which a new version's names are
#: compared with its parent's, unverified first: the next proposals are for them. Two
#: predictions each, about a second apiece for a lumbar scan on two CPU cores.
COMPARED_CASES = 6

#: Why a case marked "level names unsure" trains but never judges (nor is compared on).
NAMES_UNSURE = "level names unsure: trains its masks, not its names; judges no model"

#: Why a run without an independent held-out case is stored but not made active.
NOT_JUDGED = "no independent held-out case: not judged; Make active by hand if you trust it"

#: What to do about it, said before a run starts.
HOW_TO_JUDGE = (
    "correct or import a reference for at least one more case: accepted-unchanged proposals "
    "cannot judge the model that made them"
)


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
    #: Training cases that may not judge, with the reason (accepted unchanged from a model's proposal).
    train_only: tuple[tuple[str, str], ...] = ()
    #: Corrected cases left out because their revision teaches nothing, with the reason (also in ``skipped``).
    unlearnable: tuple[tuple[str, str], ...] = ()
    #: Cases the run neither trains nor validates on, on which the new version's names are compared
    #: with its parent's before it may become active (:mod:`~napari_ivd.training.promotion`).
    compared: tuple[str, ...] = ()

    @property
    def judged(self) -> bool:
        """Whether the run's result can be judged against its parent (some case is held out)."""
        return bool(self.validation)

    def revisions(self) -> dict[str, dict[str, str]]:
        """``{"train": {case: revision}, "validation": {...}}``, for the model card."""
        return {
            "train": {c.case_id: c.revision for c in self.train},
            "validation": {c.case_id: c.revision for c in self.validation},
        }

    def describe(self) -> str:
        """A few lines for the widget and the CLI: the cases, and what the result's judgement rests on."""
        n = len(self.train)
        text = f"learns from {n} corrected case{'s' if n != 1 else ''}; "
        if self.judged:
            held_out = ", ".join(c.case_id for c in self.validation)
            text += f"validates on {len(self.validation)}: {held_out} (parent and new version alike)"
        else:
            text += (
                "no independent case to validate on, so the new version will be stored un-judged and not made "
                f"active. To have it judged, {HOW_TO_JUDGE}"
            )
        if self.train_only:
            models = sorted({reason for _, reason in self.train_only})
            text += f"\n{len(self.train_only)} case(s) train only ({'; '.join(models)}): "
            text += ", ".join(case_id for case_id, _ in self.train_only)
        if self.unlearnable:
            text += "\n" + _not_learnt(self.unlearnable)
        if self.judged and self.compared:
            text += (
                f"\nbefore it becomes active, its names are compared with its parent's on {len(self.compared)} "
                f"other case{'s' if len(self.compared) != 1 else ''}: {', '.join(self.compared)}"
            )
        elif self.judged:
            text += (
                "\nno other case to compare its names with its parent's on before it becomes active; import the "
                "scans still to correct into the store"
            )
        return text


def _not_learnt(unlearnable: tuple[tuple[str, str], ...] | list[tuple[str, str]]) -> str:
    """The corrected cases a run leaves out, each with why: a researcher who saved them expects them used."""
    return f"{len(unlearnable)} corrected case(s) not learnt from: " + "; ".join(f"{c}: {r}" for c, r in unlearnable)


def _hash_order(case_id: str) -> str:
    return hashlib.sha1(case_id.encode()).hexdigest()


def can_judge(source: str) -> bool:
    """Whether a case whose head revision has ``source`` may judge models: only if no model made it.

    A revision saved unchanged from a model's proposal (``"model:<id>"``) holds that model's
    own output: scoring the model (or a child trained on it) there measures nothing. Edited
    and imported revisions (``"manual"``) are independent of every model.
    """
    return not source.startswith("model:")


def _train_only_reason(source: str) -> str:
    model = source.removeprefix("model:")
    return f"accepted unchanged from {model}'s proposal: trains, cannot judge it"


def plan_training(store: AnnotationStore, validation_fraction: float = 0.2) -> TrainingPlan:
    """Pick the corrected cases of ``store`` and hold some out for validation (records only, fast).

    Parameters
    ----------
    store : AnnotationStore
    validation_fraction : float
        Share of the usable cases held out: at least one, but only cases that
        :func:`can_judge`, and never the last case to learn from (then none is held out).
        Cases of one image (the same scan imported under two ids) are held out together, so
        a run is never judged on a copy of what it trained on.

    Raises
    ------
    TrainingError
        Fewer than :data:`MIN_CASES` corrected or verified cases.
    """
    usable: list[PlannedCase] = []
    image_of: dict[str, str] = {}
    verified: set[str] = set()
    skipped: list[tuple[str, str]] = []
    train_only: list[tuple[str, str]] = []
    unlearnable: list[tuple[str, str]] = []
    unsure: set[str] = set()
    for case_id in store.case_ids():
        case = store.case(case_id)
        if case.status == "verified":
            verified.add(case_id)
        if case.names_unsure:
            unsure.add(case_id)
        if case.head is None:
            skipped.append((case_id, "no saved revision"))
            continue
        revision = store.revision(case_id)
        if case.status != "verified" and revision.source != "manual":
            skipped.append((case_id, f"head revision is an uncorrected proposal ({revision.source})"))
            continue
        reason = nothing_to_learn(store, case, revision)
        if reason is not None:
            skipped.append((case_id, reason))
            unlearnable.append((case_id, reason))
            continue
        usable.append(PlannedCase(case_id, case.head, case.status))
        image_of[case_id] = case.image_sha256
        if case.names_unsure:
            train_only.append((case_id, NAMES_UNSURE))
        elif not can_judge(revision.source):
            train_only.append((case_id, _train_only_reason(revision.source)))
    if len(usable) < MIN_CASES:
        raise TrainingError(
            f"fine-tuning needs at least {MIN_CASES} corrected or verified case; {store.location} has none. "
            "Correct and save a case, or mark one verified, first"
            + (f" ({_not_learnt(unlearnable)})" if unlearnable else "")
        )
    independent = [c for c in usable if c.case_id not in dict(train_only)]
    n_val = min(len(independent), len(usable) - 1, max(1, round(validation_fraction * len(usable))))
    ordered = sorted(independent, key=lambda c: (c.status != "verified", _hash_order(c.case_id)))
    copies: dict[str, set[str]] = {}
    for case_id, digest in image_of.items():
        copies.setdefault(digest, set()).add(case_id)
    judges = {c.case_id for c in independent}
    held: set[str] = set()  # held out with every case of the same image, so no copy of it trains
    for candidate in ordered:
        if len(held & judges) >= n_val:
            break
        same_image = copies[image_of[candidate.case_id]]
        if len(held | same_image) < len(usable):
            held |= same_image
    # a held copy that may not judge (an accepted proposal) sits the run out
    sitting_out = {case_id: _copy_reason(case_id, image_of, held) for case_id, _ in train_only if case_id in held}
    others = [case_id for case_id, _ in (*skipped, *sitting_out.items()) if case_id not in unsure]
    return TrainingPlan(
        train=tuple(c for c in usable if c.case_id not in held),
        validation=tuple(c for c in usable if c.case_id in held and c.case_id not in sitting_out),
        skipped=tuple(skipped) + tuple(sitting_out.items()),
        train_only=tuple(t for t in train_only if t[0] not in sitting_out),
        unlearnable=tuple(unlearnable) + tuple(sitting_out.items()),
        compared=tuple(sorted(others, key=lambda case_id: case_id in verified)[:COMPARED_CASES]),
    )


def _copy_reason(case_id: str, image_of: Mapping[str, str], held: set[str]) -> str:
    """Why an accepted proposal sits a run out: it holds the image of a held-out case, and may not judge."""
    twins = sorted(other for other in held if other != case_id and image_of[other] == image_of[case_id])
    return f"same image as held-out {', '.join(twins)}: neither trains nor judges this run"


def nothing_to_learn(store: AnnotationStore, case: CaseInfo, revision: RevisionInfo) -> str | None:
    """Why a revision gives a model nothing to learn (no point, no vertebra or disc in its mask), else None.

    Any named point can be learnt (a model grows to the levels its cases name); a mask only
    when it holds vertebrae or discs, so only a revision without points has its mask read.
    A case whose level names are unsure teaches its mask alone, so it needs one.
    Levels marked absent alone teach nothing either: a training crop is placed on a point or
    a mask, and such a revision has neither.
    """
    if revision.n_points and not case.names_unsure:
        return None
    mask = store.load(case.case_id, revision.revision_id).mask_tss if revision.has_mask else None
    if mask is not None and mask_kinds_of(mask):
        return None
    if case.names_unsure:
        return "level names unsure and no vertebra or disc in its mask: only masks are learnt from such a case"
    if revision.absent:
        return (
            f"only absent levels, nothing to place a crop on ({', '.join(revision.absent)} marked absent; "
            "add a point or a mask to learn from this case)"
        )
    if not revision.has_mask:
        return "head revision is empty"
    return "head revision has no point and its mask holds no vertebra or disc (nothing a model learns)"


def labelled_case(store: AnnotationStore, planned: PlannedCase) -> LabelledCase:
    """One planned case as training data: its image, the points and mask of its planned revision, its absent levels.

    A level its mask holds but no point names gets a keypoint at the centroid of its mask,
    so the levels of a mask-only annotation are learnt too. The levels the revision marks
    absent (not present in the scan) are taught as known background. A case marked "level
    names unsure" teaches masks only (:attr:`LabelledCase.names_unsure`).
    """
    info = store.case(planned.case_id)
    volume = store.read_image(planned.case_id)
    annotation = store.load(planned.case_id, planned.revision)
    mask = annotation.mask_tss
    kinds = frozenset() if mask is None else mask_kinds_of(mask)
    from_mask = points_from_tss_mask(mask, kinds=kinds) if kinds else []
    points = {p.level: np.asarray(p.ijk_vox) for p in (*from_mask, *annotation.points)}  # named points win
    painted = set(annotation.absent) & set(points)  # the store keeps points and absent apart, not mask labels
    if painted:
        log.warning(
            "%s: %s marked absent but painted in the mask; taught as annotated",
            planned.case_id,
            ", ".join(sorted(painted)),
        )
    return LabelledCase(
        name=planned.case_id,
        contrast=guess_contrast(f"{planned.case_id} {info.source_path}"),
        volume=volume,
        keypoints_vox=points,
        mask_tss=mask if kinds else None,
        mask_kinds=kinds,
        absent=frozenset(annotation.absent) - painted,
        names_unsure=info.names_unsure,
    )


def load_planned_cases(
    store: AnnotationStore, plan: TrainingPlan
) -> Job[tuple[list[LabelledCase], list[LabelledCase]]]:
    """Read every planned case, a step each; the job's result is (train cases, validation cases)."""
    everything = (*plan.train, *plan.validation)

    def body(tally: Tally) -> Generator[Progress, None, tuple[list[LabelledCase], list[LabelledCase]]]:
        loaded: list[LabelledCase] = []
        for planned in everything:
            yield tally.step(f"reading {planned.case_id} ({planned.revision})")
            loaded.append(labelled_case(store, planned))
        n = len(plan.train)
        return loaded[:n], loaded[n:]

    return Job(len(everything), body)
