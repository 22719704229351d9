"""How large an image napari-ivd agrees to load, checked from the header before any allocation.

A header is a few hundred bytes and can declare any size: a 76-byte file declaring
2000 x 2000 x 1000 voxels would otherwise make the reader allocate 8 GB before finding
out that the data is missing, and a header declaring 10000³ voxels would end in a
``MemoryError``. Opening and predicting holds about four copies' worth of the volume
(the voxels, a float32 working copy, the resampled slices, the display), so the default
limit is a quarter of the machine's memory. ``NAPARI_IVD_MAX_IMAGE_GB`` or the readers'
``max_image_gb`` option raise or lower it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import DTypeLike

from napari_ivd.errors import ImageTooLargeError, IvdError

#: Environment variable that overrides the default limit (gigabytes, 1 GB = 1e9 bytes).
MAX_IMAGE_GB_ENV = "NAPARI_IVD_MAX_IMAGE_GB"
#: Share of the machine's memory one image may take by default.
MEMORY_SHARE = 0.25
#: Memory assumed where the operating system does not report it (bytes).
_FALLBACK_MEMORY_BYTES = 8e9
_GB = 1e9


def total_memory_bytes() -> float:
    """The machine's physical memory in bytes, from ``os.sysconf`` (8 GB where it is not reported)."""
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # Windows has no sysconf
        return _FALLBACK_MEMORY_BYTES
    return float(pages * page_size) if pages > 0 and page_size > 0 else _FALLBACK_MEMORY_BYTES


def max_image_bytes(max_image_gb: float | None = None) -> tuple[float, str]:
    """The largest image (bytes in memory) to load, and where that limit comes from, for messages.

    ``max_image_gb`` wins over ``$NAPARI_IVD_MAX_IMAGE_GB``, which wins over the default
    (:data:`MEMORY_SHARE` of the machine's memory).

    Raises
    ------
    IvdError
        If the option or the environment variable is not a positive number.
    """
    if max_image_gb is not None:
        return _positive_gb(max_image_gb, "max_image_gb") * _GB, "the max_image_gb option"
    env = os.environ.get(MAX_IMAGE_GB_ENV, "").strip()
    if env:
        return _positive_gb(env, MAX_IMAGE_GB_ENV) * _GB, f"{MAX_IMAGE_GB_ENV}={env}"
    memory = total_memory_bytes()
    return MEMORY_SHARE * memory, f"a quarter of this machine's {memory / _GB:.1f} GB of memory"


def _positive_gb(value: float | str, name: str) -> float:
    try:
        gb = float(value)
    except ValueError:
        raise IvdError(f"{name} must be a number of gigabytes, got {value!r}") from None
    if not (math.isfinite(gb) and gb > 0):
        raise IvdError(f"{name} must be a positive number of gigabytes, got {value!r}")
    return gb


def _size(n_bytes: float) -> str:
    return f"{n_bytes / _GB:.1f} GB" if n_bytes >= 0.1 * _GB else f"{n_bytes / 1e6:.1f} MB"


def check_image_size(path: Path, shape: Sequence[int], dtype: DTypeLike, max_image_gb: float | None = None) -> None:
    """Refuse an image whose declared ``shape`` x ``dtype`` exceeds the limit, before reading its voxels.

    Parameters
    ----------
    path : Path
        The file or DICOM folder, named in the message.
    shape : sequence of int
        Voxel counts as the header declares them.
    dtype : dtype
        The type the voxels will have in memory (after any rescaling).
    max_image_gb : float, optional
        The limit in GB; default ``$NAPARI_IVD_MAX_IMAGE_GB`` or a quarter of the memory.

    Raises
    ------
    ImageTooLargeError
        Naming the file, its size, the limit, where the limit comes from and how to raise it.
    """
    n_bytes = math.prod(int(n) for n in shape) * np.dtype(dtype).itemsize
    limit, origin = max_image_bytes(max_image_gb)
    if n_bytes <= limit:
        return
    dims = " x ".join(str(int(n)) for n in shape)
    raise ImageTooLargeError(
        f"{path}: the header declares {dims} voxels of {np.dtype(dtype).name} ({_size(n_bytes)} in memory), "
        f"more than the {_size(limit)} napari-ivd loads ({origin}); crop or downsample the scan, "
        f"or raise the limit with {MAX_IMAGE_GB_ENV}=<GB> if the machine has the memory"
    )
