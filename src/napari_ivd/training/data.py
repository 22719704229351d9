"""Sagittal training samples for keypoint + segmentation models, as fixed in docs/pipeline.md.

A sample is one sagittal slice of the display grid (rows S→I, cols A→P) near the case's
mid-sagittal plane, resampled to ``spacing_mm``, augmented and cropped. Resampling,
augmentation and cropping are composed into ONE affine map from network-input pixels to
display-slice indices, so the image is interpolated once, and keypoints and masks follow
exactly the same geometry.

Pixel conventions (docs/pipeline.md):

- Resampled pixel (r, c) lies ``r * spacing_mm`` mm below the top and ``c * spacing_mm`` mm
  behind the front of the display slice (pixel centres at ``index * spacing``).
- Output (stride-2) pixel (y, x) is centred on input pixel ``(2y + 0.5, 2x + 0.5)``, i.e.
  it covers input pixels 2y and 2y + 1 (as in ``napari_ivd.models.decode``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from napari_ivd.anatomy import LUMBAR_LABELS, from_tss, shift, structure
from napari_ivd.errors import TrainingError, UnknownLevelError
from napari_ivd.models.decode import input_to_output_px
from napari_ivd.preprocess import OUTPUT_STRIDE, intensity_range
from napari_ivd.training.cases import LabelledCase

log = logging.getLogger(__name__)

__all__ = [
    "AUGMENTATIONS",
    "DEFAULT_LABELS",
    "END_CLEARANCE_MM",
    "ROBUST_AUGMENTATION",
    "SampleConfig",
    "SliceDataset",
]

#: The lumbar labels our training data annotates, cranio-caudal (= model channel order).
DEFAULT_LABELS: tuple[str, ...] = LUMBAR_LABELS
_SEG_KINDS = ("vertebra", "disc")  # seg channel order
#: Known mask background stops this far (mm) short of the centre of an end structure whose
#: neighbour beyond is not annotated (S1 below L5 on VB2/VB3). Measured on VB1 with S1 hidden:
#: the nearest S1 voxel lies 0.7 mm on L5's side of L5's centre plane in case-15, 5.7 mm or
#: more beyond it in the other cases.
END_CLEARANCE_MM = 5.0


@dataclass(frozen=True)
class SampleConfig:
    """How training samples are drawn: labels, geometry, targets and augmentation.

    Parameters
    ----------
    labels : tuple of str
        Structure names predicted, cranio-caudal; channel order of heatmap and offsets.
    spacing_mm : float
        In-plane pixel size of the network input.
    in_channels : int
        Adjacent sagittal slices stacked as channels (odd; 1 = the slice alone).
    crop : (int, int)
        Input crop (H, W) in pixels, multiples of 8.
    heatmap_sigma_px : float
        Gaussian sigma of heatmap targets, in output (stride-2) pixels.
    offset_radius_px : float
        Offsets are supervised within this radius of the keypoint, in output pixels.
    slab_mm : float
        Slices are drawn within ±slab_mm/2 of the mid-sagittal plane; a keypoint is a
        positive target only within slab_mm (left-right) of the drawn slice.
    lateral_fraction : float
        Share of samples drawn instead from any slice across the annotated masks' left-right
        extent (± ``seg_margin_mm``), so the masks are learnt on every slice the spine covers,
        not only near the midline.
    negative_lr_mm : float
        An annotated keypoint farther than this (left-right) from the drawn slice is taught
        as absent (visible, all-zero heatmap): the heatmaps then peak only near each
        structure's own sagittal plane, which is how inference finds its left-right position.
        Between ``slab_mm`` and this distance the label is ignored.
    seg_margin_mm : float
        Lateral samples reach this far left-right beyond the annotated masks. Along the spine
        a mask kind's background is known only between neighbouring annotated structures
        of that kind (and beyond the last structure of the spine, S1 or L5-S1, when it is
        annotated): an unannotated level is unknown, not background (:class:`_Zone`).
    crop_margin_px : float
        Keypoints are kept at least this far inside the crop when the spine fits.
    caudal_context_mm : float
        The crop also holds this much below the lowest annotated keypoint (where the image
        allows), so the sacrum — the landmark levels are counted from — is in view; without
        it, crops of tall scans cut the sacrum off and level names become guesswork.
    augment : bool
        Random affine + intensity augmentation and random crop position; when False the
        crop is centred on the labelled spine.
    scale_range, rotation_deg : augmentation of geometry (isotropic scale, ±degrees).
    gamma_range, contrast_range, brightness_range, noise_std_range : intensity augmentation
        (gamma, contrast factor around the mean, additive shift, Gaussian noise sigma, all
        on [0, 1]-normalised intensities).
    remap_probability, invert_probability, bias_field_strength, blur_sigma_max_px : what
        other sites and contrasts change (all off by default; :data:`ROBUST_AUGMENTATION`
        turns them on): a random monotone intensity curve (another scanner's contrast), an
        inversion (T1w against T2w: discs and fluid swap brightness), a smooth
        multiplicative field of up to ``exp(±strength)`` (coil bias) and a Gaussian blur of
        up to this many pixels along rows, columns or both (coarser resolution, thicker
        slices).
    fov_cut_probability : float
        Share of samples whose field of view is made to end inside the spine's lower half
        (the image blanked caudal of a random row, the structures there unknown): scans
        that stop above the sacrum are common, and a model that only ever saw the sacrum
        names the lowest visible vertebra S1, shifting every level by one.
    """

    labels: tuple[str, ...] = DEFAULT_LABELS
    spacing_mm: float = 1.0
    in_channels: int = 1
    crop: tuple[int, int] = (256, 256)
    heatmap_sigma_px: float = 2.0
    offset_radius_px: float = 3.0
    slab_mm: float = 6.0
    lateral_fraction: float = 0.3
    negative_lr_mm: float = 12.0
    seg_margin_mm: float = 5.0
    crop_margin_px: float = 16.0
    caudal_context_mm: float = 45.0
    augment: bool = True
    scale_range: tuple[float, float] = (0.85, 1.15)
    rotation_deg: float = 10.0
    gamma_range: tuple[float, float] = (0.7, 1.5)
    contrast_range: tuple[float, float] = (0.75, 1.25)
    brightness_range: tuple[float, float] = (-0.1, 0.1)
    noise_std_range: tuple[float, float] = (0.0, 0.05)
    remap_probability: float = 0.0
    invert_probability: float = 0.0
    bias_field_strength: float = 0.0
    blur_sigma_max_px: float = 0.0
    fov_cut_probability: float = 0.0

    def __post_init__(self) -> None:
        names = tuple(structure(n).name for n in self.labels)
        orders = [structure(n).order for n in names]
        if not names or orders != sorted(set(orders)):
            raise ValueError(f"labels must be distinct and cranio-caudal, got {self.labels}")
        object.__setattr__(self, "labels", names)
        crop = tuple(int(n) for n in self.crop)
        if len(crop) != 2 or any(n <= 0 or n % 8 for n in crop):
            raise ValueError(f"crop must be two positive multiples of 8, got {self.crop}")
        object.__setattr__(self, "crop", crop)
        if self.in_channels < 1 or self.in_channels % 2 == 0:
            raise ValueError(f"in_channels must be odd (centred on the slice of interest), not {self.in_channels}")
        for name in ("spacing_mm", "heatmap_sigma_px", "offset_radius_px", "slab_mm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("scale_range", "gamma_range", "contrast_range", "brightness_range", "noise_std_range"):
            lo, hi = (float(v) for v in getattr(self, name))
            if lo > hi:
                raise ValueError(f"{name} must be (low, high), got {getattr(self, name)}")
            object.__setattr__(self, name, (lo, hi))
        for name in ("remap_probability", "invert_probability", "fov_cut_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        for name in ("bias_field_strength", "blur_sigma_max_px"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def n_labels(self) -> int:
        """K, the number of heatmap channels."""
        return len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, for model cards and training logs."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SampleConfig:
        """Inverse of :meth:`to_dict`; rejects unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown SampleConfig keys {sorted(unknown)}; valid keys: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass(frozen=True, eq=False)
class _Zone:
    """Where a mask kind's background is known: display-mm points ``p`` with ``lo <= (p - origin_mm) . axis <= hi``."""

    origin_mm: np.ndarray  # (3,) display (lr, si, ap) mm
    axis: np.ndarray  # (3,) unit vector
    lo: float
    hi: float


def _known_zones(
    centres_mm: Sequence[np.ndarray], names: Sequence[str | None], absent: frozenset[str] = frozenset()
) -> tuple[_Zone, ...]:
    """The zones between neighbouring annotated structures of one kind, cranio-caudal.

    ``names`` are the structures' levels (None for a mask whose levels nobody named: its
    components are taken as neighbours and neither end as the spine's last). Between two
    neighbours the background is known from one centre to the other; at the end of a run
    of neighbours it stops :data:`END_CLEARANCE_MM` short of the end's centre when a level
    that is not annotated lies beyond (it may reach into the zone), and it is known all the
    way out when nothing of that kind lies beyond (S1, L5-S1). Levels marked ``absent`` (not
    present in the scan) are known not to be there: the structures on either side of them
    are neighbours, and a structure with only absent levels beyond it ends the spine.
    """

    def neighbours(a: int, b: int) -> bool:
        return names[a] is None or _beyond(names[a], 1, absent) == names[b]

    def ends_spine(i: int, step: int) -> bool:
        return names[i] is not None and _beyond(names[i], step, absent) is None

    zones = []
    for i in range(len(centres_mm) - 1):
        if not neighbours(i, i + 1):
            continue
        axis = centres_mm[i + 1] - centres_mm[i]
        length = float(np.linalg.norm(axis))
        if length == 0:
            continue
        axis = axis / length
        first = i == 0 or not neighbours(i - 1, i)
        last = i + 1 == len(centres_mm) - 1 or not neighbours(i + 1, i + 2)
        lo = 0.0 if not first or ends_spine(i, -1) else END_CLEARANCE_MM
        hi = length if not last or ends_spine(i + 1, 1) else length - END_CLEARANCE_MM
        zones.append(_Zone(centres_mm[i], axis, lo, hi))
        if first and ends_spine(i, -1):
            zones.append(_Zone(centres_mm[i], -axis, 0.0, math.inf))
        if last and ends_spine(i + 1, 1):
            zones.append(_Zone(centres_mm[i + 1], axis, 0.0, math.inf))
    return tuple(zones)


def _beyond(name: str, step: int, absent: frozenset[str] = frozenset()) -> str | None:
    """The next level of its kind ``step`` caudal (negative: cranial), skipping ``absent``; None past the end."""
    while True:
        try:
            name = shift(name, step).name
        except UnknownLevelError:
            return None
        if name not in absent:
            return name


def _kind_zones(case: LabelledCase, mask_file: np.ndarray, is_kind: np.ndarray) -> tuple[tuple[_Zone, ...], ...]:
    """Per seg kind, the zones of ``case`` where its background is known (see :func:`_known_zones`).

    ``mask_file`` (file grid) holds TotalSpineSeg values, or 1 for a body of unnamed level
    (``case.mask_kind_only``), whose components are then the structures.
    """
    named = case.mask_tss is not None
    components = mask_file if named else ndimage.label(mask_file == 1)[0]
    boxes = ndimage.find_objects(components)  # one pass; box i holds value i + 1
    view = case.volume.view
    out = []
    for kind_index in range(len(_SEG_KINDS)):
        if named:
            values = [v for v in np.flatnonzero(is_kind[kind_index]) if v and v <= len(boxes) and boxes[v - 1]]
        else:
            values = list(range(1, len(boxes) + 1)) if is_kind[kind_index, 1] else []
        if not values:
            out.append(())
            continue
        centres_vox = []
        for value in values:
            box = boxes[value - 1]
            centre = ndimage.center_of_mass(components[box] == value)
            centres_vox.append([c + s.start for c, s in zip(centre, box, strict=True)])
        centres = view.vox_to_display_mm(np.array(centres_vox))
        names: list[str | None] = [from_tss(int(v)).name for v in values] if named else [None] * len(values)
        order = np.argsort([c[1] for c in centres] if not named else [structure(n).order for n in names])
        out.append(_known_zones([centres[i] for i in order], [names[i] for i in order], case.absent))
    return tuple(out)


@dataclass(frozen=True, eq=False)
class _Prepared:
    """A case in display orientation with everything the sampler needs precomputed."""

    name: str
    image: np.ndarray  # (L, J, K) display view of the raw intensities
    spacing_mm: tuple[float, float, float]  # display (lr, si, ap)
    intensity_range: tuple[float, float]
    labels: np.ndarray | None  # (L, J, K) display view of the label mask
    is_kind: np.ndarray  # (2, n_values) bool look-up: label value -> vertebral body / disc
    kind_zones: tuple[tuple[_Zone, ...], ...]  # per seg kind: where its background is known
    keypoints_display: np.ndarray  # (K, 3) display index, NaN where not annotated
    annotated: np.ndarray  # (K,) bool
    absent: np.ndarray  # (K,) bool: marked not present in the scan (known background everywhere)
    slices: np.ndarray  # display slice indices within the slab
    lateral_slices: np.ndarray  # display slice indices across the annotated masks (may be empty)
    anchors_jk: np.ndarray  # (N, 2) display (row, col) points the crop must hold


def _kind_lookup(case: LabelledCase) -> tuple[np.ndarray | None, np.ndarray]:
    """The case's label array (file grid) and a (2, n_values) value -> kind table."""
    if case.mask_tss is not None:
        n_values = max(int(case.mask_tss.max()) + 1, 1)
        table = np.zeros((2, n_values), dtype=bool)
        for value in range(n_values):
            try:
                s = from_tss(value)
            except UnknownLevelError:
                continue
            table[_SEG_KINDS.index(s.kind), value] = s.kind in case.mask_kinds
        return case.mask_tss, table
    if case.mask_kind_only is not None:
        table = np.zeros((2, 2), dtype=bool)
        table[0, 1] = "vertebra" in case.mask_kinds
        table[1, 1] = "disc" in case.mask_kinds
        return case.mask_kind_only, table
    return None, np.zeros((2, 1), dtype=bool)


def _prepare(case: LabelledCase, cfg: SampleConfig) -> _Prepared:
    view = case.volume.view
    spacing = view.spacing_mm
    image = view.to_display(case.volume.array)
    mask_file, is_kind = _kind_lookup(case)
    labels = None if mask_file is None else view.to_display(mask_file)

    keypoints = np.full((cfg.n_labels, 3), np.nan)
    for k, name in enumerate(cfg.labels):
        if name in case.keypoints_vox:
            keypoints[k] = view.vox_to_display(case.keypoints_vox[name])[0]
    # names unsure: no level is taught (neither where it is nor where it is not, absent ones
    # included); crops go on the mask
    annotated = np.all(np.isfinite(keypoints), axis=1) & (not case.names_unsure)

    annotated_any = None
    for kind_index in range(len(_SEG_KINDS)):
        if labels is None or not is_kind[kind_index].any():
            continue
        kind_mask = is_kind[kind_index][labels]
        if kind_mask.any():
            annotated_any = kind_mask if annotated_any is None else annotated_any | kind_mask
    kind_zones = ((),) * len(_SEG_KINDS) if mask_file is None else _kind_zones(case, mask_file, is_kind)

    if annotated.any():
        mid_lr = float(np.mean(keypoints[annotated, 0]))
        anchors = keypoints[annotated, 1:]
        lowest = anchors[np.argmax(anchors[:, 0])]
        below = lowest + np.array([cfg.caudal_context_mm / spacing[1], 0.0])
        anchors = np.vstack([anchors, np.minimum(below, np.array(image.shape[1:]) - 1)])
    elif annotated_any is not None:
        lr, si, ap = np.nonzero(annotated_any)
        mid_lr = float(lr.mean())
        anchors = np.array([[si.min(), ap.min()], [si.max(), ap.max()]], dtype=np.float64)
    else:
        raise TrainingError(
            f"case {case.name}: no keypoint among the model's labels ({', '.join(cfg.labels)}) and no vertebra or "
            "disc mask; nothing to train on. Add its levels (points or a labelled mask) or leave it out"
        )

    n_lr = image.shape[0]
    all_slices = np.arange(n_lr)
    slices = all_slices[np.abs(all_slices - mid_lr) * spacing[0] <= cfg.slab_mm / 2 + 1e-9]
    if slices.size == 0:
        slices = np.array([int(np.clip(round(mid_lr), 0, n_lr - 1))])
    lateral_slices = np.array([], dtype=int)
    if labels is not None:
        annotated_kinds = np.any(is_kind, axis=0)[labels]  # (L, J, K) voxels of annotated kinds
        on_slice = np.flatnonzero(annotated_kinds.any(axis=(1, 2)))
        if on_slice.size:
            margin = cfg.seg_margin_mm / spacing[0]
            lateral_slices = all_slices[(all_slices >= on_slice[0] - margin) & (all_slices <= on_slice[-1] + margin)]
    return _Prepared(
        name=case.name,
        image=image,
        spacing_mm=spacing,
        intensity_range=intensity_range(case.volume.array),
        labels=labels,
        is_kind=is_kind,
        kind_zones=kind_zones,
        keypoints_display=keypoints,
        annotated=annotated,
        absent=np.array([name in case.absent and not case.names_unsure for name in cfg.labels], dtype=bool),
        slices=slices,
        lateral_slices=lateral_slices,
        anchors_jk=anchors,
    )


def _choose_origin(
    lo_px: float, hi_px: float, image_lo_px: float, image_hi_px: float, size: int, margin: float, rng
) -> int:
    """Crop start along one axis: keep [lo, hi] (+margin) inside, prefer staying in the image.

    ``rng=None`` centres the crop on the points. When the points span more than the crop,
    the crop lies within their span, keeping as many of them as it can.
    """
    first, last = hi_px + margin - (size - 1), lo_px - margin  # origins that hold every point
    if first > last:  # spine longer than the crop: stay within the points
        first, last = last, first
    img_first, img_last = image_lo_px, image_hi_px - (size - 1)
    if img_first <= img_last and max(first, img_first) <= min(last, img_last):
        first, last = max(first, img_first), min(last, img_last)
    value = (first + last) / 2 if rng is None else rng.uniform(first, last)
    return math.floor(value + 0.5)


class SliceDataset(torch.utils.data.Dataset):
    """Random augmented sagittal crops of labelled cases, with keypoint and mask targets.

    Each item draws, deterministically from ``(seed, epoch, index)``, a case, a slice
    within ``cfg.slab_mm`` of its mid-sagittal plane, an augmentation and a crop. One
    affine map takes network-input pixels back to display-slice indices; the image is
    interpolated linearly, masks by nearest neighbour, keypoints by the same map.

    Parameters
    ----------
    cases : sequence of LabelledCase
    cfg : SampleConfig
    samples_per_epoch : int
        ``len(dataset)``.
    seed : int

    Items are dicts of tensors (K = ``cfg.n_labels``, (H, W) = ``cfg.crop``):

    - ``image`` (in_channels, H, W) float32 in [0, 1] (roughly, after augmentation)
    - ``heatmap`` (K, H/2, W/2) Gaussian targets, peak 1 at the keypoint, zero unless a positive
    - ``visible`` (K,) 1.0 where the label is annotated and either a positive (inside the
      crop, within ``slab_mm`` left-right of the slice) or taught absent (farther than
      ``negative_lr_mm``), or where the case marks the level absent (not in the scan: an
      all-zero heatmap everywhere); 0.0 where the loss ignores it
    - ``offset`` (2K, H/2, W/2) output-pixel offsets (row, col) to the keypoint
    - ``offset_mask`` (K, H/2, W/2) 1.0 within ``offset_radius_px`` of visible keypoints
    - ``seg`` (2, H, W) binary vertebral body / disc masks
    - ``seg_valid`` (2, H, W) 1.0 where the seg loss applies: the annotated structures of
      each kind and, between neighbouring annotated levels, their background (never where
      a level the case does not annotate may lie, see ``seg_margin_mm``)
    - ``keypoints`` (K, 2) input-pixel (row, col), NaN where not visible
    - ``origin_px`` (2,) the crop's top-left in (augmented) resampled pixels; without
      augmentation, resampled-slice px = input px + origin_px
    - ``case_index``, ``slice_index`` () int64, for debugging and metrics

    Example
    -------
    >>> ds = SliceDataset(cases, SampleConfig(), samples_per_epoch=512, seed=0)
    >>> batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=8)))
    """

    def __init__(
        self, cases: Sequence[LabelledCase], cfg: SampleConfig, samples_per_epoch: int = 1000, seed: int = 0
    ) -> None:
        if not cases:
            raise ValueError("SliceDataset needs at least one case")
        if samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be positive, got {samples_per_epoch}")
        self.cfg = cfg
        self.samples_per_epoch = int(samples_per_epoch)
        self.seed = int(seed)
        self.epoch = 0
        self._cases = [_prepare(c, cfg) for c in cases]
        self.case_names = [c.name for c in self._cases]
        log.info("SliceDataset: %d cases, %d samples per epoch", len(self._cases), self.samples_per_epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Draw a fresh set of samples for ``epoch`` (still deterministic)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.samples_per_epoch:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        case_index = int(rng.integers(len(self._cases)))
        case = self._cases[case_index]
        lateral = case.lateral_slices.size and rng.random() < self.cfg.lateral_fraction
        slice_index = int(rng.choice(case.lateral_slices if lateral else case.slices))
        return self.sample(case_index, slice_index, rng)

    def sample(self, case_index: int, slice_index: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Build the sample of one case and display slice; ``rng`` drives the augmentation."""
        cfg, case = self.cfg, self._cases[case_index]
        crop = np.array(cfg.crop)
        sp_lr, sp_si, sp_ap = case.spacing_mm
        to_res = np.array([sp_si, sp_ap]) / cfg.spacing_mm  # display (j, k) -> resampled px

        # Augmentation in resampled pixels: p_aug = A (p_res - centre) + centre.
        anchors_res = case.anchors_jk * to_res
        centre = anchors_res.mean(axis=0)
        if cfg.augment:
            scale = rng.uniform(*cfg.scale_range)
            angle = math.radians(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
            cos, sin = math.cos(angle), math.sin(angle)
            warp = scale * np.array([[cos, -sin], [sin, cos]])
        else:
            warp = np.eye(2)
        anchors_aug = (anchors_res - centre) @ warp.T + centre
        corners_res = (np.array([[0, 0], [0, 1], [1, 0], [1, 1]]) * (np.array(case.image.shape[1:]) - 1)) * to_res
        corners_aug = (corners_res - centre) @ warp.T + centre
        origin = np.array(
            [
                _choose_origin(
                    anchors_aug[:, a].min(),
                    anchors_aug[:, a].max(),
                    corners_aug[:, a].min(),
                    corners_aug[:, a].max(),
                    int(crop[a]),
                    cfg.crop_margin_px,
                    rng if cfg.augment else None,
                )
                for a in range(2)
            ]
        )

        # Input px q -> display (j, k): jk = D (A^-1 (q + origin - centre) + centre), D = 1 / to_res.
        inv_warp = np.linalg.inv(warp)
        matrix = inv_warp / to_res[:, None]
        offset = (inv_warp @ (origin - centre) + centre) / to_res
        h, w = cfg.crop

        image = np.empty((cfg.in_channels, h, w), dtype=np.float32)
        lo, hi = case.intensity_range
        half = cfg.in_channels // 2
        for ch in range(cfg.in_channels):
            src = case.image[int(np.clip(slice_index - half + ch, 0, case.image.shape[0] - 1))]
            ndimage.affine_transform(
                src, matrix, offset=offset, output_shape=(h, w), order=1, output=image[ch], mode="constant", cval=lo
            )
        image -= lo
        image *= 1.0 / (hi - lo) if hi > lo else 0.0
        np.clip(image, 0.0, 1.0, out=image)

        rows = np.arange(h, dtype=np.float64)[:, None]
        cols = np.arange(w, dtype=np.float64)[None, :]
        src_j = matrix[0, 0] * rows + matrix[0, 1] * cols + offset[0]
        src_k = matrix[1, 0] * rows + matrix[1, 1] * cols + offset[1]
        n_j, n_k = case.image.shape[1:]
        inside = (src_j > -0.5) & (src_j < n_j - 0.5) & (src_k > -0.5) & (src_k < n_k - 0.5)
        # Keypoints: display -> resampled -> augmented -> crop (input px).
        keypoints_px = ((case.keypoints_display[:, 1:] * to_res - centre) @ warp.T + centre) - origin
        cut_row = self._fov_cut_row(keypoints_px[case.annotated, 0], rng) if cfg.augment else h
        inside[cut_row:] = False
        if cfg.augment:
            self._augment_intensity(image, inside, rng)

        seg = np.zeros((2, h, w), dtype=np.float32)
        seg_valid = np.zeros((2, h, w), dtype=np.float32)
        if case.labels is not None:
            label_slice = case.labels[slice_index]
            warped = ndimage.affine_transform(
                label_slice, matrix, offset=offset, output_shape=(h, w), order=0, mode="constant", cval=0
            )
            seg[:] = case.is_kind[:, warped]
        pixel_mm = (slice_index * sp_lr, src_j * sp_si, src_k * sp_ap)
        for kind_index, zones in enumerate(case.kind_zones):
            for zone in zones:
                along = sum((x - o) * a for x, o, a in zip(pixel_mm, zone.origin_mm, zone.axis, strict=True))
                seg_valid[kind_index] += (along >= zone.lo) & (along <= zone.hi)
        seg_valid = np.minimum(seg_valid + seg, 1.0)  # an annotated structure's own pixels are always known
        seg[:, cut_row:] = 0.0  # beyond the field of view's end nothing shows: known background
        seg_valid[:, cut_row:] = 1.0

        in_crop = np.all((keypoints_px >= 0) & (keypoints_px <= crop - 1), axis=1) & (keypoints_px[:, 0] < cut_row)
        distance_lr_mm = np.abs(case.keypoints_display[:, 0] - slice_index) * sp_lr
        positive = case.annotated & in_crop & (distance_lr_mm <= cfg.slab_mm)
        absent = case.annotated & (distance_lr_mm > cfg.negative_lr_mm)
        visible = positive | absent | case.absent  # a level not in the scan is absent from every slice
        keypoints_px[~positive] = np.nan
        heatmap, offsets, offset_mask = self._keypoint_targets(keypoints_px, positive)

        return {
            "image": torch.from_numpy(image),
            "heatmap": torch.from_numpy(heatmap),
            "visible": torch.from_numpy(visible.astype(np.float32)),
            "offset": torch.from_numpy(offsets),
            "offset_mask": torch.from_numpy(offset_mask),
            "seg": torch.from_numpy(seg),
            "seg_valid": torch.from_numpy(seg_valid),
            "keypoints": torch.from_numpy(keypoints_px.astype(np.float32)),
            "origin_px": torch.from_numpy(origin.astype(np.float32)),
            "case_index": torch.tensor(case_index, dtype=torch.int64),
            "slice_index": torch.tensor(slice_index, dtype=torch.int64),
        }

    def _fov_cut_row(self, annotated_rows: np.ndarray, rng: np.random.Generator) -> int:
        """Crop row where a shortened field of view ends (the crop's height when not cut).

        Drawn only when ``fov_cut_probability`` is on (so other recipes keep their random
        stream), and only for spines of at least six annotated structures in the crop: the
        cut falls between the middle one and just below the lowest, so the upper half of the
        spine always stays in view to be named from.
        """
        h = self.cfg.crop[0]
        if not self.cfg.fov_cut_probability or rng.random() >= self.cfg.fov_cut_probability:
            return h
        rows = np.sort(annotated_rows[(annotated_rows >= 0) & (annotated_rows <= h - 1)])
        if rows.size < 6:
            return h
        return int(np.clip(round(rng.uniform(rows[rows.size // 2], rows[-1] + 8.0)), 1, h))

    def _augment_intensity(self, image: np.ndarray, inside: np.ndarray, rng: np.random.Generator) -> None:
        """Site and contrast changes, gamma, contrast, brightness and noise, in place (padding stays 0)."""
        cfg = self.cfg
        _augment_site(image, cfg, rng)
        gamma = math.exp(rng.uniform(math.log(cfg.gamma_range[0]), math.log(cfg.gamma_range[1])))
        np.power(image, gamma, out=image)
        mean = float(image[:, inside].mean()) if inside.any() else 0.0
        image -= mean
        image *= rng.uniform(*cfg.contrast_range)
        image += mean + rng.uniform(*cfg.brightness_range)
        np.clip(image, 0.0, 1.0, out=image)
        noise_std = rng.uniform(*cfg.noise_std_range)
        if noise_std > 0:
            image += rng.normal(0.0, noise_std, size=image.shape).astype(np.float32)
        image *= inside

    def _keypoint_targets(
        self, keypoints_px: np.ndarray, visible: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Gaussian heatmaps, offsets and offset masks on the stride-2 output grid."""
        cfg = self.cfg
        k_count = cfg.n_labels
        h_out, w_out = cfg.crop[0] // OUTPUT_STRIDE, cfg.crop[1] // OUTPUT_STRIDE
        heatmap = np.zeros((k_count, h_out, w_out), dtype=np.float32)
        offsets = np.zeros((2 * k_count, h_out, w_out), dtype=np.float32)
        offset_mask = np.zeros((k_count, h_out, w_out), dtype=np.float32)
        ys = np.arange(h_out, dtype=np.float32)
        xs = np.arange(w_out, dtype=np.float32)
        two_sigma2 = 2.0 * cfg.heatmap_sigma_px**2
        for k in np.flatnonzero(visible):
            ky, kx = input_to_output_px(np.asarray(keypoints_px[k], dtype=np.float64), OUTPUT_STRIDE)
            dy = (np.float32(ky) - ys)[:, None]
            dx = (np.float32(kx) - xs)[None, :]
            heatmap[k] = np.exp(-(dy**2) / two_sigma2) * np.exp(-(dx**2) / two_sigma2)
            near = (dy**2 + dx**2) <= cfg.offset_radius_px**2
            offset_mask[k] = near
            offsets[2 * k] = np.where(near, dy, 0.0)
            offsets[2 * k + 1] = np.where(near, dx, 0.0)
        return heatmap, offsets, offset_mask


#: Site and contrast changes on top of the default augmentation (``train --augmentation robust``);
#: ``benchmarks/bench_adapt.py --recipes default robust`` compares the two on sources left out.
ROBUST_AUGMENTATION: dict[str, float] = {
    "remap_probability": 0.5,
    "invert_probability": 0.2,
    "bias_field_strength": 0.4,
    "blur_sigma_max_px": 1.5,
}
#: The augmentation recipes by name: SampleConfig settings on top of its defaults;
#: ``robust-fov`` also shortens fields of view above the sacrum.
AUGMENTATIONS: dict[str, dict[str, float]] = {
    "default": {},
    "robust": ROBUST_AUGMENTATION,
    "robust-fov": {**ROBUST_AUGMENTATION, "fov_cut_probability": 0.3},
}


def with_augmentation(cfg: SampleConfig, recipe: str) -> SampleConfig:
    """``cfg`` with the augmentation of ``recipe`` (:data:`AUGMENTATIONS`), everything else kept.

    Every setting any recipe changes is set: to the recipe's value, or else to the
    :class:`SampleConfig` default. So ``"default"`` turns a robust parent's site changes off,
    and a fine-tuned model's card records the augmentation it was trained with.

    Raises
    ------
    KeyError
        For a recipe not in :data:`AUGMENTATIONS`.
    """
    settings = AUGMENTATIONS[recipe]
    defaults = SampleConfig()
    names = {name for every in AUGMENTATIONS.values() for name in every}
    return replace(cfg, **{name: settings.get(name, getattr(defaults, name)) for name in names})


def _augment_site(image: np.ndarray, cfg: SampleConfig, rng: np.random.Generator) -> None:
    """Another scanner's look, in place on [0, 1] intensities: curve, inversion, bias field, blur.

    Each change is drawn only when its setting is on, so the random stream of a default
    configuration (and so every earlier training run) stays as it was.
    """
    if cfg.remap_probability and rng.random() < cfg.remap_probability:
        knots = np.concatenate([[0.0], np.sort(rng.random(3)), [1.0]])
        np.copyto(image, np.interp(image, np.linspace(0.0, 1.0, knots.size), knots).astype(np.float32))
    if cfg.invert_probability and rng.random() < cfg.invert_probability:
        np.subtract(1.0, image, out=image)
    if cfg.bias_field_strength:
        coarse = rng.uniform(-1.0, 1.0, size=(4, 4)) * rng.uniform(0.0, cfg.bias_field_strength)
        zoom = (image.shape[1] / 4, image.shape[2] / 4)
        image *= np.exp(ndimage.zoom(coarse, zoom, order=3, mode="nearest", grid_mode=True)).astype(np.float32)
        np.clip(image, 0.0, 1.0, out=image)
    if cfg.blur_sigma_max_px:
        sigma = rng.uniform(0.0, cfg.blur_sigma_max_px)
        axes = [(sigma, 0.0), (0.0, sigma), (sigma, sigma)][rng.integers(3)]
        for channel in image:
            ndimage.gaussian_filter(channel, axes, output=channel)
