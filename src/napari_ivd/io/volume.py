"""The in-memory volume every reader returns, and the checks every reader shares."""

from __future__ import annotations

import warnings
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


def checked_volume(array: ArrayLike, affine: ArrayLike, path: Path) -> Volume:
    """Validate what a reader decoded and wrap it as a :class:`Volume`.

    Shared by every reader so bad input is refused the same way whatever the format.
    Trailing singleton dimensions (a 4D file with one time point) are dropped.
    Non-finite voxels are shown as 0 with an :class:`IvdWarning`; the file is untouched.

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
        finite = np.isfinite(data)
        n_bad = int(finite.size - np.count_nonzero(finite))
        if n_bad == finite.size:
            raise UnsupportedScanError(f"{path}: every voxel is NaN or Inf; there is no image to show")
        if n_bad:
            warnings.warn(
                f"{path.name}: {n_bad} voxel(s) are NaN or Inf; they are shown as 0 (the file is not changed)",
                IvdWarning,
                stacklevel=2,
            )
            data = np.where(finite, data, 0).astype(data.dtype)
    geometry = VolumeGeometry(np.asarray(affine, dtype=np.float64), data.shape, str(path))  # type: ignore[arg-type]
    return Volume(data, geometry, Path(path))
