"""Volumes <-> napari layer-data tuples, without importing napari.

napari layers carry the file geometry in ``metadata["napari_ivd"]`` so that anything drawn
on them (a mask, a point) can be written back voxel-exact on the original file's grid.
Layer data coordinates are indices of the sagittal display grid (see
:class:`~napari_ivd.io.geometry.SagittalView`); the layer ``scale`` is the voxel size in mm,
so napari's world coordinates are millimetres.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_ivd.errors import GeometryError
from napari_ivd.io import DISPLAY_AXIS_LABELS, SagittalView, Volume, VolumeGeometry, write_nifti

#: Key of napari-ivd's entry in a layer's ``metadata``.
METADATA_KEY = "napari_ivd"

LayerDataTuple = tuple[Any, dict[str, Any], str]


def layer_metadata(volume: Volume) -> dict[str, Any]:
    """The metadata entry that ties a layer to its file: geometry and source path."""
    return {METADATA_KEY: {"geometry": volume.geometry.to_dict(), "source": str(volume.path)}}


def _display_kwargs(view: SagittalView, name: str, metadata: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "scale": view.spacing_mm,
        "metadata": metadata,
        "axis_labels": DISPLAY_AXIS_LABELS,
        "units": ("mm", "mm", "mm"),
    }


def image_layer_data(volume: Volume) -> LayerDataTuple:
    """An Image layer tuple showing ``volume`` sagittally, with robust contrast limits."""
    view = volume.view
    shown = view.to_display(volume.array)
    low, high = np.percentile(shown, (0.5, 99.5))
    if high <= low:
        high = low + 1
    kwargs = _display_kwargs(view, volume.name, layer_metadata(volume))
    kwargs.update(colormap="gray", contrast_limits=(float(low), float(high)))
    return shown, kwargs, "image"


def view_from_metadata(metadata: dict[str, Any], layer_name: str = "layer") -> SagittalView:
    """Rebuild the :class:`SagittalView` of a layer from its metadata.

    Raises
    ------
    GeometryError
        If the layer was not made by napari-ivd (no geometry in its metadata).
    """
    entry = (metadata or {}).get(METADATA_KEY)
    if not entry or "geometry" not in entry:
        raise GeometryError(
            f"{layer_name}: no scanner geometry in its metadata; create it from an image opened "
            "with napari-ivd so it can be saved on that image's voxel grid"
        )
    return SagittalView(VolumeGeometry.from_dict(entry["geometry"]))


def write_display_labels(
    path: str | Path, data: np.ndarray, metadata: dict[str, Any], layer_name: str = "labels"
) -> Path:
    """Write a Labels layer's data (display grid) as NIfTI on the source file's grid.

    The source NIfTI's header is reused when it is still there, so the written affine
    equals the source's exactly.

    Raises
    ------
    GeometryError, GeometryMismatchError
        No geometry in ``metadata``, or ``data`` is not on that geometry's display grid.
    """
    view = view_from_metadata(metadata, layer_name)
    on_file_grid = np.ascontiguousarray(view.to_file(np.asarray(data)))
    return write_nifti(path, on_file_grid, view.file, like=metadata[METADATA_KEY].get("source"))
