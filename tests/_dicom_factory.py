"""Write a real-looking multi-file MR DICOM series from a NIfTI-style array and RAS affine.

Tests use it to turn the real NIfTI scans into DICOM, then check that the DICOM reader
rebuilds the same picture in the same place. It follows the reader's voxel convention:
``array[i, j, k]`` is column ``i``, row ``j`` of slice file ``k``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import DSfloat

#: DICOM patient space is LPS, NIfTI scanner space is RAS: flip x and y.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _ds(value: float) -> DSfloat:
    """A decimal string that fits DICOM's 16 characters, at the best precision that fits."""
    return DSfloat(float(value), auto_format=True)


def _stored_pixels(array: np.ndarray, rescale: tuple[float, float] | None) -> np.ndarray:
    """The 16-bit integers to store so that ``stored * slope + intercept`` gives back ``array``."""
    values = np.asarray(array)
    if rescale is not None:
        slope, intercept = rescale
        values = np.rint((values.astype(np.float64) - intercept) / slope)
    if values.dtype in (np.int16, np.uint16):
        return values
    values = np.rint(values)
    if values.min() >= 0 and values.max() <= np.iinfo(np.uint16).max:
        return values.astype(np.uint16)
    if values.min() >= np.iinfo(np.int16).min and values.max() <= np.iinfo(np.int16).max:
        return values.astype(np.int16)
    raise ValueError(f"values {values.min()}..{values.max()} do not fit 16 bits; pass rescale=(slope, intercept)")


def _file_numbers(n: int, shuffle: bool, seed: int) -> list[int]:
    """1-based numbers for file names / InstanceNumber; shuffled so neither follows space."""
    numbers = np.arange(1, n + 1)
    if shuffle and n > 1:
        rng = np.random.default_rng(seed)
        if n < 3:
            numbers = numbers[::-1].copy()
        else:
            while np.all(np.diff(numbers) > 0) or np.all(np.diff(numbers) < 0):
                numbers = rng.permutation(numbers)
    return [int(v) for v in numbers]


def write_dicom_series(
    array: ArrayLike,
    affine: ArrayLike,
    folder: Path,
    *,
    series_uid: str | None = None,
    series_description: str = "napari-ivd test T2w sagittal",
    series_number: int = 1,
    study_uid: str | None = None,
    shuffle_names: bool = True,
    suffix: str = ".dcm",
    prefix: str = "",
    rescale: tuple[float, float] | None = None,
    edit: Callable[[FileDataset, int], None] | None = None,
    seed: int = 0,
) -> list[Path]:
    """Write ``array`` (I, J, K) on the RAS ``affine`` as one MR DICOM file per slice along K.

    Parameters
    ----------
    array : (I, J, K) array
        Voxels; ``array[:, :, k].T`` becomes the (Rows, Columns) image of slice ``k``.
        int16 / uint16 are stored as they are; other types are rounded to 16 bits.
    affine : (4, 4) array
        Voxel -> RAS mm; its first two columns must be perpendicular (DICOM has no shear).
    folder : Path
        Created if needed; several series may be written into one folder.
    series_uid, study_uid : str, optional
        Fresh UIDs when not given.
    series_description, series_number : str, int
        What the series is called.
    shuffle_names : bool
        Number file names and InstanceNumber in a shuffled order (alphabetical order is
        then neither spatial order nor its reverse); else ``slice0001`` ... in slice order.
    suffix : str
        File name suffix, e.g. ``""`` to mimic scanners that write bare names.
    prefix : str
        Put before every file name, so two series can share a folder without clashing.
    rescale : (slope, intercept), optional
        Store ``(array - intercept) / slope`` and write RescaleSlope/RescaleIntercept.
    edit : callable(dataset, k), optional
        Called on each slice's dataset just before it is saved, to break things on purpose.
    seed : int
        Seed of the name shuffle.

    Returns
    -------
    list of Path
        The files, in slice (k) order.
    """
    data = np.asarray(array)
    if data.ndim != 3:
        raise ValueError(f"need an (I, J, K) array, got shape {data.shape}")
    lps = RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_cos, col_cos = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    if abs(float(row_cos @ col_cos)) > 1e-6:
        raise ValueError("the affine's first two axes are not perpendicular; DICOM cannot store that")
    stored = _stored_pixels(data, rescale)
    signed = stored.dtype == np.int16
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    numbers = _file_numbers(data.shape[2], shuffle_names, seed)
    paths: list[Path] = []
    for k, number in enumerate(numbers):
        name = f"{prefix}IM{number:04d}{suffix}" if shuffle_names else f"{prefix}slice{k + 1:04d}{suffix}"
        path = folder / name
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.FileMetaInformationVersion = b"\x00\x01"
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = "MR"
        ds.PatientName = "Test^Spine"
        ds.PatientID = "napari-ivd-test"
        ds.StudyDate = "20240101"
        ds.SeriesDescription = series_description
        ds.SeriesNumber = series_number
        ds.InstanceNumber = number
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.ImagePositionPatient = [_ds(v) for v in (lps @ np.array([0.0, 0.0, k, 1.0]))[:3]]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_cos, *col_cos)]
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # row spacing (along j) first
        ds.SliceThickness = _ds(spacing[2])
        ds.SpacingBetweenSlices = _ds(spacing[2])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = int(data.shape[1])
        ds.Columns = int(data.shape[0])
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if signed else 0
        if rescale is not None:
            ds.RescaleSlope = _ds(rescale[0])
            ds.RescaleIntercept = _ds(rescale[1])
            ds.RescaleType = "US"
        frame = np.ascontiguousarray(stored[:, :, k].T).astype("<i2" if signed else "<u2")
        ds.PixelData = frame.tobytes()
        if edit is not None:
            edit(ds, k)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
