"""What a model sees: its input as its card states it (:class:`ModelInput`), and the steps that make it.

A model card's ``input`` block says how slices are prepared for the network (nnU-Net's
"plans" idea): the in-plane spacing they are resampled to, how many adjacent sagittal
slices are stacked as channels, the stride of the keypoint outputs, the multiple rows and
columns are padded to, and the intensity normalisation. :class:`ModelInput` reads that
block once, with the defaults in one place, and inference, training and active learning
prepare slices through the functions here, so a network always sees what it was trained on
(docs/pipeline.md fixes the pixel conventions).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from scipy import ndimage

from napari_ivd.errors import CheckpointError
from napari_ivd.io import Volume

__all__ = [
    "OUTPUT_STRIDE",
    "PAD_MULTIPLE",
    "PERCENTILE_NORM",
    "ModelInput",
    "channel_picks",
    "intensity_range",
    "network_input",
    "normalize_volume",
    "pad_to_multiple",
    "resample_slice",
]

#: Input pixels per output pixel of the heatmap / offset heads.
OUTPUT_STRIDE = 2
#: Rows and columns are padded to a multiple of this unless the card says otherwise (three
#: stride-2 steps in IvdNet; networks whose multiple depends on their config state theirs).
PAD_MULTIPLE = 8
#: The one intensity normalisation: clip to the volume's 0.5 / 99.5 percentiles, scale to [0, 1].
PERCENTILE_NORM = "percentile_0.5_99.5"
_PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class ModelInput:
    """How slices are prepared for a network: the model card's ``input`` block, typed.

    Parameters
    ----------
    spacing_mm : float
        In-plane pixel size the sagittal slices are resampled to.
    in_channels : int
        Adjacent sagittal slices stacked as channels (odd, centred on the slice; 1 = alone).
    output_stride : int
        Input pixels per pixel of the heatmap and offset outputs.
    multiple : int
        Rows and columns are zero-padded (bottom/right) to a multiple of this.
    norm : str
        Intensity normalisation; only :data:`PERCENTILE_NORM` exists.

    Raises
    ------
    ValueError
        A value out of range or an unknown ``norm``.
    """

    spacing_mm: float
    in_channels: int = 1
    output_stride: int = OUTPUT_STRIDE
    multiple: int = PAD_MULTIPLE
    norm: str = PERCENTILE_NORM

    def __post_init__(self) -> None:
        if not self.spacing_mm > 0:
            raise ValueError(f"spacing_mm must be positive, got {self.spacing_mm}")
        if self.in_channels < 1 or self.in_channels % 2 == 0:
            raise ValueError(f"in_channels must be odd (centred on the slice of interest), not {self.in_channels}")
        for name in ("output_stride", "multiple"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.norm != PERCENTILE_NORM:
            raise ValueError(f"unknown intensity normalisation {self.norm!r}; this napari-ivd knows {PERCENTILE_NORM}")

    def to_dict(self) -> dict[str, Any]:
        """The card's ``input`` block (plain JSON)."""
        return asdict(self)

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> ModelInput:
        """The ``input`` block of a model card; keys it lacks take the defaults above.

        Raises
        ------
        CheckpointError
            No ``input`` block, no ``spacing_mm``, an unknown key or a bad value; the
            message names the model.
        """
        model = card.get("name", "model")
        block = card.get("input")
        if not isinstance(block, Mapping) or "spacing_mm" not in block:
            raise CheckpointError(
                f"the card of {model} states no input spacing (input.spacing_mm); re-export the model"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(block) - known)
        if unknown:
            raise CheckpointError(
                f"the card of {model} has input keys {unknown} this napari-ivd does not know "
                f"(valid: {sorted(known)}); was it written by a newer napari-ivd?"
            )
        try:
            return cls(
                spacing_mm=float(block["spacing_mm"]),
                **{k: v if k == "norm" else int(v) for k, v in block.items() if k != "spacing_mm"},
            )
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"the card of {model} has a bad input block: {exc}; re-export the model") from exc


def intensity_range(array: np.ndarray) -> tuple[float, float]:
    """The volume's 0.5 / 99.5 intensity percentiles: the range :func:`normalize_volume` maps to [0, 1]."""
    lo, hi = np.percentile(array, _PERCENTILES)
    return float(lo), float(hi)


