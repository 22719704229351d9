"""Which case to correct next: rank the cases not verified yet by a strategy, scoring a store's cases as needed.

Strategies (:data:`STRATEGIES`):

* ``random``: a seeded shuffle, the baseline every other strategy must beat;
* ``uncertainty``: first the cases the chain checks say need fixing as a whole (a missing
  level, names off by one, names not counted from the sacrum), then the most informative
  (:mod:`napari_ivd.active.uncertainty`);
* ``uncertainty+diversity``: greedy k-center over the model's embeddings weighted by
  uncertainty (:mod:`napari_ivd.active.diversity`), so a batch of picks does not repeat
  one kind of scan and covers what the verified cases do not.

:func:`rank` is pure (plain records in, ordered rows out); :func:`score_store_steps` scores a
store's cases with a model (cached per model version, see :mod:`napari_ivd.active.cache`),
as a job reporting each case's steps, and returns the ranking.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_ivd.active.cache import CachedCase, ScoreCache, model_key
from napari_ivd.active.diversity import embed_volume, k_center_order, points_mid_sagittal_mm
from napari_ivd.active.uncertainty import PERTURBATIONS, Perturbation, VolumeScore, score_volume_steps, scoring_steps
from napari_ivd.active.versions import compare_with_earlier
from napari_ivd.errors import IvdError, RankingError
from napari_ivd.model_versions import active_choice, model_folder, stored_model
from napari_ivd.models import ModelCache, find_model_dir, read_card
from napari_ivd.progress import Job, Progress, Tally
from napari_ivd.store import AnnotationStore, CaseInfo

log = logging.getLogger(__name__)

__all__ = ["STRATEGIES", "CaseRecord", "RankedCase", "Ranking", "rank", "score_store_steps"]


STRATEGIES: tuple[str, ...] = ("random", "uncertainty", "uncertainty+diversity")
#: Under ``uncertainty+diversity``, a pick whose distance counts for less than this share is
#: said to resemble its nearest annotated or earlier-picked case.
RESEMBLES_BELOW = 0.5


@dataclass(frozen=True, eq=False)
class CaseRecord:
    """What ranking knows about one case.

    ``score`` is its informativeness in [0, 1] (None: not scored); ``embedding`` what the
    model sees in it (None: not embedded); ``fix_first`` how sure the chain checks are that
    the whole case needs fixing (:attr:`~napari_ivd.active.uncertainty.VolumeScore.fix_first`;
    0: they found nothing). Verified cases are never ranked; their embeddings are what
    ``uncertainty+diversity`` keeps away from.
    """

    case_id: str
    status: str = "new"
    score: float | None = None
    reason: str = ""
    embedding: np.ndarray | None = None
    fix_first: float = 0.0

    @classmethod
    def from_score(
        cls,
        case_id: str,
        status: str,
        score: VolumeScore | None,
        embedding: np.ndarray | None = None,
        reason: str = "",
    ) -> CaseRecord:
        """What ranking keeps of a case's score (None: not scored); ``reason``, when given, says why instead."""
        if score is None:
            return cls(case_id, status, reason=reason, embedding=embedding)
        return cls(case_id, status, score.score, reason or score.reason, embedding, score.fix_first)


@dataclass(frozen=True)
class RankedCase:
    """One row of a ranking: 1-based rank, the strategy's score and the main reason."""

    rank: int
    case_id: str
    status: str
    score: float | None
    reason: str


@dataclass(frozen=True)
class Ranking:
    """The ranked cases (not verified), the model they were scored with, and each case's point scores."""

    strategy: str
    model: str | None
    cases: tuple[RankedCase, ...]
    scores: dict[str, VolumeScore] = field(default_factory=dict)

    def case_ids(self) -> list[str]:
        """Case ids, best first."""
        return [c.case_id for c in self.cases]


