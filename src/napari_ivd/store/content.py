"""What a revision holds, checked and encoded: named points, a TotalSpineSeg mask, digests.

Pure functions, no I/O: the store calls them on every input before anything is written,
so a bad point or mask is refused with a message naming the case and the fix, and the
store stays as it was. Digests are sha256 over canonical bytes so that ``check`` can
recompute them years later with nothing but numpy and json.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_ivd import anatomy
from napari_ivd.errors import GeometryMismatchError, StoreError
from napari_ivd.io.annotations import LabelledPoint
from napari_ivd.io.geometry import VolumeGeometry

log = logging.getLogger(__name__)

__all__ = [
    "TSS_VALUES",
    "canonical_json",
    "check_absent",
    "check_mask_values",
    "check_points",
    "file_sha256",
    "image_sha256",
    "mask_sha256",
    "points_from_table",
    "points_table",
    "prepare_mask",
    "sha256_hex",
]

#: Every value a TotalSpineSeg mask may hold (0 = background).
TSS_VALUES: frozenset[int] = frozenset({0, *anatomy.tss_names()})
_ALLOWED = np.zeros(256, dtype=bool)
_ALLOWED[sorted(TSS_VALUES)] = True


def sha256_hex(data: bytes | memoryview) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str | None:
    """Hex sha256 of a file's bytes, or None when it is not a file (e.g. a DICOM folder)."""
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def canonical_json(obj: Any) -> bytes:
    """JSON with sorted keys and no spaces: the bytes every record digest is taken over."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def image_sha256(array: np.ndarray) -> str:
    """Digest of a scan's voxels: dtype, shape and little-endian C-order bytes.

    It identifies the *image*, not its file: a NIfTI re-saved with another header or
    compression keeps its digest, a resampled or edited one does not. The store refuses to
    attach annotations to a case whose image digest differs.
    """
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    head = f"{data.dtype.str}|{','.join(map(str, data.shape))}|".encode()
    digest = hashlib.sha256(head)
    digest.update(memoryview(data).cast("B"))
    return digest.hexdigest()


def mask_sha256(mask: np.ndarray) -> str:
    """Digest of a uint8 mask's C-order bytes (shape included)."""
    return image_sha256(np.ascontiguousarray(mask, dtype=np.uint8))


def check_points(points: Iterable[LabelledPoint], geometry: VolumeGeometry, where: str) -> tuple[LabelledPoint, ...]:
    """Validate named points against an image grid; return them canonical and cranio-caudal.

    Parameters
    ----------
    points : iterable of LabelledPoint
        Levels in any accepted spelling, ``ijk_vox`` fractional voxel indices of the image.
    geometry : VolumeGeometry
        The image's grid.
    where : str
        Case name for messages.

    Raises
    ------
    UnknownLevelError
        A level the anatomy vocabulary does not know.
    GeometryMismatchError
        A point outside the image (more than half a voxel beyond its first/last voxel).
    StoreError
        A level given twice, or a non-finite coordinate or score.
    """
    out: dict[str, LabelledPoint] = {}
    upper = np.asarray(geometry.shape, dtype=np.float64) - 0.5
    for p in points:
        s = anatomy.structure(p.level)
        ijk = tuple(float(v) for v in p.ijk_vox)
        if len(ijk) != 3 or not all(math.isfinite(v) for v in ijk) or not math.isfinite(float(p.score)):
            raise StoreError(f"{where}: point {s.name} has a non-finite position {ijk} or score {p.score}")
        if any(v < -0.5 or v > u for v, u in zip(ijk, upper, strict=True)):
            raise GeometryMismatchError(
                f"{where}: point {s.name} at voxel {tuple(round(v, 2) for v in ijk)} lies outside the image "
                f"(shape {geometry.shape}); the points belong to another image or grid"
            )
        if s.name in out:
            raise StoreError(f"{where}: {s.name} is given twice; keep one point per level")
        out[s.name] = LabelledPoint(s.name, ijk, float(p.score))  # type: ignore[arg-type]
    return tuple(sorted(out.values(), key=lambda p: anatomy.structure(p.level).order))