def normalize_volume(array: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Clip a volume to its 0.5 / 99.5 intensity percentiles and scale it to [0, 1] (:data:`PERCENTILE_NORM`).

    One normalisation for training and inference, so a model sees the same intensities
    whatever the scanner's units. A constant volume maps to all zeros.

    Parameters
    ----------
    array : (...) real array
        Intensities of the whole volume, or of part of it when ``value_range`` is given.
    value_range : (float, float), optional
        The whole volume's range (:func:`intensity_range`), to normalise it slice by slice
        without a float copy of all of it.

    Returns
    -------
    (...) float32 array in [0, 1]
    """
    lo, hi = value_range or intensity_range(array)
    if not hi > lo:
        return np.zeros(np.shape(array), dtype=np.float32)
    out = np.array(array, dtype=np.float32)  # the one float copy, scaled in place
    out -= np.float32(lo)
    out /= np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def _resampled_shape(shape: tuple[int, ...], spacing_in: Sequence[float], spacing_out: float) -> tuple[int, int]:
    """Pixels of spacing_out that fit within the span of the input pixel centres."""
    return tuple(  # type: ignore[return-value]
        math.floor((n - 1) * s / spacing_out + 1e-6) + 1 for n, s in zip(shape, spacing_in, strict=True)
    )


def resample_slice(slice2d: np.ndarray, spacing_in: tuple[float, float], spacing_out: float) -> np.ndarray:
    """Resample a 2D slice to isotropic ``spacing_out`` mm by linear interpolation.

    Output pixel (r, c) lies at ``(r * spacing_out, c * spacing_out)`` mm from the centre of
    input pixel (0, 0), as docs/pipeline.md fixes, so keypoints convert by a pure scale:
    ``row = j * spacing_in[0] / spacing_out``. The output covers the input's pixel centres.

    Parameters
    ----------
    slice2d : (J, K) array
        A display slice (rows S→I, cols A→P).
    spacing_in : (float, float)
        Its row and column spacing in mm.
    spacing_out : float
        Target spacing in mm.

    Returns
    -------
    (R, C) float32 array
        ``R = floor((J - 1) * spacing_in[0] / spacing_out) + 1``, likewise C.
    """
    if spacing_out <= 0 or min(spacing_in) <= 0:
        raise ValueError(f"spacings must be positive, got in={spacing_in}, out={spacing_out}")
    src = np.asarray(slice2d)
    if src.ndim != 2:
        raise ValueError(f"expected a 2D slice, got shape {src.shape}")
    shape_px = _resampled_shape(src.shape, spacing_in, spacing_out)
    step_vox = np.array([spacing_out / spacing_in[0], spacing_out / spacing_in[1]])
    if np.all(step_vox == 1.0):  # already on the grid: interpolating would copy it, slowly
        return src.astype(np.float32, copy=True)
    return ndimage.affine_transform(src, step_vox, output_shape=shape_px, order=1, mode="nearest", output=np.float32)


def network_input(volume: Volume, model_input: ModelInput, indices: Sequence[int] | None = None) -> np.ndarray:
    """What the network sees: the display's sagittal slices (all, or ``indices``), normalised and resampled.

    Each slice is normalised (with the whole volume's range) and resampled in-plane to
    ``model_input.spacing_mm`` on its own into one preallocated stack, so no float copy of
    the whole scan is made: a large scan costs its voxels plus the (float32) stack.

    Returns
    -------
    (slices, rows, cols) float32 array in [0, 1]
    """
    view = volume.view
    display, display_spacing = view.to_display(volume.array), view.spacing_mm[1:]
    value_range = intensity_range(volume.array)
    picked = range(len(display)) if indices is None else [int(i) for i in indices]

    def prepared(index: int) -> np.ndarray:
        return resample_slice(normalize_volume(display[index], value_range), display_spacing, model_input.spacing_mm)

    first = prepared(picked[0])
    out = np.empty((len(picked), *first.shape), first.dtype)
    out[0] = first
    for k, index in enumerate(picked[1:], start=1):
        out[k] = prepared(index)
    return out


def channel_picks(index: int, n_slices: int, in_channels: int) -> np.ndarray:
    """The slices stacked as channels for slice ``index``: ``in_channels`` neighbours centred on it, clamped."""
    half = in_channels // 2
    return np.clip(np.arange(index - half, index - half + in_channels), 0, n_slices - 1)


def pad_to_multiple(x: np.ndarray, multiple: int) -> np.ndarray:
    """``x`` zero-padded at the bottom/right so its last two axes are multiples of ``multiple``."""
    h, w = x.shape[-2:]
    return np.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, (-h) % multiple), (0, (-w) % multiple)])
