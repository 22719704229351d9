"""From a volume in any orientation to named disc/vertebra points and a TotalSpineSeg mask.

Steps (see docs/pipeline.md for the shared conventions):

1. show the volume sagittally (``SagittalView``), normalise intensities, resample every
   sagittal slice in-plane to the model's spacing;
2. run the network on sagittal slices every 8 mm, then every 4 mm around the two strongest,
   to find the spine: the mid-sagittal slab is where the keypoint heatmaps respond most;
   then segment the slices the spine covers, every 2 mm, interpolating those between;
3. average heatmaps and offsets over the slab and name points (:func:`name_points`): decode
   candidates by Hough voting, and keep the combination that best fits the learned skeleton
   (Azad 2021), so false positives drop, levels stay in order and nothing is named that is
   not seen; weaker detections in the chain's gaps take the levels missing there
   (``skeleton.fill_gaps``) and detections that continue the chain past its ends take the
   next levels (``skeleton.extend_chain``; a weaker one only under its own name); a model
   with an S1 label that sees the sacrum confidently one step below the chain's lowest disc
   names the chain from it (``skeleton.anchor_on_sacrum``: that disc is L5-S1), so a chain
   counted one level off is corrected; so does one that sees L5, L5-S1 and S1 in a row at a
   chain vertebra named otherwise, the chain having run past the sacrum
   (``skeleton.anchor_on_junction``);
4. threshold the per-slice vertebral-body/disc masks, keep the 3D components that hold a
   named structure, give each voxel the level of the nearest named structure of its kind,
   and return the mask on the file's own grid; below the chain's lowest named structure, down
   to L5-S1, unnamed components of the next level's kind half a level below name the levels
   the heatmaps missed, one at a time (``_continue_from_mask``);
5. place each structure left-right at the centroid of its own mask (where the heatmaps
   respond across slices when it has none).

On CPUs with native bfloat16 the network runs under bfloat16 autocast.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from napari_ivd import anatomy
from napari_ivd.io import Volume
from napari_ivd.io.annotations import LabelledPoint, label_centroids
from napari_ivd.io.bundle import write_bundle
from napari_ivd.models.decode import Candidate, decode, pool_channels
from napari_ivd.preprocess import ModelInput, channel_picks, network_input, pad_to_multiple
from napari_ivd.progress import Job, Progress, Tally, run_steps
from napari_ivd.skeleton import (
    SkeletonPrior,
    anchor_on_junction,
    anchor_on_sacrum,
    extend_chain,
    fill_gaps,
    gaps,
    search,
)

log = logging.getLogger(__name__)

KIND_CHANNEL = {"vertebra": 0, "disc": 1}
#: Lowest heatmap probability of a candidate the skeleton search considers.
MIN_SCORE = 0.1
#: Lowest heatmap probability of a detection that fills a gap in the chosen chain: the
#: structures on either side vouch for it, and its low score marks it for review.
GAP_MIN_SCORE = 0.05
#: Fewer structures than this are proposed only when one of them scores CONFIDENT_SCORE. Two
#: levels (vertebra, disc, vertebra, disc) is the least a lumbar scan shows; a lumbar model
#: trained with contrast and crop augmentation finds three weak "L3, L3-L4, L4" on a cervical
#: scan (TPTBox's C5-C7 sample, peaks 0.13-0.42), so three are no spine.
MIN_STRUCTURES = 4
CONFIDENT_SCORE = 0.5
#: A mask voxel is given a level only this fraction of the level spacing (S-I) from it.
LEVEL_REACH = 0.6
#: Vertebra-to-vertebra (or disc-to-disc) distance assumed when only one is named, in mm.
TYPICAL_LEVEL_STEP_MM = 33.0
#: The network runs sagittal slices at most this far apart (mm) where it samples densely: the
#: masks of slices between them are interpolated, and the mid-sagittal slab whose heatmaps name
#: the levels skips them. On 1 mm slices this halves both passes and leaves the dev and training
#: figures unchanged (masks: distance to target within 0.03 mm, Dice within 0.002; slab: within
#: 0.003 mm, Dice equal).
DENSE_STEP_MM = 2.0
#: A named point takes the mask component it lies in, else the nearest one within this distance.
COMPONENT_REACH_MM = 5.0
#: Below the chain's lowest named structure, down to L5-S1, an unnamed mask component of the
#: next level's kind is that level when its centroid lies this far below, in level steps
#: (the next structure sits about half a step below), ...
FROM_MASK_STEPS = (0.25, 0.9)
#: ... at most this far (in steps) off the chain's line, ...
FROM_MASK_OFF_LINE = 0.5
#: ... and holds at least this share of the median named structure of its kind (not a speck).
FROM_MASK_MIN_SHARE = 0.25


@dataclass(frozen=True)
class PredictedStructure:
    """One named disc or vertebra: where it is and how sure the model is."""

    name: str
    kind: str
    score: float
    ijk_vox: np.ndarray  # (3,) fractional voxel index on the file grid
    xyz_mm: np.ndarray  # (3,) scanner RAS mm
    #: Named from the mask, not from its own heatmap (``score`` is still that heatmap's value there).
    from_mask: bool = False


@dataclass(frozen=True)
class Prediction:
    """Everything ``predict`` proposes for one volume, on the volume's own file grid."""

    structures: tuple[PredictedStructure, ...]
    mask_tss: np.ndarray  # file grid, TotalSpineSeg values
    model: str
    mid_sagittal_mm: float  # left-right position of the slab centre, display mm
    seconds: dict[str, float] = field(default_factory=dict)
    #: True when the levels were renamed from the sacrum (``skeleton.anchor_on_sacrum`` or
    #: ``skeleton.anchor_on_junction``), not as the network counted them: the viewer and
    #: active learning can say so.
    named_from_sacrum: bool = False
    #: The skeleton the names were searched with (the model card's), None without one: the
    #: chain checks measure missing levels against it (:func:`napari_ivd.active.check_prediction`).
    skeleton: SkeletonPrior | None = None

    def by_name(self) -> dict[str, PredictedStructure]:
        """Structures keyed by level name."""
        return {s.name: s for s in self.structures}


