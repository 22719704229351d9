"""Read one DICOM series (a folder of single-frame slices) as a :class:`Volume` with exact geometry.

Scanners and PACS export a series as one file per slice. File names, ``InstanceNumber``
and acquisition order say nothing reliable about where a slice lies, so slices are placed
by ``ImagePositionPatient`` projected on the slice normal, and the slice spacing comes from
those positions (``SliceThickness`` is the excited slab, which may differ from the gap).

Voxel convention (no flips, so voxel ``(i, j)`` of slice ``k`` is pixel ``(row j, column i)``
of that slice's file): ``array[i, j, k]`` with ``i`` the column within a slice (along the first
``ImageOrientationPatient`` cosine, spacing ``PixelSpacing[1]``), ``j`` the row (along the
second cosine, spacing ``PixelSpacing[0]``) and ``k`` the slice, in increasing position along the
normal (row cosine x column cosine). The affine is built in DICOM's LPS space and returned
in NIfTI's RAS space.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from napari_ivd.errors import DicomSeriesError, GeometryError, UnreadableFileError, UnsupportedScanError
from napari_ivd.io.limits import check_image_size
from napari_ivd.io.volume import Volume, checked_volume

log = logging.getLogger(__name__)

#: File name suffixes that claim DICOM (Siemens exports ``.IMA``).
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".ima")

_MAGIC_OFFSET = 128
_MAGIC = b"DICM"
#: How many files :func:`looks_like_dicom_folder` opens at most.
_FILES_TO_SNIFF = 8
_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # the DICOMDIR SOP class
#: Largest tolerated relative deviation of one slice gap from the mean gap.
_SPACING_TOLERANCE = 0.01
#: Slices closer than this along the normal are "at the same position" (mm).
_SAME_POSITION_MM = 0.01
#: Largest tolerated difference between two slices' direction cosines.
_ORIENTATION_TOLERANCE = 1e-3
_GEOMETRY_TAGS: tuple[str, ...] = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
_DECODER_HINT = (
    "install a decoder for it, e.g. `pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg` "
    "(or `pip install python-gdcm`), or export the series uncompressed"
)


@dataclass(frozen=True)
class _Slice:
    """One DICOM file's header (no pixel data) and where it came from."""

    path: Path
    header: Dataset


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _has_dicom_magic(path: Path) -> bool:
    """True when the file carries the 'DICM' signature after its 128-byte preamble; never raises."""
    try:
        with path.open("rb") as f:
            f.seek(_MAGIC_OFFSET)
            return f.read(len(_MAGIC)) == _MAGIC
    except OSError:
        return False


def _has_dicom_suffix(path: Path) -> bool:
    return path.suffix.lower() in DICOM_SUFFIXES


def looks_like_dicom_folder(path: Path) -> bool:
    """Cheap guess whether ``path`` is a DICOM series folder, for the napari reader hook.

    True for a directory that is empty (ignoring hidden files) — so opening it gives a
    clear "no DICOM images" message rather than napari's generic refusal — or that holds,
    directly, a file named ``*.dcm`` / ``*.ima`` or one with the ``DICM`` signature. Only
    file names and at most a handful of 132-byte headers are read; never raises.
    """
    try:
        path = Path(path)
        if not path.is_dir():
            return False
        sniffed = 0
        empty = True
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                empty = False
                try:
                    if not entry.is_file():
                        continue
                except OSError:
                    continue
                if entry.name.lower().endswith(DICOM_SUFFIXES):
                    return True
                if sniffed < _FILES_TO_SNIFF:
                    sniffed += 1
                    if _has_dicom_magic(Path(entry.path)):
                        return True
        return empty
    except (OSError, ValueError, TypeError):
        return False


