"""Broken scans a user may drop on the viewer, made on the fly, with what they must be told.

Shared by the core tests (typed errors) and the viewer tests (notifications), so both
check the same cases with the same expected words.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from _dicom_factory import write_dicom_series
from napari_ivd.errors import (
    DicomSeriesError,
    GeometryError,
    ImageTooLargeError,
    IvdError,
    UnreadableFileError,
    UnsupportedScanError,
)
from napari_ivd.io.limits import MAX_IMAGE_GB_ENV

REAL_NIFTI = Path("fixtures/sct_testing_data/t2/t2.nii.gz")  # relative to the shared data root


def write_raw_nifti(path: Path, data: np.ndarray, pixdim=(1.0, 1.0, 1.0), sform: np.ndarray | None = None) -> Path:
    """Write a NIfTI-1 file byte by byte, so a header can say what nibabel would refuse to save."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(data.shape)
    hdr.set_data_dtype(data.dtype)
    hdr["pixdim"][1:4] = pixdim
    hdr["vox_offset"] = 352
    hdr["qform_code"] = 0
    if sform is not None:
        hdr["sform_code"] = 1
        hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = sform[0], sform[1], sform[2]
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(hdr.binaryblock)
        f.write(b"\0" * 4)
        f.write(np.asfortranarray(data).tobytes(order="F"))
    return path


