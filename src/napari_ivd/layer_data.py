"""Volumes <-> napari layer-data tuples, without importing napari.

napari layers carry the file geometry in ``metadata["napari_ivd"]`` so that anything drawn
on them (a mask, a point) can be written back voxel-exact on the original file's grid.
Layer data coordinates are indices of the sagittal display grid (see
:class:`~napari_ivd.io.geometry.SagittalView`); the layer ``scale`` is the voxel size in mm,
so napari's world coordinates are millimetres.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_ivd import anatomy
from napari_ivd.errors import GeometryError
from napari_ivd.io import DISPLAY_AXIS_LABELS, SagittalView, Volume, VolumeGeometry, write_nifti
from napari_ivd.io.annotations import LabelledPoint

#: Key of napari-ivd's entry in a layer's ``metadata``.
METADATA_KEY = "napari_ivd"

LayerDataTuple = tuple[Any, dict[str, Any], str]
#: Half-thickness (mm, left-right) of the slab within which points are drawn on a slice:
#: structures sit at their own left-right position, a few mm off the shown slice.
POINTS_SLAB_MM = 10.0


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


#: Voxels the contrast limits are estimated from: a regular sample of a larger volume (a
#: percentile of the whole sorts a copy of it, 34 s and 1.6 GB for 1024 x 1024 x 768 int16).
CONTRAST_SAMPLE_VOXELS = 1 << 24


def _contrast_sample(array: np.ndarray) -> np.ndarray:
    """Every n-th voxel along each axis, so that about :data:`CONTRAST_SAMPLE_VOXELS` remain (a view)."""
    step = max(1, math.ceil((array.size / CONTRAST_SAMPLE_VOXELS) ** (1 / 3)))
    return array[::step, ::step, ::step]


def image_layer_data(volume: Volume) -> LayerDataTuple:
    """An Image layer tuple showing ``volume`` sagittally, with robust contrast limits.

    The Image data is a view of ``volume.array`` (reoriented, not copied).
    """
    view = volume.view
    shown = view.to_display(volume.array)
    low, high = np.percentile(_contrast_sample(shown), (0.5, 99.5))
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


def volume_from_display(data: np.ndarray, metadata: Mapping[str, Any], name: str = "layer") -> Volume:
    """The scan behind a napari-ivd Image layer (display-grid data + metadata), on its file grid.

    Raises
    ------
    GeometryError
        The layer was not opened with napari-ivd (no geometry in its metadata).
    """
    view = view_from_metadata(dict(metadata), name)
    source = Path(metadata[METADATA_KEY].get("source") or name)
    return Volume(np.ascontiguousarray(view.to_file(np.asarray(data))), view.file, source)


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


def points_layer_data(
    points: Sequence[LabelledPoint], source: Volume, kind: str, low_score: float = 0.5
) -> LayerDataTuple:
    """A Points layer tuple with the ``kind`` structures of ``points``, named and coloured.

    Each point carries features ``kind``, ``level`` and ``score``, shows its level as text
    and takes its structure's fixed colour; points scoring under ``low_score`` get a
    thick red border so they stand out for review. Points are projected onto the shown
    slice from within the viewer's slice margins (set them to :data:`POINTS_SLAB_MM`).
    """
    view = source.view
    chosen = [p for p in points if p.kind == kind]
    coords = view.vox_to_display(np.array([p.ijk_vox for p in chosen])) if chosen else np.zeros((0, 3))
    scores = np.array([p.score for p in chosen], float)
    features = {
        "kind": [p.kind for p in chosen],
        "level": [p.level for p in chosen],
        "score": scores,
    }
    kwargs = _display_kwargs(view, f"{source.name} {anatomy.KIND_PLURAL[kind]}", layer_metadata(source))
    kwargs.update(
        features=features,
        face_color=[anatomy.structure(p.level).colour for p in chosen] or "white",
        border_color=["red" if s < low_score else "white" for s in scores] or "white",
        border_width=np.where(scores < low_score, 0.35, 0.1) if chosen else 0.1,
        border_width_is_relative=True,
        size=6.0 if kind == "disc" else 8.0,
        projection_mode="all",
        symbol="disc" if kind == "disc" else "square",
        text={"string": "{level}", "size": 10, "color": "white", "anchor": "upper_left", "translation": (0, -3, 4)},
    )
    return coords, kwargs, "points"


def labels_layer_data(mask_tss: np.ndarray, source: Volume, name: str | None = None) -> LayerDataTuple:
    """A Labels layer tuple for a TotalSpineSeg mask on ``source``'s file grid.

    Colours are the anatomy module's; hovering shows the structure's name (``features``).
    """
    view = source.view
    shown = view.to_display(mask_tss)
    names = anatomy.tss_names()
    colours: dict[int | None, tuple[float, float, float, float]] = {None: (0.8, 0.8, 0.8, 1.0)}
    colours.update(anatomy.tss_colormap())
    kwargs = _display_kwargs(view, name or f"{source.name} mask", layer_metadata(source))
    kwargs.update(
        colormap=colours,
        features={"index": [0, *names], "structure": ["background", *names.values()]},
        opacity=0.5,
    )
    return shown, kwargs, "labels"
