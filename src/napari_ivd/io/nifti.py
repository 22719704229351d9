"""Read and write NIfTI volumes (``.nii``, ``.nii.gz``) without losing their geometry."""

from __future__ import annotations

import gzip
import logging
import math
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.openers import ImageOpener
from nibabel.spatialimages import HeaderDataError

from napari_ivd.errors import GeometryError, UnreadableFileError
from napari_ivd.io.geometry import VolumeGeometry
from napari_ivd.io.limits import check_image_size
from napari_ivd.io.volume import NIFTI_SUFFIXES, Volume, checked_volume

log = logging.getLogger(__name__)

#: Bytes decompressed at a time when reading a compressed file.
_READ_CHUNK_BYTES = 1 << 26
# What nibabel, gzip and numpy raise for truncated, corrupt or mislabelled files.
_DECODE_ERRORS = (ImageFileError, HeaderDataError, gzip.BadGzipFile, zlib.error, EOFError, OSError, ValueError)


def is_nifti_path(path: str | Path) -> bool:
    """True when the file name ends in ``.nii`` or ``.nii.gz`` (no file access)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _load_image(path: Path) -> nib.Nifti1Image:
    if not path.is_file():
        raise UnreadableFileError(f"{path}: no such file")
    try:
        img = nib.load(path)
    except _DECODE_ERRORS as exc:
        raise UnreadableFileError(f"{path}: not a readable NIfTI file ({exc})") from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise UnreadableFileError(f"{path}: nibabel read it as {type(img).__name__}, not NIfTI")
    return img


def _file_affine(img: nib.Nifti1Image, path: Path) -> np.ndarray:
    """The affine nibabel would use, refusing voxel sizes the header itself gets wrong.

    nibabel silently replaces zero or negative pixdim by 1 or its absolute value; a
    researcher must hear about such a header instead, so the raw header is checked.
    """
    header = img.header
    if int(header["sform_code"]) == 0:  # the affine is built from pixdim: check the raw values
        with ImageOpener(path) as fileobj:
            raw = type(header).from_fileobj(fileobj, check=False)
        zooms = np.asarray(raw["pixdim"][1:4], dtype=np.float64)
        if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
            raise GeometryError(
                f"{path}: the header gives voxel size {tuple(float(z) for z in zooms)} mm (pixdim[1:4]); "
                "sizes must be positive — fix the header (e.g. nibabel's set_zooms) and reopen"
            )
    try:
        return np.asarray(header.get_best_affine(), dtype=np.float64)
    except HeaderDataError as exc:
        raise GeometryError(f"{path}: the header's orientation is invalid ({exc})") from exc


def _stored_voxels(img: nib.Nifti1Image, path: Path) -> np.ndarray:
    """The voxels as stored (no scale factor applied), held once in memory.

    An uncompressed file is memory-mapped copy-on-write, as nibabel does. A compressed one
    is decompressed chunk by chunk straight into the array: nibabel's own reader holds the
    whole decompressed data twice (Python's gzip returns a full-size bytes object before it
    is copied), and touches all of it before finding out that the file is truncated.
    """
    if path.name.lower().endswith(".nii"):
        return np.asanyarray(img.dataobj.get_unscaled())
    proxy = img.dataobj  # where the voxels start, their type and order, as nibabel parsed them
    shape = tuple(int(n) for n in proxy.shape)
    flat = np.empty(math.prod(shape), proxy.dtype)
    buffer = flat.view(np.uint8)
    done = 0
    with ImageOpener(path) as fileobj:
        fileobj.seek(int(proxy.offset))
        while done < buffer.size:
            n_read = fileobj.readinto(buffer[done : done + _READ_CHUNK_BYTES])
            if not n_read:
                break
            done += n_read
    if done < buffer.size:
        raise UnreadableFileError(
            f"{path}: the file is truncated ({done} of the {buffer.size} bytes of voxel data its header declares); "
            "copy or download it again"
        )
    return flat.reshape(shape, order=proxy.order)


def read_nifti(path: str | Path, max_image_gb: float | None = None) -> Volume:
    """Read a NIfTI file into a :class:`Volume` on the file's own voxel grid.

    The header's declared size is checked against the memory limit before any voxel is
    read (see :mod:`napari_ivd.io.limits`). The whole file is then decoded here (not
    lazily) so that a truncated download fails now, with the file named, rather than later
    inside the viewer. Voxels keep the file's type; a header with a scale factor
    (``scl_slope``/``scl_inter``) gives float32, not nibabel's float64, so a large scan is
    not held at four times its size.

    Parameters
    ----------
    path : Path
        A ``.nii`` or ``.nii.gz`` file.
    max_image_gb : float, optional
        Refuse images larger than this in memory (GB); default ``$NAPARI_IVD_MAX_IMAGE_GB``
        or a quarter of the machine's memory.

    Raises
    ------
    UnreadableFileError
        Missing, truncated, corrupt or not NIfTI.
    ImageTooLargeError
        The header declares more voxels than the limit allows.
    UnsupportedScanError
        Not a 3D volume, or no finite voxel.
    GeometryError
        Zero/negative voxel size or an invalid orientation in the header.
    """
    path = Path(path)
    img = _load_image(path)
    affine = _file_affine(img, path)
    proxy = img.dataobj
    slope, inter = float(proxy.slope), float(proxy.inter)
    scaled = (slope, inter) != (1.0, 0.0)
    stored = img.get_data_dtype()
    in_memory = np.result_type(stored, np.float32) if scaled else stored
    check_image_size(path, img.shape, in_memory, max_image_gb)
    try:
        data = _stored_voxels(img, path)
    except _DECODE_ERRORS as exc:
        raise UnreadableFileError(f"{path}: the voxel data cannot be decoded; is the file truncated? ({exc})") from exc
    if scaled:
        data = data.astype(in_memory)  # one copy, then scaled in place
        data *= in_memory.type(slope)
        data += in_memory.type(inter)
    volume = checked_volume(data, affine, path)
    log.debug("read %s: shape %s, %s", path, data.shape, "".join(volume.geometry.axcodes))
    return volume


def write_nifti(path: str | Path, array: np.ndarray, geometry: VolumeGeometry, like: str | Path | None = None) -> Path:
    """Write ``array`` on ``geometry``'s grid as NIfTI, keeping the source header's geometry.

    When ``like`` names the NIfTI the geometry came from, its header (sform, qform, their
    codes, units) is reused as is, so the written file's affine equals the source's to the
    bit; otherwise both sform and qform are set from ``geometry.affine`` (scanner code).

    Parameters
    ----------
    path : Path
        Output file, ``.nii`` or ``.nii.gz``.
    array : (I, J, K) array
        Data on the file grid (e.g. from ``SagittalView.to_file``).
    geometry : VolumeGeometry
        The grid ``array`` lives on.
    like : Path, optional
        The source NIfTI whose header to reuse.

    Raises
    ------
    GeometryMismatchError
        If ``array`` does not have ``geometry``'s shape.
    """
    path = Path(path)
    geometry.check_array(array)
    src = _load_image(Path(like)) if like is not None and is_nifti_path(like) and Path(like).is_file() else None
    if (
        src is not None
        and tuple(src.shape[:3]) == geometry.shape
        and np.allclose(src.affine, geometry.affine, atol=1e-5)
    ):
        header = src.header.copy()
        header.set_data_shape(array.shape)
        header.set_data_dtype(array.dtype)
        header.set_slope_inter(1.0, 0.0)
        img = type(src)(array, None, header=header)
    else:
        img = nib.Nifti1Image(array, geometry.affine)
        img.set_qform(geometry.affine, code=1)
        img.set_sform(geometry.affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path
