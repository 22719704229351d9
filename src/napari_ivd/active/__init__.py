"""Active learning: which case the researcher should correct next, and which of its points are likely wrong.

No Qt, no napari: the annotator's ranking panel and ``napari-ivd rank`` drive the same
job (:func:`score_store_steps`).

Example
-------
>>> ranking = run_steps(score_store_steps(store, strategy="uncertainty"))  # doctest: +SKIP
>>> [(r.case_id, round(r.score, 2), r.reason) for r in ranking.cases][:2]  # doctest: +SKIP
[('no-spine', 1.0, 'no disc or vertebra found'),
 ('VB3_case-13', 0.64, 'L5-S1 missing: the chain stops 52 mm above the end of the scan')]
"""

from __future__ import annotations

from napari_ivd.active.cache import CachedCase, ScoreCache, model_key
from napari_ivd.active.chain import Chain, Placeholder, check_chain
from napari_ivd.active.diversity import Pick, embed_volume, k_center_order, points_mid_sagittal_mm
from napari_ivd.active.plausibility import Finding, Plausibility, implausibility
from napari_ivd.active.ranking import STRATEGIES, CaseRecord, RankedCase, Ranking, rank, score_store_steps
from napari_ivd.active.uncertainty import (
    PERTURBATIONS,
    UNSURE_POINT,
    Perturbation,
    PointScore,
    VolumeScore,
    assess,
    check_prediction,
    perturb,
    score_volume_steps,
)
from napari_ivd.active.versions import compare_with_earlier

__all__ = [
    "PERTURBATIONS",
    "STRATEGIES",
    "UNSURE_POINT",
    "CachedCase",
    "CaseRecord",
    "Chain",
    "Finding",
    "Perturbation",
    "Pick",
    "Placeholder",
    "Plausibility",
    "PointScore",
    "RankedCase",
    "Ranking",
    "ScoreCache",
    "VolumeScore",
    "assess",
    "check_chain",
    "check_prediction",
    "compare_with_earlier",
    "embed_volume",
    "implausibility",
    "k_center_order",
    "model_key",
    "perturb",
    "points_mid_sagittal_mm",
    "rank",
    "score_store_steps",
    "score_volume_steps",
]
