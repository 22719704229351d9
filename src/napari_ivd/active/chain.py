"""Is the named chain of levels whole and counted right? Missing levels, off-by-one names, placeholders.

The errors researchers spend most time on are not points that wobble under perturbation
but chains that are named wrong as a whole, which the network repeats stably:

* **missing level**: a level missing between two named ones, or a chain that stops short
  of the sacrum (its lowest level above L5-S1 though the scan goes on below) or of the
  scan's upper end (for levels the model knows). Each gets a :class:`Placeholder` where it
  should be: interpolated between its named neighbours, or continued one structure step at
  a time from the chain's end (the step of the neighbours, or the skeleton prior's). A level
  the researcher marked absent (not present in the scan) is never missing;
* **not counted**: the scan ends above the sacrum, so nothing can check the names; a
  third or so of such chains are one level off;
* **off by one**: naming counted from the sacrum disagrees with the model's names. When
  L5-S1 (or S1, for a model that names the sacrum) is the lowest named structure, every
  structure above it is counted upward by the
  room between consecutive structures (how many structure steps fit, keeping discs and
  vertebrae apart); a structure whose count gives another name is named off by that many
  levels. Without L5-S1 in view, consecutive structures whose names skip more levels than
  fit between them, or fewer, are flagged as a local miscount. Levels the researcher
  marked absent are not counted: on a sacralised L5 (L5-S1 absent) the count starts at L5.

Positions are in-plane (row_mm S→I, col_mm A→P) on the sagittal display plane, as in
:mod:`napari_ivd.active.plausibility`; :func:`check_chain` is pure and knows nothing of
images beyond their in-plane extent.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from napari_ivd import anatomy
from napari_ivd.active.plausibility import Finding, longest_ordered
from napari_ivd.skeleton import SkeletonPrior

__all__ = ["Chain", "Placeholder", "check_chain", "structure_step_mm"]

#: The sacrum's first body: when a chain names it (models that learnt S1), levels are counted from it.
SACRUM = "S1"
#: Uncertainty of a level missing between named ones.
GAP_UNCERTAINTY = 0.9
#: Uncertainty of a level missing beyond the chain's end although the scan shows where it should be.
END_UNCERTAINTY = 0.8
#: Uncertainty of a structure whose name the count from the sacrum (or a neighbour) contradicts.
MISCOUNT_UNCERTAINTY = 0.9
#: Uncertainty of a named structure next to a missing level (it may carry the missing one's name,
#: but on the unseen VB3 cases such chain ends were mostly right: median error 2.2 mm against 1.5).
NEIGHBOUR_UNCERTAINTY = 0.2
#: A missing level beyond the chain's end counts only when its expected position is this many
#: structure steps inside the scan (half a step: the structure itself is then in view).
INSIDE_STEPS = 0.5
#: Consecutive structures are miscounted when the room between them (in structure steps) is at
#: least this far from what their names say (names differ by whole structures; 1.3 leaves
#: 0.3 of a step of slack on either side of the halfway point between two counts).
MISCOUNT_STEPS = 1.3
#: Uncertainty of every name of a chain whose scan ends above the sacrum, so that nothing counts
#: it: with the sacrum cut off, the bundled starter named 64.5 % of unseen VB3 levels right
#: against 86.5 % on the whole scans, the rest as whole chains one level off
#: (``benchmarks/bench_predict.py --all-held-out --sources VB3 --end-below L5``).
UNANCHORED_UNCERTAINTY = 0.35
#: Per-structure steps (mm) from fewer neighbour pairs than this fall back on the skeleton prior's.
MIN_PAIRS = 2

_NUMBERS = {1: "one", 2: "two", 3: "three"}
#: What a missing level's reason says after its name ("L1 missing: the chain stops ...").
_MISSING = " missing"


@dataclass(frozen=True)
class Placeholder:
    """Where a missing level should be: its name, position and why it is missing.

    ``position`` is in-plane ``(row_mm, col_mm)`` from :func:`check_chain`, scanner
    ``(x, y, z)`` mm once placed in a volume (:func:`napari_ivd.active.uncertainty.assess`).
    """

    level: str
    position: tuple[float, ...]
    reason: str


@dataclass(frozen=True)
class Chain:
    """What :func:`check_chain` found: case findings, per-point findings and placeholders."""

    case: tuple[Finding, ...] = ()
    points: dict[str, Finding] = field(default_factory=dict)
    placeholders: tuple[Placeholder, ...] = ()

    def in_words(self) -> list[str]:
        """The case findings' reasons in order, the levels missing for one cause said in one line.

        Each missing level is its own finding (its own placeholder to accept or delete), but a
        researcher reads "L1, T12-L1 and T12 missing: the chain stops 66 mm below the top of
        the scan" once rather than the same cause three times.
        """
        levels: dict[str, list[str]] = {}  # what is said -> the levels missing for it (none: said as is)
        for finding in self.case:
            level, missing, cause = finding.reason.partition(_MISSING)
            if missing and level == finding.level:
                levels.setdefault(cause, []).append(level)
            else:
                levels.setdefault(finding.reason, [])
        return [f"{_listed(names)}{_MISSING}{key}" if names else key for key, names in levels.items()]


def _listed(names: Sequence[str]) -> str:
    """``"L1"``, ``"L1 and T12-L1"``, ``"L1, T12-L1 and T12"``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _order(name: str) -> int:
    return anatomy.structure(name).order


