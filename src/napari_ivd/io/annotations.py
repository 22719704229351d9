"""Annotation files on an image's own grid: ``points.csv``, SCT disc labels, TotalSpineSeg masks.

These are the files ``napari-ivd predict`` writes and ``evaluate``/``import`` read, so a
prediction, an export and an existing SCT annotation are interchangeable. SCT point files
come in two kinds: disc labels (value = the vertebra below the disc, L5-S1 = 25) and
vertebral-level labels (value N = vertebral body N, L1 = 20).

``points.csv`` columns: ``kind`` (disc | vertebra), ``level`` (L4-L5, L3 ...), ``i,j,k``
(fractional voxel indices of the image), ``x_mm,y_mm,z_mm`` (scanner RAS mm), ``score``.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_ivd import anatomy
from napari_ivd.errors import GeometryMismatchError, UnreadableFileError
from napari_ivd.io.geometry import VolumeGeometry
from napari_ivd.io.nifti import read_nifti, write_nifti

POINTS_COLUMNS: tuple[str, ...] = ("kind", "level", "i", "j", "k", "x_mm", "y_mm", "z_mm", "score")


@dataclass(frozen=True)
class LabelledPoint:
    """One named structure at a voxel position of a given image."""

    level: str
    ijk_vox: tuple[float, float, float]
    score: float = 1.0

    @property
    def kind(self) -> str:
        """``"disc"`` or ``"vertebra"``."""
        return anatomy.structure(self.level).kind


def write_points_csv(path: Path, points: Iterable[LabelledPoint], geometry: VolumeGeometry) -> Path:
    """Write points in cranio-caudal order with voxel and scanner coordinates."""
    rows = sorted(points, key=lambda p: anatomy.structure(p.level).order)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(POINTS_COLUMNS)
        for p in rows:
            xyz = geometry.vox_to_mm(np.asarray(p.ijk_vox)[None])[0]
            writer.writerow(
                [p.kind, p.level, *(f"{v:.3f}" for v in p.ijk_vox), *(f"{v:.3f}" for v in xyz), f"{p.score:.4f}"]
            )
    return path


def read_points_csv(path: Path) -> list[LabelledPoint]:
    """Read a ``points.csv`` as ``predict`` writes it (voxel columns are authoritative).

    Raises
    ------
    UnreadableFileError
        Missing columns or non-numeric coordinates.
    UnknownLevelError
        A level name the anatomy vocabulary does not know.
    """
    with Path(path).open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"level", "i", "j", "k"} - set(reader.fieldnames or ())
        if missing:
            raise UnreadableFileError(f"{path}: not a napari-ivd points file; missing columns {sorted(missing)}")
        points = []
        for line, row in enumerate(reader, start=2):
            try:
                ijk = (float(row["i"]), float(row["j"]), float(row["k"]))
                score = float(row.get("score") or 1.0)
            except ValueError as exc:
                raise UnreadableFileError(f"{path}, line {line}: {exc}") from exc
            points.append(LabelledPoint(anatomy.structure(row["level"]).name, ijk, score))
    return points


def _write_point_labels(
    path: Path, points: Iterable[LabelledPoint], geometry: VolumeGeometry, kind: str, like: Path | None
) -> Path:
    """One voxel per point of ``kind`` (nearest voxel inside the grid), valued with its SCT value."""
    data = np.zeros(geometry.shape, np.uint8)
    for p in points:
        s = anatomy.structure(p.level)
        if s.kind == kind:
            ijk = np.clip(np.round(p.ijk_vox).astype(int), 0, np.array(geometry.shape) - 1)
            data[tuple(ijk)] = s.sct_value
    return write_nifti(path, data, geometry, like=like)


def _read_point_labels(
    path: Path, geometry: VolumeGeometry | None, lookup: Callable[[int], anatomy.Structure]
) -> list[LabelledPoint]:
    """A point at the centre of each label value's voxels, named through ``lookup``."""
    labels = _read_label_volume(path, geometry)
    points = []
    for value in (int(v) for v in np.unique(labels) if v):
        ijk = np.argwhere(labels == value).mean(axis=0)
        points.append(LabelledPoint(lookup(value).name, tuple(float(v) for v in ijk)))
    return points


def write_sct_discs(
    path: Path, points: Iterable[LabelledPoint], geometry: VolumeGeometry, like: Path | None = None
) -> Path:
    """Write discs as SCT disc labels: one voxel per disc, value = SCT disc value (L5-S1 = 25)."""
    return _write_point_labels(path, points, geometry, "disc", like)


def read_sct_discs(path: Path, geometry: VolumeGeometry | None = None) -> list[LabelledPoint]:
    """Disc points from an SCT disc-label NIfTI (centre of each value's voxels).

    Raises
    ------
    GeometryMismatchError
        If ``geometry`` is given and the label file lies on another grid.
    UnknownLevelError
        A value that is no SCT disc label.
    """
    return _read_point_labels(path, geometry, anatomy.from_sct_disc)


