"""The napari layers of the case being annotated: scan, mask, vertebrae, discs.

Layers hold display-grid coordinates; everything that leaves this module (points, mask)
is on the image file's own grid, through the case's :class:`SagittalView`, so the core
never sees display coordinates.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Any

import napari
import numpy as np

from napari_ivd import anatomy
from napari_ivd.annotator import KINDS
from napari_ivd.corrections import REVIEWED_SCORE, Points
from napari_ivd.io import Volume
from napari_ivd.io.annotations import LabelledPoint
from napari_ivd.layer_data import (
    POINTS_SLAB_MM,
    LayerDataTuple,
    image_layer_data,
    labels_layer_data,
    points_layer_data,
)

log = logging.getLogger(__name__)

FEATURES = ("kind", "level", "score")
#: Border of the points the active-learning ranking finds most likely wrong (low scores are red).
UNSURE_COLOUR, UNSURE_BORDER = "orange", 0.35
#: A missing level's placeholder (from the ranking): an orange cross, named, until accepted or deleted.
PLACEHOLDER_SYMBOL, PLACEHOLDER_SIZE = "cross", 8.0


def _unwrap(obj: Any) -> Any:
    """The object behind napari's plugin proxy (``PublicOnlyProxy``), or the object itself."""
    return getattr(obj, "__wrapped__", obj)


def kwargs_limits(image: LayerDataTuple) -> tuple[float, float]:
    """The contrast limits of an Image layer tuple."""
    low, high = image[1]["contrast_limits"]
    return float(low), float(high)


def prepare_labels(mask_tss: np.ndarray | None, volume: Volume) -> LayerDataTuple:
    """The Labels layer tuple of a mask (file grid; None: empty), contiguous and writable for painting.

    Pure numpy: call it in a worker so the GUI thread only adds the layer.
    """
    mask = mask_tss if mask_tss is not None else np.zeros(volume.geometry.shape, np.uint8)
    data, kwargs, kind = labels_layer_data(np.asarray(mask, np.uint8), volume)
    return np.ascontiguousarray(data), kwargs, kind


def _set_scale(layer: Any, scale: Sequence[float]) -> None:
    """Give ``layer`` a new voxel size only when it differs: each change re-slices every layer.

    Scans of one study usually share their voxel size, so the next case mostly keeps it.
    """
    if not np.allclose(layer.scale, scale):
        layer.scale = scale


@contextmanager
def _batched(layer: Any) -> Iterator[None]:
    """Change a Points layer's data and style with one redraw instead of one per property.

    Each setter of a napari Points layer re-slices it and makes the canvas rebuild every
    marker and label (about 15 ms each on software OpenGL); the whole swap of a case's
    points took 35-70 ms. Inside this block those updates are held back and a single
    refresh follows. ``_block_refresh`` is napari's own (private) switch for this; without
    it (another napari) the block still works, only slower.
    """
    layer = _unwrap(layer)  # the private parts are not reachable through the plugin proxy
    groups = [
        layer.events,
        layer.text.events,
        *(getattr(layer, a).events for a in ("_face", "_border") if hasattr(layer, a)),
    ]
    with ExitStack() as stack:
        stack.enter_context(getattr(layer, "_block_refresh", nullcontext)())
        for group in groups:
            stack.enter_context(group.blocker_all())
        yield
    layer.refresh()