def check_strategy(strategy: str) -> str:
    """``strategy`` when it is one of :data:`STRATEGIES`.

    Raises
    ------
    RankingError
        Unknown strategy; the message lists the valid ones.
    """
    if strategy not in STRATEGIES:
        raise RankingError(f"unknown ranking strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    return strategy


def _by_score(records: Sequence[CaseRecord]) -> list[CaseRecord]:
    """Cases to fix as a whole first (surest first), then highest score; unscored cases last; ties by case id.

    A missing level or a miscount is the costliest error to find by eye and what a
    correction teaches most; the score, a mix of cues, saturates near 1 on a scan the
    model is bad at, so it alone ranked such cases among sound ones.
    """
    return sorted(records, key=lambda r: (r.score is None, -r.fix_first, -(r.score or 0.0), r.case_id))


def _diverse(candidates: list[CaseRecord], labelled: list[CaseRecord]) -> list[tuple[CaseRecord, float | None, str]]:
    """Weighted greedy k-center over the scored, embedded candidates; the others follow by score."""
    usable = [r for r in candidates if r.score is not None and r.embedding is not None]
    rest = _by_score([r for r in candidates if r not in usable])
    if not usable:
        return [(r, r.score, r.reason) for r in rest]
    references = [r for r in labelled if r.embedding is not None]
    names = [r.case_id for r in references] + [r.case_id for r in usable]
    picks = k_center_order(
        np.stack([r.embedding for r in usable]),  # type: ignore[misc]
        np.stack([r.embedding for r in references]) if references else None,  # type: ignore[misc]
        np.array([r.score for r in usable], dtype=np.float64),
    )
    rows = []
    for pick in picks:
        record = usable[pick.index]
        reason = record.reason
        if pick.nearest is not None and record.score and pick.value < RESEMBLES_BELOW * record.score:
            reason = f"{reason}; resembles {names[pick.nearest]}"
        rows.append((record, pick.value, reason))
    return rows + [(r, r.score, r.reason) for r in rest]


def rank(records: Sequence[CaseRecord], strategy: str = "uncertainty", seed: int = 0) -> list[RankedCase]:
    """Order the cases that are not verified by ``strategy``; verified ones are left out.

    Parameters
    ----------
    records : sequence of CaseRecord
        Every case (verified ones included: diversity measures against them).
    strategy : one of :data:`STRATEGIES`
    seed : int
        Seed of the ``random`` shuffle (same records and seed: same order).

    Returns
    -------
    list of RankedCase
        Best first (``uncertainty``: cases to fix as a whole first, see :class:`CaseRecord`).
        ``score`` is the strategy's: the case's informativeness (``uncertainty``),
        its informativeness times its share of the largest remaining distance to what is
        annotated or picked (``uncertainty+diversity``), or the informativeness if known
        (``random``).

    Raises
    ------
    RankingError
        Unknown strategy.

    Example
    -------
    >>> records = [CaseRecord("a", score=0.2), CaseRecord("b", score=0.9), CaseRecord("c", "verified", 1.0)]
    >>> [r.case_id for r in rank(records, "uncertainty")]
    ['b', 'a']
    """
    check_strategy(strategy)
    candidates = [r for r in records if r.status != "verified"]
    if strategy == "random":
        shuffled = sorted(candidates, key=lambda r: r.case_id)
        order = np.random.default_rng(seed).permutation(len(shuffled))
        rows = [(shuffled[i], shuffled[i].score, f"random draw (seed {seed})") for i in order]
    elif strategy == "uncertainty":
        rows = [(r, r.score, r.reason) for r in _by_score(candidates)]
    else:
        rows = _diverse(candidates, [r for r in records if r.status == "verified"])
    return [
        RankedCase(n, record.case_id, record.status, None if score is None else float(score), reason)
        for n, (record, score, reason) in enumerate(rows, start=1)
    ]


def _earlier_proposal(store: AnnotationStore, case_id: str, current: str) -> tuple[str, dict[str, np.ndarray]]:
    """The case's latest proposal by another model version than ``current``: its model and points (mm)."""
    earlier = [p for p in store.proposals(case_id) if p.model != current]
    if not earlier:
        return current, {}
    return earlier[-1].model, store.load_proposal(case_id, earlier[-1].proposal_id).points_mm()


def _absent_levels(store: AnnotationStore, info: CaseInfo) -> tuple[str, ...]:
    """The levels a case's head revision marks not present in the scan (none for a verified case: it is not scored)."""
    if info.head is None or info.status == "verified":
        return ()
    return store.revision(info.case_id).absent


def score_store_steps(
    store: AnnotationStore,
    model: str | Path | None = None,
    device: str = "auto",
    strategy: str = "uncertainty",
    seed: int = 0,
    cache: ModelCache | None = None,
    perturbations: Sequence[Perturbation] = PERTURBATIONS,
) -> Job[Ranking]:
    """Score the store's cases that need it (cached per model version), a job whose result is the ranking.

    Cases not verified get a score and an embedding; verified cases only an embedding, and
    only for ``uncertainty+diversity``. A case with a proposal by another model version
    (the previous active one, say) is also compared with it: the same structures named
    differently count as names off by one (:mod:`napari_ivd.active.versions`). The levels a
    case's head revision marks absent (not present in the scan) are never called missing.
    Entries cached for the same model, image and absent levels are reused, so ranking again after a few
    corrections costs nothing, and a fine-tuned model (other weights) scores afresh. The
    cache is written after every case, so a cancelled run keeps what it computed. A case
    that cannot be read is ranked last with the reason, not fatal. Making the job reads the
    store's case list, the model's card and the cache (to know its steps); the model is
    loaded when the job runs, and only when a case needs scoring.

    Parameters
    ----------
    store : AnnotationStore
    model : a version stored in ``store``, a bundled model's name or a model folder (None: the store's
        active model, see :mod:`napari_ivd.model_versions`); unused by ``random``.
    device : ``"auto"``, ``"cpu"`` or ``"cuda"``.
    strategy : one of :data:`STRATEGIES`.
    seed : seed of the ``random`` strategy.
    cache : loaded models to reuse (default: load the model afresh).
    perturbations : test-time perturbations (one extra forward pass each).

    Raises
    ------
    RankingError
        Unknown strategy.
    CheckpointError
        The model cannot be loaded.
    """
    check_strategy(strategy)
    infos = [store.case(case_id) for case_id in store.case_ids()]
    if strategy == "random":

        def draw(tally: Tally) -> Generator[Progress, None, Ranking]:
            yield tally.step(f"drawing {len(infos)} cases at random")
            records = [CaseRecord(i.case_id, i.status) for i in infos]
            return Ranking(strategy, None, tuple(rank(records, strategy, seed)))

        return Job(1, draw)

    chosen = active_choice(store).key if model is None else model
    folder = model_folder(store, chosen)
    version = stored_model(store, chosen)
    current = find_model_dir(folder).name if version is None else version.model_id  # as proposals name it
    key = model_key(read_card(folder))
    cached = ScoreCache(store, key)
    diversity = strategy == "uncertainty+diversity"
    absent = {info.case_id: _absent_levels(store, info) for info in infos}

    def needs(info: CaseInfo) -> bool:
        entry = cached.get(info.case_id, info.image_sha256, absent[info.case_id])
        if info.status != "verified":
            return entry is None or entry.score is None or entry.embedding is None
        return diversity and (entry is None or entry.embedding is None)

    todo = [info for info in infos if needs(info)]
    per_case = 1 + scoring_steps(perturbations) + 1  # reading, scoring, embedding

    def body(tally: Tally) -> Generator[Progress, None, Ranking]:
        failed: dict[str, str] = {}
        loaded = (cache or ModelCache(size=1)).get(folder, device) if todo else None
        for n, info in enumerate(todo):
            assert loaded is not None
            net, card, where = loaded
            case_id, end = info.case_id, tally.done + per_case
            yield tally.step(f"{case_id}: reading ({n + 1} of {len(todo)} to score)")
            try:
                volume = store.read_image(case_id)
                known = cached.get(case_id, info.image_sha256, absent[case_id])
                volume_score = None if known is None else known.score  # a verified case keeps an earlier score
                if info.status != "verified":
                    scoring = score_volume_steps(volume, net, card, where, perturbations, absent[case_id])
                    volume_score = yield from tally.run(scoring, prefix=case_id)
                    earlier_model, earlier_mm = _earlier_proposal(store, case_id, current)
                    volume_score = compare_with_earlier(volume_score, earlier_mm, earlier_model)
                    mid_mm = volume_score.mid_sagittal_mm
                else:
                    tally.skip(scoring_steps(perturbations))
                    points = store.load(case_id).points
                    mid_mm = points_mid_sagittal_mm(volume.view, np.array([p.ijk_vox for p in points]))
                yield tally.step(f"{case_id}: embedding")
                embedding = embed_volume(volume, net, card, where, mid_mm)
            except IvdError as exc:
                log.warning("%s not scored: %s", case_id, exc)
                failed[case_id] = f"not scored: {exc}"
                tally.skip(end - tally.done)
                continue
            cached.put(case_id, CachedCase(info.image_sha256, volume_score, embedding, absent[case_id]))
            cached.save()
        return _ranking(infos, cached, failed, strategy, key, seed, absent)

    return Job(per_case * len(todo), body)


def _ranking(
    infos: Sequence[CaseInfo],
    cached: ScoreCache,
    failed: Mapping[str, str],
    strategy: str,
    key: str,
    seed: int,
    absent: Mapping[str, tuple[str, ...]],
) -> Ranking:
    """The store's cases ranked from what the cache holds now (failed ones last, with their reason)."""
    records, scores = [], {}
    for info in infos:
        entry = cached.get(info.case_id, info.image_sha256, absent[info.case_id])
        score = entry.score if entry is not None else None
        if score is not None:
            scores[info.case_id] = score
        embedding = None if entry is None else entry.embedding
        records.append(CaseRecord.from_score(info.case_id, info.status, score, embedding, failed.get(info.case_id, "")))
    return Ranking(strategy, key, tuple(rank(records, strategy, seed)), scores)