@dataclass(frozen=True)
class _Grid:
    """The in-plane resampled display grid the network sees."""

    display_spacing_mm: tuple[float, float, float]
    spacing_mm: float
    shape: tuple[int, int, int]  # (slices, rows, cols) after resampling

    def to_display(self, lrc: np.ndarray) -> np.ndarray:
        """(N, 3) (slice, row, col) on this grid -> display voxel indices."""
        _, row_mm, col_mm = self.display_spacing_mm
        return np.asarray(lrc, float) * np.array([1.0, self.spacing_mm / row_mm, self.spacing_mm / col_mm])


def _reduced_precision(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bfloat16 autocast on CPUs with native bfloat16 (AVX512-BF16 or AMX), else nothing.

    On such CPUs the forward passes take half the time. Only the network's arithmetic is
    rounded; its outputs are cast back to float32 before decoding. See the model card for
    the effect on accuracy. Without native support, bfloat16 would be emulated and slower,
    so full precision stays. CUDA keeps full precision: it is fast enough, and no GPU was
    at hand to check reduced precision there.
    """
    if device.type == "cpu" and _native_cpu_bfloat16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _native_cpu_bfloat16() -> bool:
    """Whether this CPU computes in bfloat16 natively (torch's own CPU feature probes)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def _c_ordered(x: torch.Tensor) -> torch.Tensor:
    """``x`` as C-ordered float32, cast and copied in one pass.

    A channels-last network's outputs are NHWC in memory, and per-channel reads of those
    cost 11 ms a slice.
    """
    return x.to(torch.float32, memory_format=torch.contiguous_format)


class _SliceRunner:
    """Runs the network on chosen slices once each and keeps their outputs at full slice size."""

    def __init__(self, model: torch.nn.Module, resampled: np.ndarray, model_input: ModelInput, device: torch.device):
        self.model, self.resampled, self.device = model, resampled, device
        self.in_channels, self.multiple, self.stride = (
            model_input.in_channels,
            model_input.multiple,
            model_input.output_stride,
        )
        self.heatmap: dict[int, np.ndarray] = {}
        self.offset: dict[int, np.ndarray] = {}
        self.seg: dict[int, np.ndarray] = {}
        self.rows, self.cols = resampled.shape[1:]
        self.padded = (self.rows + (-self.rows) % self.multiple, self.cols + (-self.cols) % self.multiple)

    @torch.inference_mode()
    def run(
        self,
        indices: list[int],
        window: tuple[int, int, int, int] | None = None,
        seg_only: bool = False,
        batch_size: int = 8,
    ) -> None:
        """Run slices not run yet; ``window`` (r0, r1, c0, c1), multiples of ``multiple``, limits them in-plane.

        ``multiple`` must also be a multiple of the output stride, so the window maps onto whole output pixels.

        ``seg_only`` skips the keypoint head: such slices get masks but no heatmaps.
        """
        r0, r1, c0, c1 = window or (0, self.padded[0], 0, self.padded[1])
        todo = [i for i in dict.fromkeys(indices) if i not in (self.seg if seg_only else self.heatmap)]  # once each
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            n_slices = len(self.resampled)
            stacks = [
                pad_to_multiple(self.resampled[channel_picks(i, n_slices, self.in_channels)], self.multiple)[
                    :, r0:r1, c0:c1
                ]
                for i in chunk
            ]
            x = torch.from_numpy(np.stack(stacks).astype(np.float32)).to(self.device)
            with _reduced_precision(self.device):
                out = self.model(x, seg_only=True) if seg_only else self.model(x)
            seg = torch.sigmoid(_c_ordered(out["seg"])).cpu().numpy()
            for j, i in enumerate(chunk):
                self.seg[i] = self._paste(seg[j], r0, c0, 1)[:, : self.rows, : self.cols]
            if not seg_only:
                heat = torch.sigmoid(_c_ordered(out["heatmap"])).cpu().numpy()
                offset = _c_ordered(out["offset"]).cpu().numpy()
                s = self.stride
                for j, i in enumerate(chunk):
                    self.heatmap[i] = self._paste(heat[j], r0 // s, c0 // s, s)
                    self.offset[i] = self._paste(offset[j], r0 // s, c0 // s, s)

    def fill_seg(self, indices: list[int]) -> None:
        """Masks of the slices in ``indices`` not run: linear interpolation between the nearest run slices."""
        done = np.array(sorted(self.seg))
        for i in indices:
            if i in self.seg:
                continue
            k = np.searchsorted(done, i)
            below, above = int(done[max(k - 1, 0)]), int(done[min(k, len(done) - 1)])
            weight = (i - below) / (above - below) if above != below else 0.0
            self.seg[i] = (1 - weight) * self.seg[below] + weight * self.seg[above]

    def _paste(self, part: np.ndarray, r0: int, c0: int, stride: int) -> np.ndarray:
        if part.shape[1:] == (self.padded[0] // stride, self.padded[1] // stride):
            return part  # a whole slice: nothing to paste into
        full = np.zeros((part.shape[0], self.padded[0] // stride, self.padded[1] // stride), np.float32)
        full[:, r0 : r0 + part.shape[1], c0 : c0 + part.shape[2]] = part
        return full

    def window(self, indices: list[int], margin_px: int = 32) -> tuple[int, int, int, int] | None:
        """In-plane box (multiples of ``self.multiple``) around every vertebra/disc pixel seen on ``indices``."""
        seen = np.any([self.seg[i].max(axis=0) > 0.5 for i in indices], axis=0)
        if not seen.any():
            return None
        (first_row, first_col), (last_row, last_col) = _bounding_box(seen)
        r0, c0 = (max(0, (v - margin_px) // self.multiple * self.multiple) for v in (first_row, first_col))
        r1 = min(self.padded[0], -(-(last_row + margin_px + 1) // self.multiple) * self.multiple)
        c1 = min(self.padded[1], -(-(last_col + margin_px + 1) // self.multiple) * self.multiple)
        return int(r0), int(r1), int(c0), int(c1)


def _heat_response(runner: _SliceRunner, indices: list[int]) -> np.ndarray:
    """Per slice, the sum over channels of each channel's strongest heatmap value."""
    return np.array([runner.heatmap[i].reshape(runner.heatmap[i].shape[0], -1).max(axis=1).sum() for i in indices])


def _find_spine(runner: _SliceRunner, coarse: list[int]) -> tuple[list[int], list[int]]:
    """Run the slices that locate the spine: (every slice run, the dense runs around the spine).

    Every other coarse slice first; then the coarse slices within two steps of the two
    sparse slices where the heatmaps respond most, where the mid-sagittal plane is refined.
    The response is usually one broad hump across the spine, so the sparse pass lands on it
    for about three quarters of the cost of running every coarse slice. Refining around the
    two strongest samples, not just the strongest, keeps a second hump from winning: on the
    bundled sample's narrow field of view the edge slice responds more than the sparse
    samples on either side of the spine's true centre.
    """
    sparse = coarse[::2]
    runner.run(sparse)
    strongest = np.argsort(_heat_response(runner, sparse))[::-1][:2]
    dense: set[int] = set()
    for k in strongest:
        best = coarse.index(sparse[k])
        dense.update(coarse[max(0, best - 2) : best + 3])
    runner.run(sorted(dense))
    return sorted(set(sparse) | dense), sorted(dense)


def _spine_centre(runner: _SliceRunner, indices: list[int]) -> float:
    """Slice index (fractional) where the heatmaps respond most: the mid-sagittal plane.

    ``indices`` are sorted, run slices; the maximum is refined by a parabola through its
    neighbours when they are evenly spaced around it.
    """
    scores = _heat_response(runner, indices)
    best = int(np.argmax(scores))
    if 0 < best < len(indices) - 1 and indices[best] - indices[best - 1] == indices[best + 1] - indices[best]:
        left, mid, right = scores[best - 1 : best + 2]
        denom = left - 2 * mid + right
        shift = 0.5 * (left - right) / denom if denom < 0 else 0.0
        step = indices[best + 1] - indices[best]
        return float(indices[best] + shift * step)
    return float(indices[best])


def _spine_extent(runner: _SliceRunner, indices: list[int], n_slices: int, step: int) -> list[int]:
    """Every slice between the outermost sampled slices that show a vertebral body or disc."""
    areas = np.array([(runner.seg[i] > 0.5).sum() for i in indices], float)
    if areas.max() <= 0:
        return []
    covered = [i for i, a in zip(indices, areas, strict=True) if a >= 0.1 * areas.max()]
    return list(range(max(0, covered[0] - step), min(n_slices, covered[-1] + step + 1)))


def _lateral_position(runner: _SliceRunner, channel: int, row: float, col: float, stride: int) -> float:
    """Left-right slice index of a structure: heatmap-weighted mean over the slices seen."""
    y, x = round((row + 0.5) / stride - 0.5), round((col + 0.5) / stride - 0.5)
    slices = sorted(runner.heatmap)
    values = []
    for i in slices:
        h = runner.heatmap[i][channel]
        window = h[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2]
        values.append(float(window.max()) if window.size else 0.0)
    values_arr = np.array(values)
    weights = np.where(values_arr >= 0.5 * values_arr.max(), values_arr, 0.0)
    return float(np.dot(weights, slices) / weights.sum())


def _bounding_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last index of ``mask``'s true voxels along each axis; ``mask`` must have one.

    From one projection per axis: about 10x faster than ``ndimage.find_objects`` on a 77x384x384 mask.
    """
    spans = [
        np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis))) for axis in range(mask.ndim)
    ]
    return np.array([s[0] for s in spans]), np.array([s[-1] for s in spans])


def _label_masks(runner: _SliceRunner, grid: _Grid, named: dict[str, np.ndarray], threshold: float = 0.5) -> np.ndarray:
    """TotalSpineSeg mask on the resampled grid: components holding a named structure, by nearest level.

    A voxel takes the level of the nearest named structure of its kind, but only within
    :data:`LEVEL_REACH` of the spacing between named neighbours (superior-inferior): a
    vertebra the model did not name stays unlabelled instead of swelling its neighbour.
    """
    out = np.zeros(grid.shape, np.uint8)
    voxel_mm = np.array([grid.display_spacing_mm[0], grid.spacing_mm, grid.spacing_mm])
    for kind, channel in KIND_CHANNEL.items():
        points = {n: p for n, p in named.items() if anatomy.structure(n).kind == kind}
        if not points:
            continue
        fg = np.zeros(grid.shape, bool)
        for i, seg in runner.seg.items():
            fg[i] = seg[channel] > threshold
        if not fg.any():
            continue
        # label only the spine's box (10x faster), widened so every component in reach of a point is in it
        first, last = _bounding_box(fg)
        pad = np.ceil(COMPONENT_REACH_MM / voxel_mm).astype(int)
        origin, end = np.maximum(first - pad, 0), np.minimum(last + 1 + pad, grid.shape)
        components, _ = ndimage.label(fg[tuple(slice(a, b) for a, b in zip(origin, end, strict=True))])
        lrc = np.array(list(points.values()))
        idx = np.clip(np.round(lrc).astype(int), 0, np.array(grid.shape) - 1) - origin
        inside = np.all((idx >= 0) & (idx < components.shape), axis=1)
        kept = {_nearest_component(components, p, voxel_mm) for p in idx[inside]} - {0}
        region = np.isin(components, sorted(kept))
        if not region.any():
            continue
        coords = np.argwhere(region) + origin
        mm, centres = coords * voxel_mm, lrc * voxel_mm
        nearest_level = np.argmin(((mm[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
        step_mm = _level_step_mm(points, centres[:, 1])
        close = np.abs(mm[:, 1] - centres[nearest_level, 1]) <= LEVEL_REACH * step_mm
        values = np.array([anatomy.structure(n).tss_value or 0 for n in points], np.uint8)
        out[tuple(coords[close].T)] = values[nearest_level[close]]
    return out


def _next_below_from_mask(
    runner: _SliceRunner,
    grid: _Grid,
    named: dict[str, np.ndarray],
    mask: np.ndarray,
    level: str,
    threshold: float = 0.5,
) -> np.ndarray | None:
    """The voxels of ``level``, the level right below the chain's lowest named structure, from the mask.

    An unnamed component of ``level``'s kind (vertebral body or disc) is taken when its centroid
    lies :data:`FROM_MASK_STEPS` of a level step below the lowest named structure (the step
    from the structure of the same kind above it, else the median one), within
    :data:`FROM_MASK_OFF_LINE` steps of that line, and holds :data:`FROM_MASK_MIN_SHARE` of
    the named structures of its kind (not a speck). Returns its voxels ``(n, 3)`` on the
    resampled grid, or None.
    """
    kind = anatomy.structure(level).kind
    values = [anatomy.structure(n).tss_value for n in named if anatomy.structure(n).kind == kind]
    sizes = [size for size in (int(np.count_nonzero(mask == v)) for v in values if v) if size]
    if not sizes:
        return None
    voxel_mm = np.array([grid.display_spacing_mm[0], grid.spacing_mm, grid.spacing_mm])
    last = max(named, key=lambda n: anatomy.structure(n).order)
    end = named[last] * voxel_mm
    order = anatomy.structure(last).order
    above = anatomy.STRUCTURES[order - 2].name if order >= 2 else None  # the same kind, one level up
    if above in named:
        step = end - named[above] * voxel_mm
    else:
        same = {n: p for n, p in named.items() if anatomy.structure(n).kind == anatomy.structure(last).kind}
        step = np.array([0.0, _level_step_mm(same, np.array([p[1] for p in same.values()]) * grid.spacing_mm), 0.0])
    length = float(np.linalg.norm(step))
    if length <= 0:
        return None
    along = step / length
    lo = np.maximum(np.floor((end - length) / voxel_mm).astype(int), 0)
    hi = np.minimum(np.ceil((end + 2 * length) / voxel_mm).astype(int) + 1, grid.shape)
    lo[0], hi[0] = 0, grid.shape[0]  # every slice the spine covers
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    fg = np.zeros(tuple(hi - lo), bool)
    for i, seg in runner.seg.items():
        fg[i] = seg[KIND_CHANNEL[kind]][box[1:]] > threshold
    fg &= mask[box] == 0
    components, _ = ndimage.label(fg)
    min_size = FROM_MASK_MIN_SHARE * float(np.median(sizes))
    best: np.ndarray | None = None
    for k, where in enumerate(ndimage.find_objects(components), start=1):
        voxels = np.argwhere(components[where] == k) + [s.start for s in where]
        if len(voxels) < min_size or (best is not None and len(voxels) <= len(best)):
            continue
        offset = (voxels.mean(axis=0) + lo) * voxel_mm - end
        t = float(offset @ along) / length
        off_line = float(np.linalg.norm(offset - t * length * along)) / length
        if FROM_MASK_STEPS[0] <= t <= FROM_MASK_STEPS[1] and off_line <= FROM_MASK_OFF_LINE:
            best = voxels
    return None if best is None else best + lo


def _continue_from_mask(
    runner: _SliceRunner, grid: _Grid, named: dict[str, np.ndarray], mask: np.ndarray, labels: list[str]
) -> list[str]:
    """Name the levels below the chain's end from unnamed mask components, down to L5-S1; returns them.

    Few training scans label L5-S1 or name T1w levels, so on unseen scans the heatmaps of the
    lower levels are often weak where the segmentation, learnt from every level's bodies and
    discs, still shows them: the bundled starter named L5-S1 on 7 of 22 distinct unseen VB3
    scans that show the sacrum (15 with this step) and stopped at L2 on VB1/case-17.

    One level at a time (each must be the very next level and a label of the model), each
    labelled in ``mask`` and added to ``named`` before the next is looked for; stops at the
    first level the mask does not show where it belongs.
    """
    added: list[str] = []
    while named:
        last = max(named, key=lambda n: anatomy.structure(n).order)
        if anatomy.structure(last).order >= anatomy.structure(anatomy.SACRAL_DISC).order:
            break
        level = anatomy.STRUCTURES[anatomy.structure(last).order + 1].name
        if level not in labels:
            break
        voxels = _next_below_from_mask(runner, grid, named, mask, level)
        if voxels is None:
            break
        mask[tuple(voxels.T)] = anatomy.structure(level).tss_value
        named[level] = voxels.mean(axis=0)
        added.append(level)
    return added


def _centre_left_right_on_masks(named: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    """Each named structure with mask voxels moved left-right to their centroid (slice index).

    The heatmaps are sharp in-plane but only sampled on some sagittal slices, so their
    left-right estimate (:func:`_lateral_position`) is the coarsest coordinate; the
    structure's own mask spans every slice it covers, and its centroid is the body's or
    disc's centre by definition. On the six dev cases this cut the left-right error from
    1.34 / 1.65 mm to 0.75 / 0.75 mm (discs / vertebrae). Structures without mask voxels
    keep their heatmap estimate.
    """
    value_of = {name: anatomy.structure(name).tss_value or 0 for name in named}
    centroids = label_centroids(mask, [v for v in value_of.values() if v], axes=(0,))
    out = {}
    for name, lrc in named.items():
        out[name] = lrc.copy()
        if value_of[name] in centroids:
            out[name][0] = centroids[value_of[name]][0]
    return out


def _level_step_mm(points: dict[str, np.ndarray], rows_mm: np.ndarray) -> float:
    """Median S-I distance from one level to the next of the same kind, skipped levels allowed for."""
    levels = [anatomy.structure(n).order / 2 for n in points]  # vertebrae and discs alternate in order
    pairs = sorted(zip(levels, rows_mm, strict=True))
    steps = [(b_mm - a_mm) / (b - a) for (a, a_mm), (b, b_mm) in itertools.pairwise(pairs)]
    return float(np.median(steps)) if steps else TYPICAL_LEVEL_STEP_MM


def _nearest_component(
    components: np.ndarray, point: np.ndarray, voxel_mm: np.ndarray, reach_mm: float = COMPONENT_REACH_MM
) -> int:
    """Label of the component at ``point``, else of the nearest one within ``reach_mm``; 0 if none."""
    if components[tuple(point)]:
        return int(components[tuple(point)])
    reach = np.ceil(reach_mm / voxel_mm).astype(int)
    lo = np.maximum(point - reach, 0)
    box = components[tuple(slice(a, b) for a, b in zip(lo, point + reach + 1, strict=True))]
    found = np.argwhere(box)
    if not found.size:
        return 0
    distance_mm = np.linalg.norm((found + lo - point) * voxel_mm, axis=1)
    best = int(np.argmin(distance_mm))
    return int(box[tuple(found[best])]) if distance_mm[best] <= reach_mm else 0


def _mask_to_display(mask: np.ndarray, grid: _Grid, display_shape: tuple[int, int, int]) -> np.ndarray:
    """Nearest-neighbour lookup of each display pixel's resampled pixel (same mm position)."""
    index = [
        np.clip(
            np.round(np.arange(display_shape[a]) * grid.display_spacing_mm[a] / grid.spacing_mm), 0, grid.shape[a] - 1
        )
        for a in (1, 2)
    ]
    return mask[:, index[0].astype(int)][:, :, index[1].astype(int)]


#: The steps a prediction reports, in order; its job's total is their number.
PREDICT_STAGES = ("finding the spine", "segmenting", "naming")


def predict_job(
    volume: Volume,
    model: torch.nn.Module,
    card: dict[str, Any],
    device: str | torch.device = "cpu",
    coarse_step_mm: float = 4.0,
) -> Job[Prediction]:
    """Predict as a job of :data:`PREDICT_STAGES`, reporting each; the job's result is the :class:`Prediction`.

    Reporting lets a GUI worker show progress and cancel between steps; use :func:`predict`
    for a plain call.
    """

    def body(tally: Tally) -> Generator[Progress, None, Prediction]:
        return (yield from _predict(tally, volume, model, card, torch.device(device), coarse_step_mm))

    return Job(len(PREDICT_STAGES), body)


def _predict(
    tally: Tally,
    volume: Volume,
    model: torch.nn.Module,
    card: dict[str, Any],
    device: torch.device,
    coarse_step_mm: float,
) -> Generator[Progress, None, Prediction]:
    """The body of :func:`predict_job`."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    labels: list[str] = list(card["labels"])
    model_input = ModelInput.from_card(card)
    spacing_mm, stride = model_input.spacing_mm, model_input.output_stride
    prior = SkeletonPrior.of_card(card)

    view = volume.view
    display_spacing = view.spacing_mm
    resampled = network_input(volume, model_input)
    grid = _Grid(display_spacing, spacing_mm, resampled.shape)  # type: ignore[arg-type]
    timings["prepare_s"] = time.perf_counter() - t0
    n_slices = resampled.shape[0]
    step = max(1, round(coarse_step_mm / display_spacing[0]))
    coarse = list(range(step // 2, n_slices, step)) or [n_slices // 2]
    runner = _SliceRunner(model, resampled, model_input, device)

    yield tally.step(f"{PREDICT_STAGES[0]} on up to {len(coarse)} sagittal slices")
    t1 = time.perf_counter()
    sampled, dense = _find_spine(runner, coarse)
    centre = _spine_centre(runner, dense)
    extent = _spine_extent(runner, sampled, n_slices, 2 * step)  # sampled every 2 steps away from the spine
    slab_half = max(1, math.ceil(3.0 / display_spacing[0]))
    dense_step = max(1, math.floor(DENSE_STEP_MM / display_spacing[0]))
    slab = list(range(max(0, round(centre) - slab_half), min(n_slices, round(centre) + slab_half + 1), dense_step))
    yield tally.step(f"{PREDICT_STAGES[1]} {len(set(extent) | set(slab))} slices")
    runner.run(slab)  # whole slices: naming levels needs the context
    # masks: only the spine's surroundings, on slices up to DENSE_STEP_MM apart; those between interpolated
    runner.run(extent[::dense_step] + extent[-1:], window=runner.window(sampled), seg_only=True)
    runner.fill_seg(extent)
    timings["network_s"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    heat = np.mean([runner.heatmap[i] for i in slab], axis=0)
    offset = np.mean([runner.offset[i] for i in slab], axis=0)
    chosen, named_from_sacrum = name_points(heat, offset, labels, stride, prior, spacing_mm, grid.shape[1:])
    named_lrc = {
        name: np.array([_lateral_position(runner, labels.index(name), c.row, c.col, stride), c.row, c.col])
        for name, c in chosen.items()
    }
    yield tally.step(f"{PREDICT_STAGES[2]} {len(chosen)} structures and labelling masks")
    mask_res = _label_masks(runner, grid, named_lrc)
    from_mask = _continue_from_mask(runner, grid, named_lrc, mask_res, labels)
    for name in from_mask:  # its score is what the network's own heatmap says there: weak, so review flags it
        lrc = named_lrc[name]
        row, col = (min(int(x // stride), n - 1) for x, n in zip(lrc[1:], heat.shape[1:], strict=True))
        chosen[name] = Candidate(name, float(lrc[1]), float(lrc[2]), float(heat[labels.index(name), row, col]))
    named_lrc = _centre_left_right_on_masks(named_lrc, mask_res)
    mask_display = _mask_to_display(mask_res, grid, view.display.shape)
    mask_file = np.ascontiguousarray(view.to_file(mask_display))

    structures = []
    for name in sorted(chosen, key=lambda n: anatomy.structure(n).order):
        ijk_display = grid.to_display(named_lrc[name][None])[0]
        ijk_vox = view.display_to_vox(ijk_display[None])[0]
        structures.append(
            PredictedStructure(
                name=name,
                kind=anatomy.structure(name).kind,
                score=float(chosen[name].score),
                ijk_vox=ijk_vox,
                xyz_mm=volume.geometry.vox_to_mm(ijk_vox[None])[0],
                from_mask=name in from_mask,
            )
        )
    timings["decode_s"] = time.perf_counter() - t2
    timings["total_s"] = time.perf_counter() - t0
    return Prediction(
        structures=tuple(structures),
        mask_tss=mask_file,
        model=str(card.get("name", card.get("arch", "model"))),
        mid_sagittal_mm=centre * display_spacing[0],
        seconds=timings,
        named_from_sacrum=named_from_sacrum,
        skeleton=prior,
    )


def name_points(
    heat: np.ndarray,
    offset: np.ndarray,
    labels: list[str],
    stride: int,
    prior: SkeletonPrior | None,
    spacing_mm: float,
    slice_shape: tuple[int, ...],
) -> tuple[dict[str, Candidate], bool]:
    """Where heatmaps become named points: at most one candidate per label, in input pixels.

    ``heat`` and ``offset`` are the slab's mean network outputs; candidates are decoded by
    Hough voting and kept inside the slice (``slice_shape``: rows, cols). With a skeleton
    ``prior`` the chain that best fits it is chosen, its gaps are filled from weaker peaks
    (down to :data:`GAP_MIN_SCORE`, per label, then per kind: :func:`_kind_candidates`) and
    it is extended past its ends (by weaker peaks too, under their own names, once it holds
    :data:`MIN_STRUCTURES`), else the best candidate per label; a confident sacrum
    then names the chain from L5-S1 (:func:`~napari_ivd.skeleton.anchor_on_sacrum`), or
    the lumbosacral junction from L5 where the chain ran past it
    (:func:`~napari_ivd.skeleton.anchor_on_junction`), and a lone doubtful pair is no
    spine, so nothing is named. Returns the named candidates and
    whether the sacrum renamed them.
    """
    rows, cols = slice_shape

    def inside(found: list[Candidate]) -> list[Candidate]:
        return [c for c in found if c.row < rows and c.col < cols]

    candidates = inside(decode(heat, offset, labels, stride=stride, min_score=MIN_SCORE))
    if prior:
        chosen = search(candidates, prior, spacing_mm=spacing_mm)
        weaker = inside(decode(heat, offset, labels, stride=stride, min_score=GAP_MIN_SCORE))
        if gaps(chosen, labels):
            chosen = fill_gaps(chosen, weaker, labels)
        if gaps(chosen, labels):  # then structures seen under no name strong enough to vote
            chosen = fill_gaps(chosen, inside(_kind_candidates(heat, offset, labels, stride)), labels)
        # weak peaks may continue a chain, never turn a doubtful pair into one
        chosen = extend_chain(chosen, candidates, labels, weaker=weaker if len(chosen) >= MIN_STRUCTURES else ())
    else:
        chosen = _best_per_label(candidates)
    chosen, named_from_sacrum = anchor_on_sacrum(chosen, candidates, labels)
    if not named_from_sacrum:
        chosen, named_from_sacrum = anchor_on_junction(chosen, candidates, labels)
    if len(chosen) < MIN_STRUCTURES and all(c.score < CONFIDENT_SCORE for c in chosen.values()):
        return {}, False  # name nothing rather than invent levels
    return chosen, named_from_sacrum


def _kind_candidates(heat: np.ndarray, offset: np.ndarray, labels: list[str], stride: int) -> list[Candidate]:
    """Discs and vertebrae the network sees but may not name: peaks of its pooled channels.

    The disc channels, and the vertebra channels, are pooled
    (:func:`~napari_ivd.models.decode.pool_channels`): on a scan unlike its training data
    a plain disc whose name the network doubts splits its probability over several
    channels, each too weak to count, while the chain around it knows its name. Each
    candidate carries its kind ("disc", "vertebra") as label, so a name given by the chain
    is never its own and its score is discounted for review; peaks down to
    :data:`GAP_MIN_SCORE` are kept. Only the gaps that the peaks per label left take them
    (so a level found under its own or a neighbour's name keeps that detection), and never
    past the chain's ends, where nothing vouches for a name (a lumbar model would grow a
    doubtful pair on a cervical scan).
    """
    kinds = [
        (kind, [k for k, label in enumerate(labels) if anatomy.structure(label).kind == kind])
        for kind in ("vertebra", "disc")
    ]
    kinds = [(kind, group) for kind, group in kinds if group]
    pooled, pooled_offset = pool_channels(heat, offset, [group for _, group in kinds])
    per_kind = max((len(group) for _, group in kinds), default=1)  # a pooled channel holds a whole spine's peaks
    return decode(
        pooled,
        pooled_offset,
        [kind for kind, _ in kinds],
        stride=stride,
        max_per_label=per_kind,
        min_score=GAP_MIN_SCORE,
    )


def _best_per_label(candidates: list[Candidate]) -> dict[str, Candidate]:
    best: dict[str, Candidate] = {}
    for c in candidates:
        if c.label not in best or c.score > best[c.label].score:
            best[c.label] = c
    return best


def predict(
    volume: Volume,
    model: torch.nn.Module,
    card: dict[str, Any],
    device: str | torch.device = "cpu",
    progress: Callable[[Progress], None] | None = None,
) -> Prediction:
    """Predict named discs and vertebrae (points and masks) for one volume.

    Parameters
    ----------
    volume : Volume
        Any orientation; geometry is honoured exactly.
    model, card : from :func:`napari_ivd.models.load_checkpoint`.
    device : "cpu", "cuda", or a torch device.
    progress : called with each :class:`~napari_ivd.progress.Progress` report.
    """
    return run_steps(predict_job(volume, model, card, device), progress)


def prediction_points(prediction: Prediction) -> list[LabelledPoint]:
    """The prediction's structures as annotation points on the image grid."""
    return [LabelledPoint(s.name, tuple(float(v) for v in s.ijk_vox), s.score) for s in prediction.structures]


def save_prediction(prediction: Prediction, volume: Volume, out_dir: Path) -> dict[str, Path]:
    """Write the prediction as a bundle (:func:`napari_ivd.io.bundle.write_bundle`) on ``volume``'s grid.

    The same files as ``store export``: ``points.csv``, ``discs.nii.gz``/``levels.nii.gz``
    (SCT disc and vertebral-level labels), ``mask.nii.gz`` (TotalSpineSeg), reusing the
    image's NIfTI header so their affines equal the image's exactly. ``prediction.json``
    records the source image (so ``evaluate`` can find the ground truth), the model, the
    timings and whether the levels were named from the sacrum.
    """
    summary = {
        "source": str(volume.path.resolve()),
        "model": prediction.model,
        "mid_sagittal_mm": prediction.mid_sagittal_mm,
        "seconds": prediction.seconds,
        "named_from_sacrum": prediction.named_from_sacrum,
    }
    like = volume.path if volume.path.is_file() else None
    return write_bundle(
        out_dir,
        prediction_points(prediction),
        prediction.mask_tss,
        volume.geometry,
        summary,
        summary_kind="prediction",
        like=like,
        where=str(volume.path),
    )