class CaseLayers:
    """Adds a case's layers to a viewer and converts between them and file-grid points/masks.

    ``updating`` is true while this class itself rewrites the layers, so listeners can
    tell the user's edits from programmatic ones.
    """

    def __init__(
        self,
        viewer: napari.Viewer,
        case_id: str,
        volume: Volume,
        points: Sequence[LabelledPoint] = (),
        image: LayerDataTuple | None = None,
        labels: LayerDataTuple | None = None,
    ) -> None:
        """Add the case's layers; ``image``/``labels`` are layer tuples prepared off the GUI thread.

        Without them they are computed here (an empty mask when ``labels`` is None).
        """
        self.viewer, self.case_id, self.volume = viewer, case_id, volume
        self.view = volume.view
        self.updating = False
        self.unsure: dict[str, float] = {}  # level -> uncertainty, from the active-learning ranking
        self.placeholders: Any = None  # the missing levels' Points layer, once the ranking places some
        data, kwargs, _ = image or image_layer_data(volume)
        self.image = viewer.add_image(data, **{**kwargs, "name": case_id})
        data, kwargs, _ = labels or prepare_labels(None, volume)
        self.labels = viewer.add_labels(data, **{**kwargs, "name": f"{case_id} mask"})
        self.points_layers: dict[str, napari.layers.Points] = {}
        for kind in KINDS:
            data, kwargs, _ = points_layer_data(points, volume, kind)
            kwargs["name"] = f"{case_id} {anatomy.KIND_PLURAL[kind]}"
            self.points_layers[kind] = viewer.add_points(data, **kwargs)
        self._frame()

    def _frame(self) -> None:
        self.viewer.dims.axis_labels = self.image.axis_labels
        self.viewer.dims.margin_left = self.viewer.dims.margin_right = (POINTS_SLAB_MM, 0.0, 0.0)
        self.centre_on_points()
        self.viewer.reset_view()

    def intact(self) -> bool:
        """True while every layer of the case is still in the viewer (the user may delete one)."""
        return all(layer in self.viewer.layers for layer in self.layers)

    def load(
        self,
        case_id: str,
        volume: Volume,
        points: Sequence[LabelledPoint],
        image: LayerDataTuple,
        labels: LayerDataTuple,
    ) -> None:
        """Show another case in the same layers.

        Much faster than removing and adding layers: napari runs a full garbage collection
        per removed layer and builds new visuals per added one (about 1.5 s per case).
        """
        self.case_id, self.volume, self.view = case_id, volume, volume.view
        self.unsure = {}
        self.set_placeholders(())
        with self._updating():
            for layer, (data, kwargs, _), name in (
                (self.image, image, case_id),
                (self.labels, labels, f"{case_id} mask"),
            ):
                layer.data = data
                _set_scale(layer, kwargs["scale"])
                layer.metadata, layer.name = kwargs["metadata"], name
            self.image.reset_contrast_limits_range()
            self.image.contrast_limits = kwargs_limits(image)
            for kind, layer in self.points_layers.items():
                _, kwargs, _ = points_layer_data((), volume, kind)
                _set_scale(layer, kwargs["scale"])
                layer.metadata = kwargs["metadata"]
                layer.name = f"{case_id} {anatomy.KIND_PLURAL[kind]}"
        self.set_points(points)
        self._frame()

    # ------------------------------------------------------------------ layers
    @property
    def layers(self) -> list[Any]:
        """Every layer of the case, bottom first."""
        return [self.image, self.labels, *self.points_layers.values()]

    def remove(self) -> None:
        """Take the case's layers out of the viewer."""
        for layer in [*self.layers, self.placeholders]:
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)

    def kind_of(self, layer: Any) -> str | None:
        """``"vertebra"``/``"disc"`` for the case's points layers, else None.

        A plugin widget sees napari's layers through proxies while event sources are the
        layers themselves, so both sides are unwrapped before comparing.
        """
        target = _unwrap(layer)
        return next((k for k, lay in self.points_layers.items() if _unwrap(lay) is target), None)

    @contextmanager
    def _updating(self) -> Any:
        was, self.updating = self.updating, True
        try:
            yield
        finally:
            self.updating = was

    def centre_on_points(self) -> None:
        """Show the sagittal slice through the middle of the points (or the middle of the scan)."""
        coords = [lay.data[:, 0] for lay in self.points_layers.values() if len(lay.data)]
        middle = float(np.median(np.concatenate(coords))) if coords else (self.image.data.shape[0] - 1) / 2
        self.viewer.dims.set_point(0, middle * self.image.scale[0])

    # ------------------------------------------------------------------ points
    def layer_points(self, kind: str) -> list[LabelledPoint]:
        """Points of one layer, in layer order, on the file grid."""
        layer = self.points_layers[kind]
        if not len(layer.data):
            return []
        ijk_vox = self.view.display_to_vox(layer.data)
        levels, scores = layer.features["level"], layer.features["score"]
        return [
            LabelledPoint(str(level), tuple(float(v) for v in ijk), float(score))  # type: ignore[arg-type]
            for level, score, ijk in zip(levels, scores, ijk_vox, strict=True)
        ]

    def points(self) -> Points:
        """Every point (vertebrae then discs, each in layer order), on the file grid."""
        return tuple(p for kind in KINDS for p in self.layer_points(kind))

    def global_index(self, kind: str, index: int) -> int:
        """Index in :meth:`points` of point ``index`` of the ``kind`` layer."""
        offset = 0 if kind == KINDS[0] else len(self.points_layers[KINDS[0]].data)
        return offset + index

    def set_points(self, points: Sequence[LabelledPoint], select: Sequence[int] = ()) -> None:
        """Show ``points`` (file grid) in the two layers; ``select`` = indices into ``points`` to select."""
        with self._updating():
            for kind in KINDS:
                layer = self.points_layers[kind]
                data, kwargs, _ = points_layer_data(points, self.volume, kind)
                with _batched(layer):
                    layer.selected_data = set()
                    layer.data = data
                    layer.features = kwargs["features"]
                    self._apply_style(layer, kwargs)
        for kind in KINDS:
            wanted = [i for i in select if points[i].kind == kind]
            if wanted:
                order = [i for i, p in enumerate(points) if p.kind == kind]
                self.points_layers[kind].selected_data = {order.index(i) for i in wanted}

    def restyle(self, kind: str) -> None:
        """Recolour a points layer from its features (level colours, low-score borders)."""
        layer = self.points_layers[kind]
        _, kwargs, _ = points_layer_data(self.layer_points(kind), self.volume, kind)
        with self._updating(), _batched(layer):
            self._apply_style(layer, kwargs)
            layer.text.refresh(layer.features)

    def _apply_style(self, layer: Any, kwargs: dict[str, Any]) -> None:
        if not len(layer.data):
            return
        layer.face_color = kwargs["face_color"]
        flagged = np.isin(np.asarray(layer.features["level"], dtype=str), list(self.unsure))
        layer.border_color = [UNSURE_COLOUR if f else c for f, c in zip(flagged, kwargs["border_color"], strict=True)]
        layer.border_width = np.where(flagged, UNSURE_BORDER, kwargs["border_width"])

    def set_unsure(self, levels: dict[str, float]) -> None:
        """Give the points of ``levels`` (the ranking's likely-wrong ones) an orange border; ``{}`` clears."""
        self.unsure = dict(levels)
        for kind in KINDS:
            self.restyle(kind)

    # ------------------------------------------------------------------ missing levels
    def set_placeholders(self, missing: Sequence[tuple[str, Sequence[float], str]]) -> None:
        """Show missing levels ``(level, scanner xyz mm, reason)`` as orange named crosses; ``()`` clears.

        Levels the case already has are left out (the researcher may have added them).
        """
        present = {p.level for p in self.points()}
        shown = [(level, xyz_mm, reason) for level, xyz_mm, reason in missing if level not in present]
        if self.placeholders is None and not shown:
            return
        ijk_vox = self.volume.geometry.mm_to_vox(np.array([m[1] for m in shown])) if shown else np.zeros((0, 3))
        data = self.view.vox_to_display(ijk_vox) if shown else np.zeros((0, 3))
        features = {"level": [m[0] for m in shown], "reason": [m[2] for m in shown]}
        if self.placeholders is None or self.placeholders not in self.viewer.layers:
            self.placeholders = self.viewer.add_points(
                data,
                name=f"{self.case_id} missing levels",
                scale=self.view.spacing_mm,
                axis_labels=self.image.axis_labels,
                units=("mm", "mm", "mm"),
                features=features,
                face_color=UNSURE_COLOUR,
                border_color=UNSURE_COLOUR,
                symbol=PLACEHOLDER_SYMBOL,
                size=PLACEHOLDER_SIZE,
                projection_mode="all",
                text={"string": "{level}?", "size": 10, "color": UNSURE_COLOUR, "anchor": "upper_left"},
            )
        else:
            with _batched(self.placeholders):
                self.placeholders.selected_data = set()
                _set_scale(self.placeholders, self.view.spacing_mm)
                self.placeholders.data = data
                self.placeholders.features = features
                self.placeholders.name = f"{self.case_id} missing levels"
            self.placeholders.text.refresh(self.placeholders.features)

    def take_placeholders(self, indices: Sequence[int]) -> list[LabelledPoint]:
        """Remove placeholders ``indices`` from their layer and return them as reviewed points (file grid)."""
        layer = self.placeholders
        if layer is None or not len(indices):
            return []
        chosen = sorted(set(indices))
        ijk_vox = self.view.display_to_vox(layer.data[chosen])
        levels = [str(layer.features["level"].iloc[i]) for i in chosen]
        layer.selected_data = set(chosen)
        layer.remove_selected()
        return [
            LabelledPoint(level, tuple(float(v) for v in ijk), REVIEWED_SCORE)  # type: ignore[arg-type]
            for level, ijk in zip(levels, ijk_vox, strict=True)
        ]

    def set_features(self, kind: str, index: int, **values: Any) -> None:
        """Change features (``level``, ``score``) of one point and recolour its layer."""
        layer = self.points_layers[kind]
        columns = {c: list(layer.features[c]) if c in layer.features else [None] * len(layer.data) for c in FEATURES}
        columns["kind"][index] = kind
        for column, value in values.items():
            columns[column][index] = value
        with self._updating():
            layer.features = {
                "kind": columns["kind"],
                "level": columns["level"],
                "score": np.asarray(columns["score"], float),
            }
        self.restyle(kind)

    def selected(self) -> tuple[str | None, list[int]]:
        """The active points layer's kind and its selected indices (layer order)."""
        kind = self.kind_of(self.viewer.layers.selection.active)
        if kind is None:
            return None, []
        return kind, sorted(self.points_layers[kind].selected_data)

    # ------------------------------------------------------------------ mask
    def mask_tss(self) -> np.ndarray:
        """The Labels layer's mask on the file grid (a copy, uint8 TotalSpineSeg values)."""
        return np.ascontiguousarray(self.view.to_file(np.asarray(self.labels.data)), dtype=np.uint8)

    def set_mask(self, mask: np.ndarray) -> None:
        """Show ``mask`` (display grid, e.g. an :class:`~napari_ivd.annotator.Annotator`'s) in the Labels layer."""
        with self._updating():
            self.labels.data = mask
