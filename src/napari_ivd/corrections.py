"""Point corrections an annotator makes on proposed discs and vertebrae, and their undo/redo.

Spine labelling goes wrong in a few typical ways: every level is off by one (the most
common error: the count started at the wrong vertebra), one point carries the wrong name,
or a disc was missed so the names below it are shifted. These functions fix each in one
step on an immutable tuple of :class:`~napari_ivd.io.annotations.LabelledPoint` (positions
in voxels of the image), so the widget stays a thin view and every rule is unit-tested
without a viewer. :class:`EditHistory` keeps whole snapshots for undo/redo: a spine has a
few dozen points, so snapshots are cheap and cannot drift out of sync with the layers.

Example
-------
>>> points = (LabelledPoint("L3", (10, 40, 20)), LabelledPoint("L4", (10, 60, 20)))
>>> [p.level for p in shift_levels(points, 1)]
['L4', 'L5']
>>> points, level = insert_disc(points, 0, 1)      # the disc between L3 and L4
>>> level
'L3-L4'
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import replace

import numpy as np

from napari_ivd import anatomy
from napari_ivd.errors import CorrectionError, UnknownLevelError
from napari_ivd.io.annotations import LabelledPoint
from napari_ivd.io.geometry import VolumeGeometry
from napari_ivd.io.volume import iter_slabs

log = logging.getLogger(__name__)

__all__ = [
    "REVIEWED_SCORE",
    "EditHistory",
    "Points",
    "duplicate_levels",
    "insert_disc",
    "level_for_new_point",
    "same_points",
    "set_level",
    "shift_levels",
    "shift_mask_levels",
    "sorted_points",
    "step_level",
]

Points = tuple[LabelledPoint, ...]
#: Score of a point the annotator named or placed by hand: as sure as it gets.
REVIEWED_SCORE = 1.0
#: Level given to the first point of a kind added to an empty spine (mid-lumbar).
_FIRST_LEVEL = {"vertebra": "L3", "disc": "L3-L4"}


def sorted_points(points: Iterable[LabelledPoint]) -> Points:
    """Points in cranio-caudal order of their levels (the order the store and exports use)."""
    return tuple(sorted(points, key=lambda p: anatomy.structure(p.level).order))


def _check_index(points: Sequence[LabelledPoint], index: int) -> None:
    if not 0 <= index < len(points):
        raise CorrectionError(f"no point {index}: there are {len(points)} points")


def shift_levels(points: Sequence[LabelledPoint], steps: int, kinds: Iterable[str] = ("vertebra", "disc")) -> Points:
    """Rename every point ``steps`` levels further caudal (negative: cranial), positions kept.

    The fix for a spine counted from the wrong vertebra: L3 becomes L4, L3-L4 becomes
    L4-L5. Scores are kept, since the detections themselves did not change.

    Parameters
    ----------
    points : sequence of LabelledPoint
    steps : int
        +1 moves every name one level down (L3 -> L4), -1 one level up (L4 -> L3).
    kinds : iterable of {"vertebra", "disc"}
        Which points to rename; the others are kept as they are.

    Raises
    ------
    CorrectionError
        When a point would leave the spine (past C1 or S1); nothing is changed then.
    """
    wanted = set(kinds)
    out = []
    for p in points:
        if p.kind not in wanted:
            out.append(p)
            continue
        try:
            out.append(replace(p, level=anatomy.shift(p.level, steps).name))
        except UnknownLevelError as exc:
            raise CorrectionError(f"cannot shift every level by {steps:+d}: {exc}") from exc
    return tuple(out)


#: Voxels relabelled at a time by :func:`shift_mask_levels` (a label-sized temporary, not a mask-sized one).
_MASK_CHUNK_VOXELS = 1 << 22


def _mask_chunks(mask: np.ndarray) -> Iterator[np.ndarray]:
    return iter_slabs(mask, 0, _MASK_CHUNK_VOXELS)  # Labels layer data is C-ordered


def _present_labels(mask: np.ndarray) -> list[int]:
    if mask.dtype == np.uint8:
        counts = sum(np.bincount(chunk.ravel(), minlength=256) for chunk in _mask_chunks(mask))
        return [int(v) for v in np.flatnonzero(counts)]
    return sorted({int(v) for chunk in _mask_chunks(mask) for v in np.unique(chunk)})


def shift_mask_levels(mask_tss: np.ndarray, steps: int) -> np.ndarray:
    """Relabel, in place, every vertebra and disc of a TotalSpineSeg mask ``steps`` levels caudal.

    The mask's half of :func:`shift_levels`: after both, each point still lies on the mask
    label of its own level (L4's label becomes L5's where L4 became L5). Cord, canal and
    background keep their values. Works on any grid (file or display): only values change.

    Parameters
    ----------
    mask_tss : integer array
        TotalSpineSeg values; changed in place.
    steps : int
        +1 moves every label one level down (L3 -> L4), -1 one level up.

    Returns
    -------
    The same array, relabelled.

    Raises
    ------
    CorrectionError
        When a labelled structure would leave the spine or become one TotalSpineSeg has no
        value for (C1-C2), or the mask holds values that are not TotalSpineSeg's; the mask
        is not changed then.
    """
    if steps == 0:
        return mask_tss
    present = _present_labels(mask_tss)
    table = np.arange(max(present, default=0) + 1, dtype=mask_tss.dtype)
    for value in present:
        if value in (0, anatomy.TSS_CORD, anatomy.TSS_CANAL):
            continue
        try:
            source = anatomy.from_tss(value)
            target = anatomy.shift(source, steps)
        except UnknownLevelError as exc:
            raise CorrectionError(
                f"cannot shift every level by {steps:+d}: the mask labels value {value} ({exc}); "
                "erase that label from the mask first"
            ) from exc
        if target.tss_value is None:
            raise CorrectionError(
                f"cannot shift every level by {steps:+d}: the mask's {source.name} would become {target.name}, "
                "which TotalSpineSeg masks do not label; erase it from the mask first"
            )
        table[value] = target.tss_value
    for chunk in _mask_chunks(mask_tss):
        chunk[...] = table[chunk]
    log.debug("mask relabelled %+d level(s): %s", steps, {v: int(table[v]) for v in present if table[v] != v})
    return mask_tss


def set_level(points: Sequence[LabelledPoint], index: int, level: str) -> Points:
    """Give point ``index`` another level of the same kind; it counts as reviewed (score 1).

    Another point may hold the same level meanwhile (renaming points one after the other
    passes through such states); :func:`duplicate_levels` finds them before saving.

    Raises
    ------
    CorrectionError
        No such point, or ``level`` is of the other kind (a disc cannot become a vertebra).
    UnknownLevelError
        ``level`` is not a known name.
    """
    _check_index(points, index)
    target = anatomy.structure(level)
    point = points[index]
    if target.kind != point.kind:
        raise CorrectionError(
            f"{point.level} is a {point.kind}; {target.name} is a {target.kind}. "
            f"Delete the point and add it on the {anatomy.KIND_PLURAL[target.kind]} layer instead"
        )
    out = list(points)
    out[index] = replace(point, level=target.name, score=REVIEWED_SCORE)
    return tuple(out)


def step_level(points: Sequence[LabelledPoint], index: int, steps: int) -> Points:
    """Move one point's name ``steps`` levels caudal (negative: cranial): the keyboard fix.

    Raises
    ------
    CorrectionError
        No such point, or the new level would leave the spine.
    """
    _check_index(points, index)
    try:
        level = anatomy.shift(points[index].level, steps).name
    except UnknownLevelError as exc:
        raise CorrectionError(str(exc)) from exc
    return set_level(points, index, level)


def insert_disc(points: Sequence[LabelledPoint], first: int, second: int) -> tuple[Points, str]:
    """Add the disc missing between two neighbouring points, named, half-way between them.

    - Two neighbouring vertebrae (L3, L4): adds their disc (L3-L4).
    - Two discs one level apart (L2-L3, L4-L5): adds the one between (L3-L4).
    - Two discs named as consecutive (L2-L3, L3-L4) although a disc lies between them:
      the upper one keeps its name, the new disc takes the lower one's name and the lower
      disc and every disc below it move one level down (the missed disc shifted them).

    Parameters
    ----------
    points : sequence of LabelledPoint
    first, second : int
        Indices of the two selected points, in any order.

    Returns
    -------
    points : tuple of LabelledPoint
        The corrected points, the new disc last.
    level : str
        The new disc's level.

    Raises
    ------
    CorrectionError
        Not two distinct points of the same kind, not neighbours, the disc exists
        already, or renaming the discs below would run past L5-S1.
    """
    for index in (first, second):
        _check_index(points, index)
    if first == second:
        raise CorrectionError("select two different points to insert a disc between them")
    a, b = sorted((points[first], points[second]), key=lambda p: anatomy.structure(p.level).order)
    midpoint = tuple(float(v) for v in (np.asarray(a.ijk_vox) + np.asarray(b.ijk_vox)) / 2)
    levels = {p.level for p in points}
    out = list(points)
    if a.kind == b.kind == "vertebra":
        try:
            level = anatomy.disc_between(a.level, b.level).name
        except UnknownLevelError as exc:
            raise CorrectionError(f"cannot insert a disc: {exc}") from exc
    elif a.kind == b.kind == "disc":
        gap = anatomy.DISCS.index(anatomy.structure(b.level)) - anatomy.DISCS.index(anatomy.structure(a.level))
        if gap == 2:
            level = anatomy.shift(a.level, 1).name
        elif gap == 1:
            level = b.level
            below = anatomy.structure(b.level).order
            try:
                out = [
                    replace(p, level=anatomy.shift(p.level, 1).name)
                    if p.kind == "disc" and anatomy.structure(p.level).order >= below
                    else p
                    for p in points
                ]
            except UnknownLevelError as exc:
                raise CorrectionError(
                    f"inserting a disc above {b.level} renames the discs below it one level down, "
                    f"which runs past the last disc ({exc}); shift every level up first"
                ) from exc
            levels = {p.level for p in out}
        else:
            raise CorrectionError(
                f"{a.level} and {b.level} are not neighbours; select two discs with at most one disc missing between"
            )
    else:
        raise CorrectionError(
            f"select two vertebrae or two discs to insert a disc between them (got {a.level} and {b.level})"
        )
    if level in levels:
        raise CorrectionError(f"disc {level} exists already; move it instead of inserting another")
    out.append(LabelledPoint(level, midpoint, REVIEWED_SCORE))  # type: ignore[arg-type]
    log.debug("inserted %s between %s and %s", level, a.level, b.level)
    return tuple(out), level


def _height_mm(points: Iterable[LabelledPoint], geometry: VolumeGeometry) -> np.ndarray:
    ijk = np.array([p.ijk_vox for p in points], float).reshape(-1, 3)
    return geometry.vox_to_mm(ijk)[:, 2] if len(ijk) else np.zeros(0)  # RAS z: superior is larger


def level_for_new_point(
    points: Sequence[LabelledPoint], ijk_vox: Sequence[float], kind: str, geometry: VolumeGeometry
) -> str:
    """The level a point added at ``ijk_vox`` most likely has, from its neighbours of the same kind by height.

    Between two named neighbours it takes the first free level between them (if none is
    free, the level just below the upper neighbour: :func:`duplicate_levels` flags it).
    Above every point it takes the level above the highest one, below every point the
    level below the lowest; on an empty spine a mid-lumbar level. Height is the scanner's
    superior axis, so this holds in any file orientation.

    Parameters
    ----------
    points : the existing points (the new one not included).
    ijk_vox : (3,) voxel position of the new point.
    kind : "vertebra" or "disc".
    geometry : the image's grid.
    """
    same = [p for p in points if p.kind == kind]
    if not same:
        return _FIRST_LEVEL[kind]
    heights = _height_mm(same, geometry)
    z = float(geometry.vox_to_mm(np.asarray(ijk_vox, float)[None])[0, 2])
    above = [p for p, h in zip(same, heights, strict=True) if h > z]
    below = [p for p, h in zip(same, heights, strict=True) if h <= z]
    order = {p.level: anatomy.structure(p.level).order for p in same}
    sequence = anatomy.VERTEBRAE if kind == "vertebra" else anatomy.DISCS
    names = [s.name for s in sequence]
    used = set(order)
    if above:
        upper = max(above, key=lambda p: order[p.level])  # the lowest point above
        start = names.index(upper.level) + 1
        stop = names.index(min(below, key=lambda p: order[p.level]).level) if below else len(names)
        free = [n for n in names[start:stop] if n not in used]
        if free:
            return free[0]
        return names[min(start, len(names) - 1)]
    lower = min(below, key=lambda p: order[p.level])  # the highest point below
    return names[max(names.index(lower.level) - 1, 0)]


def duplicate_levels(points: Iterable[LabelledPoint]) -> list[str]:
    """Levels given to more than one point, cranio-caudal; the store refuses to save those."""
    seen: dict[str, int] = {}
    for p in points:
        seen[p.level] = seen.get(p.level, 0) + 1
    return [n for n in sorted(seen, key=lambda n: anatomy.structure(n).order) if seen[n] > 1]


def same_points(a: Iterable[LabelledPoint], b: Iterable[LabelledPoint], tol_vox: float = 1e-3) -> bool:
    """True when two point sets hold the same levels at the same positions (order ignored)."""
    first, second = sorted_points(a), sorted_points(b)
    if [p.level for p in first] != [p.level for p in second]:
        return False
    return all(
        np.allclose(p.ijk_vox, q.ijk_vox, atol=tol_vox) and abs(p.score - q.score) <= 1e-6
        for p, q in zip(first, second, strict=True)
    )


class EditHistory:
    """Undo/redo over snapshots of the points, and of how far the mask's levels were shifted.

    Every edit records the points after it. A drag reports many small moves; records
    sharing a ``merge_key`` within ``merge_window_s`` of each other replace the last
    snapshot instead of adding one, so one drag is one undo step. Each snapshot also
    keeps ``mask_shift``, the levels the mask was relabelled by so far (see
    :func:`shift_mask_levels`): stepping to a snapshot with another value tells the
    caller to relabel the mask by the difference, so undoing *All levels* restores both.
    Each snapshot keeps ``absent`` too, the levels marked not present in the scan, so marking
    one is undone like any point edit.

    Example
    -------
    >>> history = EditHistory(points)
    >>> history.record(shift_levels(points, 1), mask_shift=1)
    >>> history.undo() == points, history.mask_shift
    (True, 0)
    """

    def __init__(self, initial: Sequence[LabelledPoint] = (), limit: int = 500, merge_window_s: float = 1.0) -> None:
        self.limit = limit
        self.merge_window_s = merge_window_s
        self.reset(initial)

    def reset(self, points: Sequence[LabelledPoint], absent: frozenset[str] = frozenset()) -> None:
        """Start over from ``points`` and ``absent`` (a case just opened): no undo or redo, mask unshifted."""
        self._undo: list[tuple[Points, int, frozenset[str]]] = [(tuple(points), 0, frozenset(absent))]
        self._redo: list[tuple[Points, int, frozenset[str]]] = []
        self._last_key: Hashable | None = None
        self._last_time = -np.inf

    @property
    def current(self) -> Points:
        """The points after the last recorded (or undone/redone) edit."""
        return self._undo[-1][0]

    @property
    def mask_shift(self) -> int:
        """Levels the mask is shifted by (caudal positive) after the last recorded (or undone/redone) edit."""
        return self._undo[-1][1]

    @property
    def absent(self) -> frozenset[str]:
        """Levels marked not present in the scan after the last recorded (or undone/redone) edit."""
        return self._undo[-1][2]

    @property
    def can_undo(self) -> bool:
        """True when there is an edit to undo."""
        return len(self._undo) > 1

    @property
    def can_redo(self) -> bool:
        """True when there is an undone edit to redo."""
        return bool(self._redo)

    def record(
        self,
        points: Sequence[LabelledPoint],
        merge_key: Hashable | None = None,
        now: float | None = None,
        mask_shift: int | None = None,
        absent: frozenset[str] | None = None,
    ) -> bool:
        """Record the points after an edit; returns False when nothing changed.

        Parameters
        ----------
        points : the state after the edit.
        merge_key : hashable, optional
            Edits with the same key within ``merge_window_s`` merge into one undo step.
        now : float, optional
            Monotonic time in seconds (default: :func:`time.monotonic`), for tests.
        mask_shift : int, optional
            The mask's level shift after the edit (default: unchanged).
        absent : frozenset of str, optional
            The levels marked not present after the edit (default: unchanged).
        """
        snapshot = (
            tuple(points),
            self.mask_shift if mask_shift is None else int(mask_shift),
            self.absent if absent is None else frozenset(absent),
        )
        if snapshot == self._undo[-1]:
            return False
        now = time.monotonic() if now is None else now
        merge = (
            merge_key is not None
            and merge_key == self._last_key
            and now - self._last_time <= self.merge_window_s
            and self.can_undo
        )
        if merge:
            self._undo[-1] = snapshot
        else:
            self._undo.append(snapshot)
            if len(self._undo) > self.limit + 1:
                del self._undo[0]
        self._redo.clear()
        self._last_key, self._last_time = merge_key, now
        return True

    def undo(self) -> Points | None:
        """Step back one edit; returns the points to show, or None when there is nothing to undo."""
        if not self.can_undo:
            return None
        self._redo.append(self._undo.pop())
        self._last_key = None
        return self.current

    def redo(self) -> Points | None:
        """Re-apply the last undone edit; returns the points to show, or None."""
        if not self._redo:
            return None
        self._undo.append(self._redo.pop())
        self._last_key = None
        return self.current
