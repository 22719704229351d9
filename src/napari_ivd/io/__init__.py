"""Reading and writing spine MRI with exact geometry (no Qt, no napari).

``read_volume`` opens a NIfTI file or a DICOM series folder; every reader returns a
:class:`Volume` on the file's own voxel grid with its :class:`VolumeGeometry`, and
:class:`SagittalView` maps that grid to napari's sagittal display and back.
"""

from __future__ import annotations

from pathlib import Path

from napari_ivd.errors import UnreadableFileError
from napari_ivd.io.dicom import looks_like_dicom_folder, read_dicom_series
from napari_ivd.io.geometry import DISPLAY_AXCODES, DISPLAY_AXIS_LABELS, SagittalView, VolumeGeometry
from napari_ivd.io.nifti import is_nifti_path, read_nifti, write_nifti
from napari_ivd.io.volume import Volume

__all__ = [
    "DISPLAY_AXCODES",
    "DISPLAY_AXIS_LABELS",
    "SagittalView",
    "Volume",
    "VolumeGeometry",
    "can_read",
    "read_volume",
    "write_nifti",
]


def can_read(path: str | Path) -> bool:
    """True for paths napari-ivd claims: a NIfTI file name, or a folder that looks like DICOM."""
    return is_nifti_path(path) or looks_like_dicom_folder(Path(path))


def read_volume(path: str | Path, max_image_gb: float | None = None) -> Volume:
    """Open a NIfTI file or a DICOM series folder as a :class:`Volume`.

    Images whose header declares more than ``max_image_gb`` (default
    ``$NAPARI_IVD_MAX_IMAGE_GB`` or a quarter of the machine's memory) are refused before
    their voxels are read.

    Raises
    ------
    IvdError
        A subclass naming the path and the problem, for anything that cannot be shown.
    """
    path = Path(path)
    if path.is_dir():
        return read_dicom_series(path, max_image_gb)
    if is_nifti_path(path):
        return read_nifti(path, max_image_gb)
    raise UnreadableFileError(f"{path}: not a NIfTI file (.nii, .nii.gz) or a DICOM series folder")