def _read_header(path: Path) -> Dataset | None:
    """Read a file's DICOM header without pixel data; None when it is not a DICOM image.

    Non-DICOM files, DICOMDIR indexes and non-image objects (reports, presentation
    states) are skipped quietly. A file with the DICOM signature whose header cannot be
    parsed is an error: silently dropping it would leave a hole in the series.
    """
    if _is_hidden(path) or path.name.upper() == "DICOMDIR":
        return None
    try:
        with path.open("rb") as f:
            f.seek(_MAGIC_OFFSET)
            magic = f.read(len(_MAGIC)) == _MAGIC
    except OSError as exc:
        raise UnreadableFileError(f"{path}: cannot be read ({exc}); check the file's permissions") from exc
    if not magic and not _has_dicom_suffix(path):
        log.debug("skip %s: no DICOM signature", path)
        return None
    try:
        # Files named .dcm without the 128-byte preamble (old ACR-NEMA style) need force=True.
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=not magic)
    except InvalidDicomError:
        log.debug("skip %s: not DICOM", path)
        return None
    except Exception as exc:  # pydicom raises many kinds on corrupt headers
        if not magic:
            log.debug("skip %s: named like DICOM but unparsable (%s)", path, exc)
            return None
        raise UnreadableFileError(
            f"{path}: has the DICOM signature but its header cannot be parsed ({exc}); "
            "the file is probably truncated — copy or export it again"
        ) from exc
    sop_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", ""))
    if sop_class == _MEDIA_STORAGE_DIRECTORY:
        log.debug("skip %s: DICOMDIR index", path)
        return None
    if "Rows" not in ds or "Columns" not in ds:
        log.debug("skip %s: DICOM object without an image (%s)", path, ds.get("Modality", "?"))
        return None
    if not magic:
        # Without file meta, pixel decoding needs to be told how the file is encoded.
        meta = ds.file_meta
        if "TransferSyntaxUID" not in meta:
            implicit, _little = ds.original_encoding
            meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return ds


def _series_label(uid: str, slices: Sequence[_Slice]) -> str:
    """Human description of one series for error messages: number, description, slice count."""
    header = slices[0].header
    number = header.get("SeriesNumber", None)
    description = str(header.get("SeriesDescription", "") or "").strip() or "no description"
    number_text = f"series {number}" if number not in (None, "") else "series (no number)"
    return f"{number_text} '{description}' ({len(slices)} slice{'s' if len(slices) != 1 else ''}, UID …{uid[-12:]})"


def _group_series(folder: Path, slices: Sequence[_Slice]) -> list[_Slice]:
    """Return the slices of the folder's single series; refuse a folder that mixes series."""
    groups: dict[str, list[_Slice]] = {}
    for s in slices:
        groups.setdefault(str(s.header.get("SeriesInstanceUID", "") or ""), []).append(s)
    if len(groups) == 1:
        return next(iter(groups.values()))

    def order(item: tuple[str, list[_Slice]]) -> tuple[int, str]:
        try:
            return int(item[1][0].header.get("SeriesNumber", 0) or 0), item[0]
        except (TypeError, ValueError):
            return 0, item[0]

    listing = "; ".join(_series_label(uid, group) for uid, group in sorted(groups.items(), key=order))
    raise DicomSeriesError(
        f"{folder}: the folder mixes {len(groups)} DICOM series: {listing}. "
        "napari-ivd opens one series at a time — move each series into its own folder "
        "(e.g. sort by SeriesInstanceUID) and open the folder of the one you want"
    )


def _floats(s: _Slice, tag: str, count: int, folder: Path) -> NDArray[np.float64]:
    """A multi-valued numeric attribute as floats, or a DicomSeriesError naming the file."""
    raw = s.header.get(tag, None)
    try:
        values = np.array([float(v) for v in raw], dtype=np.float64)  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        raise DicomSeriesError(
            f"{folder}: {s.path.name} has a malformed {tag} ({raw!r}); the file's geometry cannot be trusted — "
            "export the series again from the scanner or PACS"
        ) from exc
    if values.shape != (count,) or not np.all(np.isfinite(values)):
        raise DicomSeriesError(
            f"{folder}: {s.path.name} has a malformed {tag} ({raw!r}, expected {count} numbers); "
            "export the series again from the scanner or PACS"
        )
    return values


def _check_single_frame_grayscale(folder: Path, slices: Sequence[_Slice]) -> None:
    for s in slices:
        frames = s.header.get("NumberOfFrames", 1)
        try:
            n_frames = int(frames or 1)
        except (TypeError, ValueError):
            n_frames = 1
        if n_frames > 1:
            raise DicomSeriesError(
                f"{folder}: {s.path.name} is an enhanced (multi-frame) DICOM with {n_frames} frames in one file; "
                "napari-ivd reads classic one-file-per-slice series — convert it to NIfTI "
                "(e.g. `dcm2niix`) and open the .nii.gz"
            )
        samples = int(s.header.get("SamplesPerPixel", 1) or 1)
        if samples != 1:
            photometric = s.header.get("PhotometricInterpretation", "?")
            raise UnsupportedScanError(
                f"{folder}: {s.path.name} is a colour image ({photometric}, {samples} samples per pixel), "
                "probably a screenshot or secondary capture; open the scanner's original grey-scale series"
            )


