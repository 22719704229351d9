"""npe2 writer: a Labels layer drawn on a napari-ivd image -> NIfTI on the image's own grid."""

from __future__ import annotations

from typing import Any

from napari.utils.notifications import show_error

from napari_ivd.errors import IvdError
from napari_ivd.layer_data import write_display_labels


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Save a Labels layer voxel-exact into the source file's geometry (``.nii``/``.nii.gz``)."""
    try:
        return [str(write_display_labels(path, data, meta.get("metadata", {}), meta.get("name", "labels")))]
    except IvdError as exc:
        show_error(f"napari-ivd could not save {meta.get('name', 'labels')}: {exc}")
        return []
