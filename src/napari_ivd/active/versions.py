"""Do two model versions name the same structures differently? An off-by-one the perturbations cannot see.

A fine-tuned model that counts the levels from another end than its parent names every
structure of a case one level off, however stable each name is. The store keeps every
version's proposal of a case, so the current model's points can be matched, by position
and kind, with an earlier version's: a structure at the same place with another name is
a naming one of them got wrong, and the case is worth a look.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from napari_ivd import anatomy, metrics
from napari_ivd.active.chain import MISCOUNT_UNCERTAINTY
from napari_ivd.active.plausibility import Finding
from napari_ivd.active.uncertainty import VolumeScore, summarise

__all__ = ["compare_with_earlier"]

_NUMBERS = {1: "one", 2: "two", 3: "three"}


def compare_with_earlier(
    score: VolumeScore, earlier_mm: Mapping[str, Sequence[float]], earlier_model: str
) -> VolumeScore:
    """``score`` with the structures an earlier model version named differently at the same place flagged.

    Parameters
    ----------
    score : VolumeScore
        The current model's score of the case, with its prediction (scanner mm positions).
    earlier_mm : mapping of level name -> scanner (x, y, z) mm
        An earlier version's proposal of the same image.
    earlier_model : str
        That version's name, for the reason.

    Returns
    -------
    VolumeScore
        Each renamed point gets the ``chain`` cue :data:`~napari_ivd.active.chain.MISCOUNT_UNCERTAINTY`
        ("names one level off from <model>'s proposal: L4 was L5"), the case a headline
        finding naming the lowest one, score and reason recomputed. Unchanged when nothing
        differs or the score has no prediction (read from the cache).
    """
    if score.prediction is None or not earlier_mm:
        return score
    now = {s.name: np.asarray(s.xyz_mm, dtype=np.float64) for s in score.prediction.structures}
    earlier = {n: np.asarray(p, dtype=np.float64) for n, p in earlier_mm.items()}
    renamed = metrics.renamed_levels(now, earlier)
    if not renamed:
        return score
    reasons = {}
    for name, other in renamed.items():
        levels = abs(anatomy.structure(other).order - anatomy.structure(name).order) // 2
        count = f"{_NUMBERS.get(levels, str(levels))} level" + ("s" if levels != 1 else "")
        reasons[name] = f"names {count} off from {earlier_model}'s proposal: {name} was {other}"
    points = []
    for point in score.points:
        if point.level not in renamed:
            points.append(point)
            continue
        components = {**point.components, "chain": max(point.components.get("chain", 0.0), MISCOUNT_UNCERTAINTY)}
        uncertainty = 1.0 - math.prod(1.0 - u for u in components.values())
        reason = reasons[point.level] if components["chain"] >= max(components.values()) else point.reason
        points.append(replace(point, uncertainty=uncertainty, reason=reason, components=components))
    lowest = max(renamed, key=lambda n: anatomy.structure(n).order)
    findings = (*score.findings, Finding(MISCOUNT_UNCERTAINTY, reasons[lowest], lowest, headline=True))
    total, reason = summarise(points, findings)
    return replace(score, score=total, reason=reason, points=tuple(points), findings=findings)