def check_absent(absent: Iterable[str], points: Sequence[LabelledPoint], where: str) -> tuple[str, ...]:
    """Validate the levels a revision marks absent (not present in the scan); return them canonical, cranio-caudal.

    A level is either annotated (a point) or absent, never both: the store does not guess
    which one the caller meant (the annotator resolves it by the latest edit).

    Raises
    ------
    UnknownLevelError
        A level the anatomy vocabulary does not know.
    StoreError
        A level that is also one of ``points``.
    """
    names = {anatomy.structure(name).name for name in absent}
    both = sorted(names & {p.level for p in points}, key=lambda n: anatomy.structure(n).order)
    if both:
        raise StoreError(
            f"{where}: {', '.join(both)} has a point and is marked absent; a level is either annotated or "
            "absent: delete the point or unmark the level"
        )
    return tuple(sorted(names, key=lambda n: anatomy.structure(n).order))


def points_table(points: Sequence[LabelledPoint], geometry: VolumeGeometry) -> dict[str, list[Any]]:
    """Checked points as the JSON table stored in a record (voxel and mm positions)."""
    ijk = np.asarray([p.ijk_vox for p in points], dtype=np.float64).reshape(-1, 3)
    xyz = geometry.vox_to_mm(ijk) if len(points) else np.zeros((0, 3))
    return {
        "level": [p.level for p in points],
        "kind": [p.kind for p in points],
        "ijk_vox": [[float(v) for v in row] for row in ijk],
        "xyz_mm": [[float(v) for v in row] for row in xyz],
        "score": [float(p.score) for p in points],
    }


def points_from_table(table: dict[str, list[Any]]) -> tuple[LabelledPoint, ...]:
    """Inverse of :func:`points_table` (voxel positions are authoritative)."""
    return tuple(
        LabelledPoint(level, tuple(float(v) for v in ijk), float(score))  # type: ignore[arg-type]
        for level, ijk, score in zip(table["level"], table["ijk_vox"], table["score"], strict=True)
    )


def prepare_mask(mask: np.ndarray, geometry: VolumeGeometry, where: str) -> np.ndarray:
    """A mask as C-contiguous uint8 on the image grid, its value range checked.

    The value *set* is checked by :func:`check_mask_values`, only where the mask changed.

    Raises
    ------
    GeometryMismatchError
        The mask's shape is not the image's.
    StoreError
        Not an integer array, or values outside 0..255.
    """
    mask = np.asarray(mask)
    if mask.shape != geometry.shape:
        raise GeometryMismatchError(
            f"{where}: mask shape {mask.shape} differs from the image's {geometry.shape}; "
            "masks must lie on the image's own voxel grid"
        )
    if not np.issubdtype(mask.dtype, np.integer):
        raise StoreError(f"{where}: mask dtype {mask.dtype} is not integer; give TotalSpineSeg label values")
    if mask.dtype != np.uint8 and mask.size:
        low, high = int(mask.min()), int(mask.max())
        if low < 0 or high > 255:
            raise StoreError(f"{where}: mask values {low}..{high} are no TotalSpineSeg values (0..100)")
    return np.ascontiguousarray(mask, dtype=np.uint8)


def check_mask_values(mask: np.ndarray, where: str, region: tuple[slice, ...] | None = None) -> None:
    """Raise unless every value of ``mask[region]`` is a TotalSpineSeg value.

    Raises
    ------
    StoreError
        Naming the unknown values and the valid ones.
    """
    part = mask if region is None else mask[region]
    if _ALLOWED[part].all():
        return
    bad = sorted(int(v) for v in np.unique(part) if not _ALLOWED[v])
    raise StoreError(
        f"{where}: mask values {bad[:10]} are no TotalSpineSeg values (cord 1, canal 2, vertebrae 11–50, "
        "discs 63–100); convert the labels to TotalSpineSeg values first"
    )