def _levels(structures: int) -> str:
    """``"one level"``, ``"two levels"``: a whole number of levels from a count of structures."""
    n = abs(structures) // 2
    return f"{_NUMBERS.get(n, str(n))} level" + ("s" if n != 1 else "")


def structure_step_mm(points: Mapping[str, np.ndarray], prior: SkeletonPrior | None = None) -> float | None:
    """Typical distance between consecutive structures (vertebra to disc), in mm.

    The median over consecutive named pairs of distance per structure between them; with
    fewer than :data:`MIN_PAIRS` pairs, the skeleton prior's mean step per structure; None
    when neither is known.
    """
    names = sorted(points, key=_order)
    per = [float(np.linalg.norm(points[b] - points[a])) / (_order(b) - _order(a)) for a, b in itertools.pairwise(names)]
    if len(per) >= MIN_PAIRS:
        return float(np.median(per))
    if prior is not None:
        orders = [_order(n) for n in prior.labels]
        return prior.step_mm * (len(orders) - 1) / (orders[-1] - orders[0])
    return float(per[0]) if per else None


def _count(distance_mm: float, step_mm: float, named_apart: int) -> int:
    """How many structure steps the room between two structures holds, with the parity of ``named_apart``.

    A disc stays a disc whatever it is called, so two structures of the same kind are an even
    number of steps apart and a disc and a vertebra an odd number.
    """
    room = distance_mm / step_mm
    if abs(room - named_apart) < MISCOUNT_STEPS:
        return named_apart
    parity = named_apart % 2
    return max(parity or 2, parity + 2 * round((room - parity) / 2))


def _missing_between(
    a: str, b: str, points: Mapping[str, np.ndarray], step_mm: float | None
) -> list[tuple[Finding, Placeholder]]:
    """Levels missing between consecutive named ``a`` and ``b``, interpolated in place.

    Nothing when the room between them holds fewer structures than their names say: then
    the names are miscounted (see :func:`_miscounts`), not a level missed.
    """
    out: list[tuple[Finding, Placeholder]] = []
    start, end = _order(a), _order(b)
    if step_mm and _count(float(np.linalg.norm(points[b] - points[a])), step_mm, end - start) < end - start:
        return out
    for name in anatomy.span(a, b)[1:-1]:
        t = (_order(name) - start) / (end - start)
        position = points[a] + t * (points[b] - points[a])
        reason = f"{name}{_MISSING} between {a} and {b}"
        out.append(
            (
                Finding(GAP_UNCERTAINTY, reason, name, headline=True),
                Placeholder(name, tuple(map(float, position)), reason),
            )
        )
    return out


