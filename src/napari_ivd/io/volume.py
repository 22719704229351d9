"""The in-memory volume every reader returns, and the checks every reader shares."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from napari_ivd.errors import IvdWarning, UnsupportedScanError
from napari_ivd.io.geometry import SagittalView, VolumeGeometry

NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")


def nifti_stem(path: str | Path) -> str:
    """File name without a ``.nii``/``.nii.gz`` suffix (any case): the name layers and cases take."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D scan as stored in its file: voxels on the file's own grid, plus where they lie.

    Parameters
    ----------
    array : (I, J, K) array
        Intensities on the file's voxel grid (not reordered).
    geometry : VolumeGeometry
        The file's voxel -> scanner mm mapping.
    path : Path
        The file or DICOM folder it was read from.
    """

    array: np.ndarray
    geometry: VolumeGeometry
    path: Path

    @property
    def view(self) -> SagittalView:
        """The sagittal display of this volume."""
        return SagittalView(self.geometry)

    @property
    def name(self) -> str:
        """File name without NIfTI suffixes, for layer names and case ids."""
        return nifti_stem(self.path)


#: Voxels checked at a time for NaN/Inf: a boolean mask of the whole volume would cost a quarter of a float32 copy.
_CHUNK_VOXELS = 1 << 24


def iter_slabs(array: np.ndarray, axis: int, max_voxels: int) -> Iterator[np.ndarray]:
    """Views of ``array`` in slabs along ``axis`` of at most about ``max_voxels`` voxels each (at least one plane).

    For whole-volume work (counts, relabelling) without whole-volume temporaries; slab
    along the array's slowest axis (the last for nibabel's Fortran order) to keep each contiguous.
    """
    plane = math.prod(n for i, n in enumerate(array.shape) if i != axis % array.ndim)
    step = max(1, max_voxels // max(1, plane))
    index: list[slice] = [slice(None)] * array.ndim
    for start in range(0, array.shape[axis], step):
        index[axis] = slice(start, start + step)
        yield array[tuple(index)]


def _count_non_finite(data: np.ndarray) -> int:
    slabs = iter_slabs(data, -1, _CHUNK_VOXELS)
    return sum(int(chunk.size - np.count_nonzero(np.isfinite(chunk))) for chunk in slabs)


def _zero_non_finite(data: np.ndarray) -> np.ndarray:
    """``data`` with NaN/Inf set to 0: in place when the reader's array is writable, else on one copy."""
    out = data if data.flags.writeable else np.array(data)
    for chunk in iter_slabs(out, -1, _CHUNK_VOXELS):
        np.copyto(chunk, 0, where=~np.isfinite(chunk))
    return out


def checked_volume(array: ArrayLike, affine: ArrayLike, path: Path) -> Volume:
    """Validate what a reader decoded and wrap it as a :class:`Volume`.

    Shared by every reader so bad input is refused the same way whatever the format.
    Trailing singleton dimensions (a 4D file with one time point) are dropped.
    Non-finite voxels are shown as 0 with an :class:`IvdWarning`; the file is untouched
    (the reader's own array is repaired in place, so a large volume is not copied).

    Raises
    ------
    UnsupportedScanError
        If the data is not a 3D volume with at least two voxels along every axis, or holds
        no finite voxel at all.
    GeometryError
        If the affine gives zero spacing or is singular.
    """
    data = np.asarray(array)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise UnsupportedScanError(
            f"{path}: napari-ivd needs a 3D volume, this file holds a {data.ndim}D array of shape {data.shape}"
            + ("; split the time series / channels into 3D volumes first" if data.ndim > 3 else "")
        )
    if min(data.shape) < 2:
        raise UnsupportedScanError(
            f"{path}: shape {data.shape} is a single slice; napari-ivd needs a 3D sagittal series (several slices)"
        )
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise UnsupportedScanError(f"{path}: voxel type {data.dtype} is not a real-valued image")
    if np.issubdtype(data.dtype, np.floating):
        n_bad = _count_non_finite(data)
        if n_bad == data.size:
            raise UnsupportedScanError(f"{path}: every voxel is NaN or Inf; there is no image to show")
        if n_bad:
            warnings.warn(
                f"{path.name}: {n_bad} voxel(s) are NaN or Inf; they are shown as 0 (the file is not changed)",
                IvdWarning,
                stacklevel=2,
            )
            data = _zero_non_finite(data)
    geometry = VolumeGeometry(np.asarray(affine, dtype=np.float64), data.shape, str(path))  # type: ignore[arg-type]
    return Volume(data, geometry, Path(path))
