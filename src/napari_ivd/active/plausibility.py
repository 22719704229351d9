"""Anatomical implausibility of a set of named points: order, spacing, fit to the learned skeleton.

A proposal that looks unlike a spine is likely wrong wherever the network itself is sure.
Three checks, each on the points' in-plane positions (row S→I, col A→P, in mm):

* **order**: structures must run cranio-caudally down the rows; the points outside the
  longest correctly ordered subsequence are the misplaced ones;
* **spacing**: distances between consecutive discs (and between consecutive vertebrae),
  per level skipped, against their median in the case;
* **skeleton**: how much the similarity fit to the model card's
  :class:`~napari_ivd.skeleton.SkeletonPrior` improves when the point is left out
  (a leave-one-out chi-square from :func:`napari_ivd.skeleton.hypothesis_cost`).

Missing levels and miscounted names are :mod:`napari_ivd.active.chain`'s. Every finding
carries an uncertainty in [0, 1] and a short reason, so the active-learning score can say
why a case or a point is suspicious.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from napari_ivd import anatomy
from napari_ivd.models.decode import Candidate
from napari_ivd.skeleton import SkeletonPrior, hypothesis_cost

log = logging.getLogger(__name__)

__all__ = ["Finding", "Plausibility", "implausibility", "longest_ordered", "ramp"]

#: Spacing ratios within this factor of the median are normal variation (uncertainty 0) ...
SPACING_TOLERANCE = 1.15
#: ... and at this factor (or its inverse) the spacing is certainly wrong (uncertainty 1).
SPACING_CERTAIN = 2.0
#: Leave-one-out chi-square up to this is ordinary (about 2 per well-placed point) ...
SKELETON_CHI2_FREE = 4.0
#: ... and this much above it gives uncertainty 0.5.
SKELETON_CHI2_HALF = 8.0
#: Fewest points for the leave-one-out skeleton check (a similarity fits three points loosely).
SKELETON_MIN_POINTS = 4


@dataclass(frozen=True)
class Finding:
    """Something suspicious, how suspicious (0..1) and why, in words.

    ``level`` names the structure it concerns (None for the whole case); ``headline`` marks
    what a researcher fixes (nothing found, a missing level, names off by one), which becomes
    the case's reason before the symptoms it causes (an odd spacing, a point off the learned
    shape) and puts the case first in the ``uncertainty`` ranking.
    """

    uncertainty: float
    reason: str
    level: str | None = None
    headline: bool = False


@dataclass(frozen=True)
class Plausibility:
    """Per-point implausibility: the worst check per level."""

    points: dict[str, Finding] = field(default_factory=dict)


def longest_ordered(rows: Sequence[float]) -> list[int]:
    """Indices of the longest subsequence whose values increase strictly (the first such, for ties).

    The structures of a spine, in cranio-caudal order, must lie lower and lower in the image;
    the ones outside this subsequence are the ones out of order.

    Example
    -------
    >>> longest_ordered([10.0, 30.0, 20.0, 40.0])
    [0, 1, 3]
    """
    n = len(rows)
    length, previous = [1] * n, [-1] * n
    for j in range(n):
        for i in range(j):
            if rows[i] < rows[j] and length[i] + 1 > length[j]:
                length[j], previous[j] = length[i] + 1, i
    if not n:
        return []
    best = max(range(n), key=lambda j: (length[j], -j))
    chain = []
    while best >= 0:
        chain.append(best)
        best = previous[best]
    return chain[::-1]


def ramp(excess: float, half: float) -> float:
    """Map an excess over what is normal to [0, 1): 0 for none, 0.5 at ``half``, towards 1 beyond.

    The soft saturation every cue of :mod:`napari_ivd.active` uses, so no single cue can
    exceed certainty and a larger excess always counts for more.
    """
    excess = max(excess, 0.0)
    return excess / (excess + half)


def _order(name: str) -> int:
    return anatomy.structure(name).order


def _spacing(points: dict[str, np.ndarray]) -> dict[str, Finding]:
    """Spacing outliers among consecutive same-kind structures, blamed on both ends of the step."""
    found: dict[str, Finding] = {}
    for kind in ("disc", "vertebra"):
        names = sorted((n for n in points if anatomy.structure(n).kind == kind), key=_order)
        steps = []
        for a, b in itertools.pairwise(names):
            levels = (_order(b) - _order(a)) / 2
            steps.append((a, b, float(np.linalg.norm(points[b] - points[a])) / levels))
        if len(steps) < 3:
            continue
        median = float(np.median([s for _, _, s in steps]))
        for a, b, step in steps:
            ratio = step / median if median > 0 else 1.0
            excess = abs(math.log(ratio)) - math.log(SPACING_TOLERANCE)
            u = min(1.0, max(0.0, excess / (math.log(SPACING_CERTAIN) - math.log(SPACING_TOLERANCE))))
            if u <= 0:
                continue
            reason = f"{a} to {b} spacing {ratio:.1f}× the median"
            for name in (a, b):
                if name not in found or found[name].uncertainty < u:
                    found[name] = Finding(u, reason, name)
    return found


def _skeleton(points: dict[str, np.ndarray], prior: SkeletonPrior) -> dict[str, Finding]:
    """Leave-one-out chi-square of each point against the skeleton prior."""
    known = {n: p for n, p in points.items() if n in prior.labels}
    if len(known) < SKELETON_MIN_POINTS:
        return {}
    chosen = {n: Candidate(n, float(p[0]), float(p[1]), 1.0) for n, p in known.items()}

    def fit(subset: dict[str, Candidate]) -> float:
        return hypothesis_cost(subset, list(subset.values()), prior, 1.0, 0.0, 0.0, scale_log_sd=None)

    total = fit(chosen)
    found = {}
    for name in chosen:
        chi2 = total - fit({n: c for n, c in chosen.items() if n != name})
        u = ramp(chi2 - SKELETON_CHI2_FREE, SKELETON_CHI2_HALF)
        if u > 0:
            found[name] = Finding(u, f"{name} off the learned spine shape (χ² {chi2:.0f})", name)
    return found


def implausibility(points_mm: Mapping[str, Sequence[float]], prior: SkeletonPrior | None = None) -> Plausibility:
    """Check named points against spine anatomy; returns the per-point findings.

    Parameters
    ----------
    points_mm : mapping of level name -> (row_mm, col_mm)
        In-plane positions on the sagittal display plane (rows S→I, cols A→P), in mm.
    prior : SkeletonPrior, optional
        The model card's skeleton; without it the skeleton check is skipped.

    Returns
    -------
    Plausibility
        ``points``: the worst finding per level (levels without one are absent).

    Example
    -------
    >>> found = implausibility({"L3": (0, 0), "L3-L4": (15, 0), "L4": (30, 0), "L4-L5": (5, 0), "L5": (60, 0)})
    >>> found.points["L4-L5"].reason
    'L4-L5 out of order'
    """
    named = {anatomy.structure(n).name: np.asarray(p, dtype=np.float64)[:2] for n, p in points_mm.items()}
    names = sorted(named, key=_order)
    per_point: dict[str, Finding] = {}

    ordered = [names[i] for i in longest_ordered([float(named[n][0]) for n in names])]
    for name in names:
        if name not in ordered:
            per_point[name] = Finding(1.0, f"{name} out of order", name)
    in_order = {n: named[n] for n in ordered}

    checks = [_spacing(in_order)] + ([_skeleton(in_order, prior)] if prior is not None else [])
    for found in checks:
        for name, finding in found.items():
            if name not in per_point or per_point[name].uncertainty < finding.uncertainty:
                per_point[name] = finding
    return Plausibility(per_point)