def write_header_only(path: Path, shape: tuple[int, ...], dtype: np.dtype | type = np.int16) -> Path:
    """A gzipped NIfTI-1 header declaring ``shape`` with no voxel data: 76 bytes that claim gigabytes."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_qform(np.eye(4), code=1)
    hdr["vox_offset"] = 352
    with gzip.open(path, "wb") as f:
        f.write(hdr.binaryblock + b"\0" * 4)
    return path


def write_large_volume(path: Path, shape: tuple[int, int, int], dtype: np.dtype | type = np.int16) -> Path:
    """A valid NIfTI volume of ``shape``: mostly zeros (it compresses to little) with a box and stripes."""
    data = np.zeros(shape, dtype)
    i, j, k = shape
    data[i // 4 : i // 2, j // 4 : 3 * j // 4, ::7] = 100
    data[:, ::64, k // 3] = 50
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.5, 0.5, 1.0])), path)
    return path


def _oversized_header(tmp: Path, shared: Path) -> Path:
    return write_header_only(tmp / "oversized_header.nii.gz", (2000, 2000, 1000))


def _cubed_header(tmp: Path, shared: Path) -> Path:
    return write_header_only(tmp / "header_10000_cubed.nii.gz", (10000, 10000, 10000))


def _volume_over_limit(tmp: Path, shared: Path) -> Path:
    return write_large_volume(tmp / "large_volume.nii.gz", (256, 256, 64))  # 8.4 MB of int16


def _dicom_series_over_limit(tmp: Path, shared: Path) -> Path:
    img = nib.load(shared / REAL_NIFTI)
    out = tmp / "large_series"
    write_dicom_series(np.asarray(img.dataobj), img.affine, out)  # 60 x 55 x 52 int16: 343 KB
    return out


def _truncated(tmp: Path, shared: Path) -> Path:
    raw = (shared / REAL_NIFTI).read_bytes()
    out = tmp / "truncated_t2.nii.gz"
    out.write_bytes(raw[: len(raw) // 2])
    return out


def _corrupt(tmp: Path, shared: Path) -> Path:
    out = tmp / "corrupt.nii.gz"
    out.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return out


def _text_named_nifti(tmp: Path, shared: Path) -> Path:
    out = tmp / "notes.nii"
    out.write_text("patient list, not an image\n" * 40)
    return out


def _two_d(tmp: Path, shared: Path) -> Path:
    out = tmp / "slice2d.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((64, 64), np.int16), np.eye(4)), out)
    return out


def _four_d(tmp: Path, shared: Path) -> Path:
    out = tmp / "dwi4d.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((16, 16, 8, 3), np.int16), np.eye(4)), out)
    return out


def _all_nan(tmp: Path, shared: Path) -> Path:
    out = tmp / "all_nan.nii.gz"
    nib.save(nib.Nifti1Image(np.full((8, 9, 10), np.nan, np.float32), np.eye(4)), out)
    return out


def _zero_spacing(tmp: Path, shared: Path) -> Path:
    return write_raw_nifti(tmp / "zero_spacing.nii.gz", np.ones((8, 9, 10), np.int16), pixdim=(1.0, 0.0, 1.0))


def _negative_spacing(tmp: Path, shared: Path) -> Path:
    return write_raw_nifti(tmp / "negative_spacing.nii", np.ones((8, 9, 10), np.int16), pixdim=(-0.5, 0.5, 3.0))


def _zero_column_sform(tmp: Path, shared: Path) -> Path:
    sform = np.diag([0.5, 0.0, 3.0, 1.0])
    return write_raw_nifti(tmp / "flat_sform.nii.gz", np.ones((8, 9, 10), np.int16), sform=sform)


def _empty_dicom_folder(tmp: Path, shared: Path) -> Path:
    out = tmp / "empty_series"
    out.mkdir()
    return out


def _mixed_dicom_folder(tmp: Path, shared: Path) -> Path:
    img = nib.load(shared / REAL_NIFTI)
    data = np.asarray(img.dataobj)[:, :, :6]
    out = tmp / "mixed_series"
    write_dicom_series(data, img.affine, out, series_description="T2 sag")
    moved = tmp / "other"
    write_dicom_series(data[:, :, :4], img.affine, moved, series_description="T1 sag")
    for f in moved.iterdir():
        shutil.move(f, out / f"other_{f.name}")
    return out


@dataclass(frozen=True)
class BadInput:
    """One broken input: how to make it, the typed error, and words the message must hold.

    ``env`` holds environment variables the test sets while opening it (a memory limit
    small enough that the case is refused on any machine).
    """

    id: str
    make: Callable[[Path, Path], Path]
    error: type[IvdError]
    words: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)


BAD_INPUTS: tuple[BadInput, ...] = (
    BadInput("truncated-nii-gz", _truncated, UnreadableFileError, ("truncated",)),
    BadInput("corrupt-nii-gz", _corrupt, UnreadableFileError, ("not a readable NIfTI",)),
    BadInput("text-named-nii", _text_named_nifti, UnreadableFileError, ("not a readable NIfTI",)),
    BadInput("2d-array", _two_d, UnsupportedScanError, ("3D volume", "2D")),
    BadInput("4d-array", _four_d, UnsupportedScanError, ("3D volume", "4D")),
    BadInput("all-nan", _all_nan, UnsupportedScanError, ("NaN or Inf",)),
    BadInput("zero-spacing", _zero_spacing, GeometryError, ("voxel size", "positive")),
    BadInput("negative-spacing", _negative_spacing, GeometryError, ("voxel size", "positive")),
    BadInput("zero-column-affine", _zero_column_sform, GeometryError, ("zero axis",)),
    BadInput("empty-dicom-folder", _empty_dicom_folder, DicomSeriesError, ("no DICOM",)),
    BadInput("mixed-dicom-folder", _mixed_dicom_folder, DicomSeriesError, ("series", "T1 sag", "T2 sag")),
    BadInput(
        "oversized-header",
        _oversized_header,
        ImageTooLargeError,
        ("2000 x 2000 x 1000", "int16", "8.0 GB", f"{MAX_IMAGE_GB_ENV}=4"),
        {MAX_IMAGE_GB_ENV: "4"},
    ),
    BadInput("10000-cubed-header", _cubed_header, ImageTooLargeError, ("10000 x 10000 x 10000", "2000.0 GB", "memory")),
    BadInput(
        "volume-over-limit",
        _volume_over_limit,
        ImageTooLargeError,
        ("256 x 256 x 64", f"{MAX_IMAGE_GB_ENV}=0.005", "crop or downsample"),
        {MAX_IMAGE_GB_ENV: "0.005"},
    ),
    BadInput(
        "dicom-series-over-limit",
        _dicom_series_over_limit,
        ImageTooLargeError,
        ("60 x 55 x 52", f"{MAX_IMAGE_GB_ENV}=0.0002"),
        {MAX_IMAGE_GB_ENV: "0.0002"},
    ),
)
