"""Active-learning scores kept in the annotation store, one JSON per model version.

Scoring a case costs four predictions, so results are cached with
:meth:`~napari_ivd.store.AnnotationStore.cache_scores` under the model's key (its name and
weights hash: a fine-tuned model gets a fresh cache, so scores refresh after each
fine-tuning). Inside, each case's entry records the sha256 of the image it was computed
from and the levels the case's revision marked absent then (never "missing": see
:func:`napari_ivd.active.chain.check_chain`), which is all a score depends on: an entry is
reused only for that image and those absent levels, under that scoring version (entries
written before absent levels existed have none). A case's status decides what it needs (not verified: a score; verified:
only its embedding, for diversity) and is read fresh from the store at every ranking.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_ivd.active.chain import Placeholder
from napari_ivd.active.plausibility import Finding
from napari_ivd.active.uncertainty import PointScore, VolumeScore
from napari_ivd.errors import StoreError
from napari_ivd.store import AnnotationStore

log = logging.getLogger(__name__)

__all__ = ["CACHE_VERSION", "CachedCase", "ScoreCache", "model_key", "score_from_json", "score_to_json"]

#: Bump when the scores change meaning: older caches are then ignored and recomputed.
CACHE_VERSION = 3


def model_key(card: dict[str, Any]) -> str:
    """The cache key of a model version: its name and the start of its weights' sha256."""
    return f"{card.get('name', 'model')}-{str(card.get('weights_sha256', 'unhashed'))[:16]}"


def score_to_json(score: VolumeScore) -> dict[str, Any]:
    """A :class:`VolumeScore` as plain JSON (without its prediction)."""
    return {
        "score": score.score,
        "reason": score.reason,
        "mid_sagittal_mm": score.mid_sagittal_mm,
        "points": [
            {
                "level": p.level,
                "uncertainty": p.uncertainty,
                "reason": p.reason,
                "score": p.score,
                "spread_mm": p.spread_mm,
                "components": p.components,
            }
            for p in score.points
        ],
        "findings": [
            {"uncertainty": f.uncertainty, "reason": f.reason, "level": f.level, "headline": f.headline}
            for f in score.findings
        ],
        "placeholders": [
            {"level": p.level, "position": list(p.position), "reason": p.reason} for p in score.placeholders
        ],
    }


def score_from_json(data: dict[str, Any]) -> VolumeScore:
    """Inverse of :func:`score_to_json`."""
    return VolumeScore(
        score=float(data["score"]),
        reason=str(data["reason"]),
        points=tuple(PointScore(**p) for p in data["points"]),
        findings=tuple(Finding(**f) for f in data["findings"]),
        mid_sagittal_mm=float(data["mid_sagittal_mm"]),
        placeholders=tuple(
            Placeholder(str(p["level"]), tuple(float(v) for v in p["position"]), str(p["reason"]))
            for p in data.get("placeholders", [])
        ),
    )


@dataclass(frozen=True, eq=False)
class CachedCase:
    """What is known about one case under one model: its score (if scored) and embedding (if embedded).

    ``absent``: the levels the case's revision marked not present when it was scored.
    """

    image_sha256: str
    score: VolumeScore | None = None
    embedding: np.ndarray | None = None
    absent: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for the store."""
        return {
            "image_sha256": self.image_sha256,
            "score": None if self.score is None else score_to_json(self.score),
            "embedding": None if self.embedding is None else [round(float(v), 6) for v in self.embedding],
            "absent": list(self.absent),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CachedCase:
        """Inverse of :meth:`to_json`."""
        return cls(
            image_sha256=str(data["image_sha256"]),
            score=None if data.get("score") is None else score_from_json(data["score"]),
            embedding=None if data.get("embedding") is None else np.asarray(data["embedding"], dtype=np.float64),
            absent=tuple(str(level) for level in data.get("absent", ())),
        )


class ScoreCache:
    """One model's cached scores in a store: read once, updated case by case, written back whole.

    A cache written by another scoring version, for another model or unreadable is ignored
    (and replaced at the next :meth:`save`). A store that cannot be written (locked, read
    only) only costs the caching: the failure is logged once and scores are still returned.
    """

    def __init__(self, store: AnnotationStore, key: str) -> None:
        self.store, self.key = store, key
        self.entries: dict[str, CachedCase] = {}
        self._warned = False
        payload = store.cached_scores(key)
        if payload and payload.get("version") == CACHE_VERSION and payload.get("model") == key:
            for case_id, data in payload.get("cases", {}).items():
                try:
                    self.entries[case_id] = CachedCase.from_json(data)
                except (KeyError, TypeError, ValueError) as exc:
                    log.warning("%s: cached score of %s is unreadable (%s); it will be recomputed", key, case_id, exc)

    def get(self, case_id: str, image_sha256: str, absent: tuple[str, ...] = ()) -> CachedCase | None:
        """The case's entry when it was computed from this very image with these ``absent`` levels, else None."""
        entry = self.entries.get(case_id)
        if entry is None or entry.image_sha256 != image_sha256 or entry.absent != tuple(absent):
            return None
        return entry

    def put(self, case_id: str, entry: CachedCase) -> None:
        """Remember a case's entry (written at the next :meth:`save`)."""
        self.entries[case_id] = entry

    def save(self) -> None:
        """Write every entry to the store (one atomic key replace)."""
        payload = {
            "version": CACHE_VERSION,
            "model": self.key,
            "cases": {case_id: entry.to_json() for case_id, entry in sorted(self.entries.items())},
        }
        try:
            self.store.cache_scores(self.key, payload)
        except StoreError as exc:
            if not self._warned:
                log.warning("%s: scores not cached (%s); they will be computed again next time", self.key, exc)
                self._warned = True
