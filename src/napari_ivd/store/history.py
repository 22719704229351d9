"""What changed between two revisions: points moved/added/removed (mm), levels marked absent, voxels per structure.

An annotator reviewing a colleague's correction, or a lab auditing what a model's
proposal turned into, asks these two questions; the answer is computed from the two
annotations alone, so it works for any pair of revisions (or a proposal and a revision).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from napari_ivd import anatomy
from napari_ivd.store.records import Annotation

log = logging.getLogger(__name__)

__all__ = ["PointChange", "RevisionDiff", "StructureChange", "diff_annotations"]


@dataclass(frozen=True)
class PointChange:
    """One level's point in two revisions.

    ``change`` is ``"added"``, ``"removed"``, ``"moved"`` or ``"unchanged"``; positions are
    scanner RAS mm; ``distance_mm`` is the move (None when added or removed).
    """

    level: str
    kind: str
    change: str
    old_mm: tuple[float, float, float] | None
    new_mm: tuple[float, float, float] | None
    distance_mm: float | None


@dataclass(frozen=True)
class StructureChange:
    """Voxels that one mask value gained and lost between two revisions."""

    value: int
    name: str
    gained_vox: int
    lost_vox: int

    @property
    def changed_vox(self) -> int:
        """Voxels whose membership in this structure changed."""
        return self.gained_vox + self.lost_vox


@dataclass(frozen=True)
class RevisionDiff:
    """The difference from revision ``a`` to revision ``b`` of a case.

    ``now_absent`` are the levels ``b`` marks absent (not present in the scan) and ``a`` did
    not; ``no_longer_absent`` those ``a`` marked and ``b`` does not; both cranio-caudal.
    """

    case_id: str
    a: str | None
    b: str | None
    points: tuple[PointChange, ...]
    structures: tuple[StructureChange, ...]
    voxels_changed: int
    now_absent: tuple[str, ...] = ()
    no_longer_absent: tuple[str, ...] = ()

    def changed_points(self, change: str) -> list[PointChange]:
        """Points with the given change (``"moved"``, ``"added"``, ``"removed"``, ``"unchanged"``)."""
        return [p for p in self.points if p.change == change]

    def format(self) -> str:
        """A short readable report."""
        lines = [f"case {self.case_id}: {self.a} -> {self.b}"]
        for p in self.points:
            if p.change == "moved":
                lines.append(f"  {p.level:8s} moved {p.distance_mm:.2f} mm")
            elif p.change != "unchanged":
                lines.append(f"  {p.level:8s} {p.change}")
        if not any(p.change != "unchanged" for p in self.points):
            lines.append("  points: unchanged")
        lines += [f"  {level:8s} marked absent" for level in self.now_absent]
        lines += [f"  {level:8s} no longer absent" for level in self.no_longer_absent]
        lines.append(f"  mask: {self.voxels_changed} voxel(s) changed")
        lines += [f"  {s.name:14s} +{s.gained_vox} / -{s.lost_vox} voxels" for s in self.structures]
        return "\n".join(lines)


def _as_tuple(xyz: np.ndarray) -> tuple[float, float, float]:
    return (float(xyz[0]), float(xyz[1]), float(xyz[2]))


def _cranio_caudal(levels: set[str]) -> tuple[str, ...]:
    return tuple(sorted(levels, key=lambda n: anatomy.structure(n).order))


def diff_annotations(a: Annotation, b: Annotation) -> RevisionDiff:
    """Compare two annotations of the same case.

    Parameters
    ----------
    a, b : Annotation
        The older and the newer state (from :meth:`AnnotationStore.load`).

    Returns
    -------
    RevisionDiff
        Per level: added / removed / moved (with the distance in mm) / unchanged; the levels
        newly marked absent and those no longer absent; per mask value: voxels gained and
        lost; the total of voxels whose value changed. A missing mask counts as all background.
    """
    old, new = a.points_mm(), b.points_mm()
    changes = []
    for level in _cranio_caudal(set(old) | set(new)):
        kind = anatomy.structure(level).kind
        if level not in new:
            changes.append(PointChange(level, kind, "removed", _as_tuple(old[level]), None, None))
        elif level not in old:
            changes.append(PointChange(level, kind, "added", None, _as_tuple(new[level]), None))
        else:
            distance = float(np.linalg.norm(new[level] - old[level]))
            change = "moved" if distance > 0 else "unchanged"
            changes.append(PointChange(level, kind, change, _as_tuple(old[level]), _as_tuple(new[level]), distance))
    structures: list[StructureChange] = []
    total = 0
    if a.mask_tss is not None or b.mask_tss is not None:
        shape = a.geometry.shape
        ma = a.mask_tss if a.mask_tss is not None else np.zeros(shape, np.uint8)
        mb = b.mask_tss if b.mask_tss is not None else np.zeros(shape, np.uint8)
        where = ma != mb
        total = int(np.count_nonzero(where))
        lost = np.bincount(ma[where], minlength=256)
        gained = np.bincount(mb[where], minlength=256)
        names = anatomy.tss_names()
        for value in np.flatnonzero(lost + gained):
            if value == 0:
                continue
            name = names.get(int(value), f"value {value}")
            structures.append(StructureChange(int(value), name, int(gained[value]), int(lost[value])))

    now_absent, no_longer_absent = (
        _cranio_caudal(set(b.absent) - set(a.absent)),
        _cranio_caudal(set(a.absent) - set(b.absent)),
    )
    return RevisionDiff(
        a.case_id, a.entry_id, b.entry_id, tuple(changes), tuple(structures), total, now_absent, no_longer_absent
    )