def _check_geometry_present(folder: Path, slices: Sequence[_Slice]) -> None:
    for tag in _GEOMETRY_TAGS:
        missing = [s.path.name for s in slices if s.header.get(tag, None) in (None, "", [])]
        if missing:
            raise DicomSeriesError(
                f"{folder}: {len(missing)} of {len(slices)} DICOM files lack {tag} (e.g. {missing[0]}), "
                "so the slices cannot be placed in the scanner's space; this is usually a secondary capture, "
                "screenshot or anonymised copy — export the original series from the scanner or PACS"
            )


def _distinct_description(values: Sequence[str], limit: int = 3) -> str:
    distinct = list(dict.fromkeys(values))
    shown = ", ".join(distinct[:limit])
    return shown + (f" and {len(distinct) - limit} more" if len(distinct) > limit else "")


def _in_plane_geometry(
    folder: Path, slices: Sequence[_Slice]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Check that every slice shares one orientation and pixel grid; return row/col cosines and PixelSpacing."""
    spacings = [_floats(s, "PixelSpacing", 2, folder) for s in slices]
    for s, ps in zip(slices, spacings, strict=True):
        if np.any(ps <= 0):
            raise GeometryError(
                f"{folder}: {s.path.name} has PixelSpacing {tuple(float(v) for v in ps)} mm; pixel sizes must be "
                "positive — the header is broken or anonymisation blanked it; export the original series again"
            )
    orientations = [_floats(s, "ImageOrientationPatient", 6, folder) for s in slices]
    ref = orientations[0]
    if any(not np.allclose(o, ref, atol=_ORIENTATION_TOLERANCE) for o in orientations):
        kinds = _distinct_description([str(tuple(np.round(o, 3).tolist())) for o in orientations])
        raise DicomSeriesError(
            f"{folder}: the slices have different orientations (ImageOrientationPatient {kinds}); the folder "
            "holds several stacks (e.g. a 3-plane localizer) — open a series acquired in one plane"
        )
    grids = [(int(s.header.Rows), int(s.header.Columns)) for s in slices]
    if len(set(grids)) > 1 or any(not np.allclose(ps, spacings[0], rtol=1e-4, atol=1e-6) for ps in spacings):
        kinds = _distinct_description(
            [f"{r}x{c} px at {ps[0]:g}x{ps[1]:g} mm" for (r, c), ps in zip(grids, spacings, strict=True)]
        )
        raise DicomSeriesError(
            f"{folder}: the slices have different pixel grids (Rows x Columns at PixelSpacing: {kinds}); "
            "they cannot be stacked into one volume — open a single series whose slices share one grid"
        )
    row_cos, col_cos = ref[:3], ref[3:]
    norms = (np.linalg.norm(row_cos), np.linalg.norm(col_cos))
    if min(norms) < 1e-6:
        raise DicomSeriesError(
            f"{folder}: ImageOrientationPatient {tuple(ref.tolist())} holds a zero direction; the header is broken"
        )
    row_cos, col_cos = row_cos / norms[0], col_cos / norms[1]
    if max(abs(n - 1.0) for n in norms) > 0.01 or abs(float(row_cos @ col_cos)) > 0.01:
        raise DicomSeriesError(
            f"{folder}: ImageOrientationPatient {tuple(ref.tolist())} is not two perpendicular unit vectors; "
            "the header is broken — export the series again"
        )
    return row_cos, col_cos, spacings[0]


def _sort_slices(
    folder: Path, slices: Sequence[_Slice], normal: NDArray[np.float64]
) -> tuple[list[_Slice], NDArray[np.float64]]:
    """Sort slices along the normal and check they form one evenly spaced stack.

    Returns the sorted slices and their positions (LPS mm), first to last.
    """
    positions = np.array([_floats(s, "ImagePositionPatient", 3, folder) for s in slices])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    sorted_slices = [slices[int(i)] for i in order]
    positions, along = positions[order], along[order]
    if len(sorted_slices) < 2:
        return sorted_slices, positions
    gaps = np.diff(along)
    same = np.flatnonzero(gaps < _SAME_POSITION_MM)
    if same.size:
        a, b = sorted_slices[int(same[0])], sorted_slices[int(same[0]) + 1]
        raise DicomSeriesError(
            f"{folder}: two slices lie at the same position ({same.size} such pair(s), "
            f"e.g. {a.path.name} and {b.path.name} both at {along[int(same[0])]:.2f} mm along the slice normal); "
            "the series holds several images per position (echoes, time points, repeats or a copied file) — "
            "export each echo / time point as its own series and open one"
        )
    mean_gap = float(gaps.mean())
    if np.max(np.abs(gaps - mean_gap)) > _SPACING_TOLERANCE * mean_gap:
        raise DicomSeriesError(
            f"{folder}: the slice spacing is not uniform (gaps between neighbouring slices range from "
            f"{gaps.min():.3f} to {gaps.max():.3f} mm, more than {_SPACING_TOLERANCE:.0%} apart); a slice may be "
            "missing or the folder mixes stacks — napari-ivd does not resample, so re-export the complete series"
        )
    step = (positions[-1] - positions[0]) / (len(positions) - 1)
    expected = positions[0] + np.arange(len(positions))[:, None] * step
    drift = float(np.max(np.linalg.norm(positions - expected, axis=1)))
    if drift > max(_SPACING_TOLERANCE * mean_gap, _SAME_POSITION_MM):
        raise DicomSeriesError(
            f"{folder}: the slice positions do not lie on one straight line (they drift up to {drift:.3f} mm "
            "sideways); the folder mixes stacks — open a single series"
        )
    return sorted_slices, positions


def _rescale(s: _Slice) -> tuple[float, float]:
    """RescaleSlope and RescaleIntercept of a slice (1, 0 when absent or blank)."""
    try:
        slope = float(s.header.get("RescaleSlope", None) or 1.0)
        intercept = float(s.header.get("RescaleIntercept", None) or 0.0)
    except (TypeError, ValueError):
        raise UnreadableFileError(
            f"{s.path}: RescaleSlope/RescaleIntercept are not numbers; the header is broken"
        ) from None
    return slope, intercept


def _decode_pixels(s: _Slice) -> NDArray[np.generic]:
    """Decode one slice's pixel data as a (Rows, Columns) array, naming the file on failure."""
    try:
        ds = pydicom.dcmread(s.path, force=True)
        if "TransferSyntaxUID" not in ds.file_meta:
            ds.file_meta.TransferSyntaxUID = s.header.file_meta.TransferSyntaxUID
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom and its plugins raise many kinds
        syntax = getattr(getattr(s.header, "file_meta", None), "TransferSyntaxUID", None)
        compressed = bool(syntax is not None and getattr(syntax, "is_compressed", False))
        syntax_name = getattr(syntax, "name", str(syntax))
        reason = " ".join(str(exc).split())  # pydicom lists missing plugins on several lines
        fix = _DECODER_HINT if compressed else "the file is probably truncated or corrupt — export the series again"
        raise UnreadableFileError(
            f"{s.path}: the pixel data ({syntax_name}) cannot be decoded ({reason}); {fix}"
        ) from exc
    expected = (int(s.header.Rows), int(s.header.Columns))
    if pixels.shape != expected:
        raise UnreadableFileError(
            f"{s.path}: decoded pixel data has shape {pixels.shape}, the header says {expected}; the file is corrupt"
        )
    return pixels


def _pixel_dtype(s: _Slice) -> np.dtype:
    """The type pydicom decodes a slice to, from BitsAllocated and PixelRepresentation."""
    try:
        n_bytes = max(1, -(-int(s.header.get("BitsAllocated", 16) or 16) // 8))
        signed = int(s.header.get("PixelRepresentation", 0) or 0) == 1
    except (TypeError, ValueError):
        n_bytes, signed = 2, False
    itemsize = next((size for size in (1, 2, 4) if size >= n_bytes), 8)
    return np.dtype(f"{'i' if signed else 'u'}{itemsize}")


def _check_series_size(folder: Path, slices: Sequence[_Slice], max_image_gb: float | None) -> None:
    """Refuse a series whose Rows x Columns x slices exceed the memory limit, before decoding any pixel."""
    first = slices[0]
    trivial = all(_rescale(s) == (1.0, 0.0) for s in slices)
    dtype = _pixel_dtype(first) if trivial else np.dtype(np.float32)
    shape = (int(first.header.Columns), int(first.header.Rows), len(slices))
    check_image_size(folder, shape, dtype, max_image_gb)


def _pixel_volume(sorted_slices: Sequence[_Slice]) -> NDArray[np.generic]:
    """Stack decoded slices as array[i=column, j=row, k=slice], applying Rescale slope/intercept.

    Each slice is decoded straight into one preallocated stack, so the series is held once.
    """
    rescales = [_rescale(s) for s in sorted_slices]
    trivial = all(slope == 1.0 and intercept == 0.0 for slope, intercept in rescales)
    stack: NDArray[np.generic] | None = None
    for k, (s, (slope, intercept)) in enumerate(zip(sorted_slices, rescales, strict=True)):
        frame = _decode_pixels(s)
        if stack is None:
            stack = np.empty((len(sorted_slices), *frame.shape), dtype=frame.dtype if trivial else np.float32)
        elif trivial and not np.can_cast(frame.dtype, stack.dtype):  # slices stored with different types
            stack = stack.astype(np.result_type(stack.dtype, frame.dtype))
        if trivial:
            stack[k] = frame
        else:
            stack[k] = frame.astype(np.float64) * slope + intercept
    assert stack is not None  # a series has at least one slice
    # (slice, row, column) -> (column, row, slice); a transposed view, i.e. Fortran order like nibabel's arrays.
    return stack.transpose(2, 1, 0)


def _lps_to_ras(affine_lps: NDArray[np.float64]) -> NDArray[np.float64]:
    """DICOM patient space (x to Left, y to Posterior) -> NIfTI scanner space (x to Right, y to Anterior)."""
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps


def _single_slice_step(s: _Slice, normal: NDArray[np.float64]) -> NDArray[np.float64]:
    """A nominal slice vector for a one-slice series, so the caller can refuse it by shape."""
    for tag in ("SpacingBetweenSlices", "SliceThickness"):
        try:
            value = float(s.header.get(tag, None) or 0.0)
        except (TypeError, ValueError):
            value = 0.0
        if value > 0:
            return normal * value
    return normal


def read_dicom_series(folder: Path, max_image_gb: float | None = None) -> Volume:
    """Read the single DICOM series in ``folder`` as a :class:`Volume` in NIfTI RAS space.

    Files that are not DICOM images (text, DICOMDIR, hidden files, reports) are skipped.
    Slices are ordered by position along the slice normal, never by file name or
    InstanceNumber, and the slice spacing is measured from the positions. Rescale
    slope/intercept are applied (float32 output when they are not 1/0). Rows x Columns x
    slices is checked against the memory limit (``max_image_gb``, default
    ``$NAPARI_IVD_MAX_IMAGE_GB`` or a quarter of the memory) before any pixel is decoded.

    Raises
    ------
    DicomSeriesError
        No DICOM images; several series mixed; missing or inconsistent geometry
        (orientation, pixel grid); two slices at one position; uneven slice spacing.
    GeometryError
        Zero or negative PixelSpacing.
    UnreadableFileError
        Folder missing, a file corrupt, or compressed pixel data with no decoder installed.
    ImageTooLargeError
        The series holds more voxels than the limit allows.
    UnsupportedScanError
        A single slice, colour images, or no finite voxel (from :func:`checked_volume`).
    """
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder; open the folder that holds the series" if folder.exists() else "no such folder"
        raise UnreadableFileError(f"{folder}: {what}")
    try:
        candidates = sorted(p for p in folder.iterdir() if p.is_file())
    except OSError as exc:
        raise UnreadableFileError(f"{folder}: cannot list the folder ({exc})") from exc
    slices: list[_Slice] = []
    for path in candidates:
        header = _read_header(path)
        if header is not None:
            slices.append(_Slice(path, header))
    if not slices:
        subfolders = sorted(p.name for p in folder.iterdir() if p.is_dir() and not _is_hidden(p))
        hint = (
            f"; it has {len(subfolders)} subfolder(s) ({_distinct_description(subfolders)}) — open the one that "
            "holds the series' slice files"
            if subfolders
            else "; open the folder that holds the series' .dcm / .IMA slice files"
        )
        raise DicomSeriesError(
            f"{folder}: no DICOM images in this folder ({len(candidates)} file(s) checked, none a DICOM image){hint}"
        )
    series = _group_series(folder, slices)
    _check_single_frame_grayscale(folder, series)
    _check_series_size(folder, series, max_image_gb)
    _check_geometry_present(folder, series)
    row_cos, col_cos, pixel_spacing = _in_plane_geometry(folder, series)
    normal = np.cross(row_cos, col_cos)
    sorted_slices, positions = _sort_slices(folder, series, normal)

    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_cos * pixel_spacing[1]  # i: along a row, i.e. across columns
    affine_lps[:3, 1] = col_cos * pixel_spacing[0]  # j: down a column, i.e. across rows
    if len(sorted_slices) > 1:
        affine_lps[:3, 2] = (positions[-1] - positions[0]) / (len(positions) - 1)
    else:
        affine_lps[:3, 2] = _single_slice_step(sorted_slices[0], normal)
    affine_lps[:3, 3] = positions[0]

    array = _pixel_volume(sorted_slices)
    log.debug(
        "read DICOM series %s: %d slices, shape %s, spacing %s mm",
        folder,
        len(sorted_slices),
        array.shape,
        np.round(np.linalg.norm(affine_lps[:3, :3], axis=0), 4),
    )
    return checked_volume(array, _lps_to_ras(affine_lps), folder)