def write_sct_levels(
    path: Path, points: Iterable[LabelledPoint], geometry: VolumeGeometry, like: Path | None = None
) -> Path:
    """Write vertebrae as SCT vertebral-level points: one voxel per vertebra, value N = vertebral body N.

    The counterpart of :func:`write_sct_discs` for vertebra points (C1 = 1 ... L5 = 24,
    S1 = 25), the form SCT's ``sct_label_utils`` writes for manual level labels.
    """
    return _write_point_labels(path, points, geometry, "vertebra", like)


def read_sct_levels(path: Path, geometry: VolumeGeometry | None = None) -> list[LabelledPoint]:
    """Vertebra points from an SCT vertebral-level NIfTI (centre of each value's voxels).

    Value N names vertebral body N (C1 = 1 ... T1 = 8 ... L1 = 20 ... L5 = 24, S1 = 25), as
    in SCT's ``labels.nii.gz``; use :func:`read_sct_discs` for disc labels instead.

    Raises
    ------
    GeometryMismatchError
        If ``geometry`` is given and the label file lies on another grid.
    UnknownLevelError
        A value that is no SCT vertebral level.
    """
    return _read_point_labels(path, geometry, anatomy.from_sct_level)


def label_centroids(
    labels: np.ndarray, values: Iterable[int], axes: Iterable[int] | None = None
) -> dict[int, np.ndarray]:
    """Mean voxel index of each of the positive ``values`` present in a non-negative integer label volume.

    Only the coordinates along ``axes`` (default: all) are computed, the others are NaN.
    Sums the labelled voxels' indices per value with ``np.bincount``: about 60x faster than
    ``scipy.ndimage.center_of_mass`` on a 381x381x77 mask, which matters on the prediction path.
    """
    labels = np.asarray(labels)
    axes = tuple(range(labels.ndim)) if axes is None else tuple(axes)
    where = np.flatnonzero(labels)
    found = labels.ravel()[where]
    totals = np.bincount(found)
    index = np.unravel_index(where, labels.shape)
    sums = {a: np.bincount(found, weights=index[a], minlength=totals.size) for a in axes}
    centroids = {}
    for value in values:
        if 0 < value < totals.size and totals[value]:
            centroid = np.full(labels.ndim, np.nan)
            for a in axes:
                centroid[a] = sums[a][value] / totals[value]
            centroids[value] = centroid
    return centroids


def points_from_tss_mask(mask_tss: np.ndarray, kinds: Iterable[str] = ("vertebra",)) -> list[LabelledPoint]:
    """Centroids of the structures of the given kinds in a TotalSpineSeg mask."""
    wanted = set(kinds)
    values = [v for v in anatomy.tss_names() if v > anatomy.TSS_CANAL and anatomy.from_tss(v).kind in wanted]
    centres = label_centroids(mask_tss, values)
    return [LabelledPoint(anatomy.from_tss(v).name, tuple(float(c) for c in centres[v])) for v in sorted(centres)]


def points_mm(points: Iterable[LabelledPoint], geometry: VolumeGeometry) -> dict[str, np.ndarray]:
    """Scanner positions (RAS mm) of points, keyed by level: the form the metrics compare."""
    return {p.level: geometry.vox_to_mm(np.asarray(p.ijk_vox)[None])[0] for p in points}


def read_tss_mask(path: Path, geometry: VolumeGeometry | None = None) -> np.ndarray:
    """A TotalSpineSeg mask (uint8) on its file grid, checked against ``geometry`` if given."""
    return _read_label_volume(path, geometry)


def _read_label_volume(path: Path, geometry: VolumeGeometry | None) -> np.ndarray:
    volume = read_nifti(path)
    if geometry is not None and volume.geometry != geometry:
        raise GeometryMismatchError(
            f"{path}: its grid {volume.geometry.shape} ({''.join(volume.geometry.axcodes)}) is not the image's "
            f"{geometry.shape} ({''.join(geometry.axcodes)}); annotations must lie on the image's voxel grid"
        )
    data = volume.array
    if np.issubdtype(data.dtype, np.floating):
        data = np.round(data)
    if data.size and (data.min() < 0 or data.max() > 255):
        raise UnreadableFileError(
            f"{path}: label values {data.min():g}..{data.max():g} do not fit 0..255; "
            "expected SCT point labels or TotalSpineSeg values"
        )
    return data.astype(np.uint8)


MASK_NAMES: tuple[str, ...] = ("mask_tss.nii.gz", "mask.nii.gz")


def find_annotations(case_dir: Path, geometry: VolumeGeometry) -> tuple[list[LabelledPoint], np.ndarray | None]:
    """The ground truth stored in a case folder, on ``geometry``'s grid.

    Points come from ``points.csv`` when present; otherwise discs from SCT disc-label files
    (``*disc*.nii.gz``) and vertebrae from the centroids of a TotalSpineSeg mask
    (``mask_tss.nii.gz`` or ``mask.nii.gz``), which is also returned as the mask.
    """
    mask_path = next((case_dir / n for n in MASK_NAMES if (case_dir / n).is_file()), None)
    mask = read_tss_mask(mask_path, geometry) if mask_path else None
    if (case_dir / "points.csv").is_file():
        return read_points_csv(case_dir / "points.csv"), mask
    points = [p for f in sorted(case_dir.glob("*disc*.nii*")) for p in read_sct_discs(f, geometry)]
    if mask is not None:
        points += points_from_tss_mask(mask, kinds=("vertebra",))
    return points, mask