def _missing_beyond(
    end: str,
    towards: int,
    points: Mapping[str, np.ndarray],
    step_mm: float,
    extent_mm: tuple[float, float],
    last: str,
) -> list[tuple[Finding, Placeholder]]:
    """Levels missing past the chain's ``end`` (``towards`` +1: caudal, -1: cranial) up to ``last``.

    A level counts as missing while its expected position, continuing the chain one
    structure step at a time, lies at least :data:`INSIDE_STEPS` steps inside the scan.
    """
    names = sorted(points, key=_order)
    if len(names) >= 2:
        neighbour = names[-2] if towards > 0 else names[1]
        direction = (points[end] - points[neighbour]) / abs(_order(end) - _order(neighbour))
        direction = direction / max(float(np.linalg.norm(direction)), 1e-9) * step_mm
    else:
        direction = np.array([step_mm, 0.0]) * towards
    rows, cols = extent_mm
    room = (rows - float(points[end][0])) if towards > 0 else float(points[end][0])
    where = "above the end of the scan" if towards > 0 else "below the top of the scan"
    out = []
    levels = anatomy.span(end, last)[1:] if towards > 0 else anatomy.span(last, end)[:-1][::-1]
    for k, name in enumerate(levels, start=1):
        position = points[end] + k * direction
        margin = INSIDE_STEPS * step_mm
        if not (margin <= position[0] <= rows - margin and 0 <= position[1] <= cols):
            break
        reason = f"{name}{_MISSING}: the chain stops {room:.0f} mm {where}"
        out.append(
            (
                Finding(END_UNCERTAINTY, reason, name, headline=True),
                Placeholder(name, tuple(map(float, position)), reason),
            )
        )
    return out


def _above_sacrum(present: Sequence[str]) -> str:
    """The lowest of the ``present`` structures down to L5-S1: L5-S1, or L5 when L5-S1 is marked absent."""
    return max((name for name in present if _order(name) <= _order(anatomy.SACRAL_DISC)), key=_order)


def _apart(upper: str, lower: str, absent: Collection[str]) -> int:
    """Structure steps from ``upper`` down to ``lower`` that the scan holds: levels marked absent are not there."""
    return sum(1 for name in anatomy.span(upper, lower)[1:] if name not in absent)


def _miscounts(
    names: Sequence[str], points: Mapping[str, np.ndarray], step_mm: float, absent: Collection[str] = frozenset()
) -> dict[str, Finding]:
    """Names the count from the sacrum contradicts (lowest named: S1 or right above it), or neighbours off.

    Levels marked ``absent`` are skipped in the count: they take no room in the scan.
    """
    found: dict[str, Finding] = {}
    present = [s.name for s in anatomy.STRUCTURES if s.name not in absent]
    if names[-1] in (SACRUM, _above_sacrum(present)):
        expected = present.index(names[-1])
        for lower, upper in itertools.pairwise(names[::-1]):
            named_apart = _apart(upper, lower, absent)
            expected -= _count(float(np.linalg.norm(points[lower] - points[upper])), step_mm, named_apart)
            if 0 <= expected < len(present) and present[expected] != upper:
                would_be, off = present[expected], _order(upper) - _order(present[expected])
                reason = f"names {_levels(off)} off from the sacrum: {upper} would be {would_be}"
                found[upper] = Finding(MISCOUNT_UNCERTAINTY, reason, upper, headline=True)
        return found
    for upper, lower in itertools.pairwise(names):
        named_apart = _apart(upper, lower, absent)
        fitting = _count(float(np.linalg.norm(points[lower] - points[upper])), step_mm, named_apart)
        if fitting == named_apart:
            continue
        if fitting < named_apart:
            reason = f"{upper} to {lower}: names skip {_levels(named_apart - fitting)} where the spine has none"
        else:
            reason = f"{upper} to {lower}: room for {_levels(fitting - named_apart)} more than named"
        for name in (upper, lower):
            found.setdefault(name, Finding(MISCOUNT_UNCERTAINTY, reason, name, headline=True))
    return found


def check_chain(
    points_mm: Mapping[str, Sequence[float]],
    extent_mm: tuple[float, float],
    prior: SkeletonPrior | None = None,
    top: str | None = None,
    absent: Collection[str] = frozenset(),
) -> Chain:
    """Find missing levels and off-by-one names in a named chain; place the missing levels.

    Parameters
    ----------
    points_mm : mapping of level name -> (row_mm, col_mm)
        In-plane positions on the sagittal display plane (rows S→I from the scan's top edge,
        cols A→P from its front edge), in mm.
    extent_mm : (rows_mm, cols_mm)
        The scan's in-plane size: where the field of view ends.
    prior : SkeletonPrior, optional
        The model card's skeleton: its step when the chain is too short to measure one, and
        its first label as the highest level the model can name (``top`` wins).
    top : str, optional
        The highest level the model knows; levels above the chain are missing only up to it
        (None: the prior's first label, else none are looked for).
    absent : collection of str
        Levels the case's researcher marked as not present in the scan (a sacralised L5 has
        no L5-S1): never missing, so neither flagged nor given a placeholder, and skipped
        when names are counted from the sacrum (then from L5 up).

    Returns
    -------
    Chain
        Case findings (one per missing level, one per miscount), per-point findings (the
        miscounted structures, and the neighbours of missing levels) and a placeholder per
        missing level. Structures out of cranio-caudal order are left to
        :func:`napari_ivd.active.plausibility.implausibility`.

    Example
    -------
    >>> chain = check_chain({"L4": (100, 50), "L4-L5": (117, 50), "L5": (134, 50)}, (220, 120))
    >>> [(p.level, p.position) for p in chain.placeholders]
    [('L5-S1', (151.0, 50.0))]
    >>> chain.case[0].reason
    'L5-S1 missing: the chain stops 86 mm above the end of the scan'
    """
    named = {anatomy.structure(n).name: np.asarray(p, dtype=np.float64)[:2] for n, p in points_mm.items()}
    by_order = sorted(named, key=_order)
    names = [by_order[i] for i in longest_ordered([float(named[n][0]) for n in by_order])]
    if not names:
        return Chain()
    points = {n: named[n] for n in names}
    step_mm = structure_step_mm(points, prior)
    gone = {anatomy.structure(n).name for n in absent}
    missing = [m for a, b in itertools.pairwise(names) for m in _missing_between(a, b, points, step_mm)]
    miscounted: dict[str, Finding] = {}
    unanchored = ""
    if step_mm is not None and step_mm > 0:
        top = top or (prior.labels[0] if prior is not None else None)
        if _order(names[-1]) < _order(anatomy.SACRAL_DISC):
            below = _missing_beyond(names[-1], 1, points, step_mm, extent_mm, anatomy.SACRAL_DISC)
            missing += below
            present = [s.name for s in anatomy.STRUCTURES if s.name not in gone]
            if not below and _order(names[-1]) < _order(_above_sacrum(present)):
                room_mm = float(extent_mm[0] - points[names[-1]][0])
                unanchored = (
                    f"the scan ends {room_mm:.0f} mm below {names[-1]}, above the sacrum: names not counted from it"
                )
        if top is not None and _order(names[0]) > _order(top):
            missing += _missing_beyond(names[0], -1, points, step_mm, extent_mm, top)
        if len(names) >= 2:
            miscounted = _miscounts(names, points, step_mm, gone)
    missing = [(finding, placeholder) for finding, placeholder in missing if placeholder.level not in gone]
    per_point = dict(miscounted)
    for _, placeholder in missing:
        for name in names:
            if abs(_order(name) - _order(placeholder.level)) == 1 and name not in per_point:
                reason = f"{name} next to missing {placeholder.level}"
                per_point[name] = Finding(NEIGHBOUR_UNCERTAINTY, reason, name)
    case = [f for f, _ in missing]
    if unanchored:
        case.append(Finding(UNANCHORED_UNCERTAINTY, unanchored, names[-1], headline=True))
        for name in names:
            reason = f"{name} not counted from the sacrum (the scan ends above it)"
            per_point.setdefault(name, Finding(UNANCHORED_UNCERTAINTY, reason, name))
    if miscounted:  # the lowest miscounted structure: where the miscount starts
        case.append(miscounted[max(miscounted, key=_order)])
    return Chain(tuple(case), per_point, tuple(p for _, p in missing))
