"""Name keypoint candidates with a mean spine skeleton: learn the prior, search the best fit.

Azad et al. 2021 (§3.3) remove false positives and negatives of a disc detector with a
*skeleton*: the mean normalised disc layout of the training set, and a search tree over the
candidates of each disc (with an availability flag for a missed disc) that keeps the
combination closest to the skeleton. This module generalises the idea to any ordered subset of
:mod:`napari_ivd.anatomy` structures (vertebrae and discs together) and to fields of view that
show only part of the spine:

* :class:`SkeletonPrior` is learned by generalised Procrustes analysis (similarity transforms)
  on partially annotated training shapes, in millimetres. Instead of Azad's normalisation by
  the first disc and the v1→v5 distance (which needs both to be visible), the mean is centred,
  oriented along the rows and scaled so that the mean distance between consecutive labels is
  one **step**; every shape is aligned on whatever labels it has in common with the mean.
* :func:`fill_gaps` names the detections in the chosen chain's gaps by their place between
  the structures around them, and :func:`extend_chain` those that continue it past its
  ends, for a network whose peaks are weak or that lost count part-way down a long field
  of view.
* :func:`anchor_on_sacrum` renames that chain from the sacrum when the network sees it
  confidently one step below the lowest disc: the disc above the sacrum is L5-S1 whatever
  the chain called it, so a chain counted one level off is corrected, not trusted.
  :func:`anchor_on_junction` does the same when the chain runs past the sacrum (the L5 body
  called S1): the network sees L5, the L5-S1 disc and S1 in a row at the chain's lowest body.
* :func:`search` chooses at most one candidate per label, in strictly increasing row order,
  minimising a scale-invariant cost (fit residual in steps, minus rewarded scores, plus a
  charge for every detected label left out). It never invents a label: a label is either one
  of its own candidates or absent.

Positions in the skeleton are complex numbers ``row + 1j * col`` internally, which makes 2-D
similarity transforms one complex multiplication plus a translation.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from napari_ivd.anatomy import structure
from napari_ivd.models.decode import Candidate

__all__ = [
    "SkeletonPrior",
    "anchor_on_junction",
    "anchor_on_sacrum",
    "extend_chain",
    "fill_gaps",
    "gaps",
    "hypothesis_cost",
    "search",
]

log = logging.getLogger(__name__)

_FORMAT_VERSION = 1
_DICT_KEYS = frozenset(
    {"format_version", "labels", "mean_steps", "spread_steps", "counts", "step_mm", "log_scale_sd", "n_shapes"}
)
# Below this |a| (mm per step) a similarity fit is degenerate (all points on one spot).
_MIN_SCALE_MM = 1e-9


def _similarity(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> tuple[complex, complex]:
    """Least-squares similarity ``dst ≈ a * src + b`` (a: scale·rotation, no reflection).

    Parameters
    ----------
    src, dst : ndarray of complex, shape (n,)
        Corresponding points as ``row + 1j * col``; n >= 2 and ``src`` not all equal.
    weights : ndarray, shape (n,), optional
        Non-negative weights of the points.
    """
    w = np.ones(src.shape) if weights is None else weights
    total = w.sum()
    src_mean = (w * src).sum() / total
    dst_mean = (w * dst).sum() / total
    src_c, dst_c = src - src_mean, dst - dst_mean
    denominator = float((w * np.abs(src_c) ** 2).sum())
    if denominator <= 0:
        raise ValueError("similarity fit needs at least two distinct source points")
    a = complex((w * np.conj(src_c) * dst_c).sum() / denominator)
    return a, complex(dst_mean - a * src_mean)


def _aligned_means(
    anchors: Mapping[str, complex], shapes: Sequence[Mapping[str, complex]], targets: set[str]
) -> dict[str, tuple[complex, int]]:
    """Mean position (and count) of each target label over the shapes aligned onto ``anchors``.

    A shape counts when it shows a target and at least two anchors; it is mapped onto the
    anchors by the least-squares similarity on the anchors it shows.
    """
    sums: dict[str, complex] = {}
    seen: dict[str, int] = {}
    for shape in shapes:
        common = [name for name in shape if name in anchors]
        shown = [name for name in shape if name in targets]
        if len(common) >= 2 and shown:
            a, b = _similarity(np.array([shape[n] for n in common]), np.array([anchors[n] for n in common]))
            for name in shown:
                sums[name] = sums.get(name, 0j) + a * shape[name] + b
                seen[name] = seen.get(name, 0) + 1
    return {name: (total / seen[name], seen[name]) for name, total in sums.items()}


def _normalise_mean(mean: np.ndarray) -> np.ndarray:
    """Centre, orient (first→last label along +row) and scale (mean consecutive step = 1)."""
    centred = mean - mean.mean()
    direction = centred[-1] - centred[0]
    if abs(direction) > 0:
        centred = centred * (abs(direction) / direction)
    step = float(np.abs(np.diff(centred)).mean())
    if step <= 0:
        raise ValueError("SkeletonPrior.fit: the training shapes collapse onto one point")
    return centred / step


def _canonical(name: str) -> str:
    return structure(name).name


def _parse_shapes(shapes: Sequence[Mapping[str, tuple[float, float]]]) -> list[dict[str, complex]]:
    """Shapes as canonical label -> complex position, keeping those with two or more finite labels (fit needs two)."""
    parsed: list[dict[str, complex]] = []
    for shape in shapes:
        points = {_canonical(name): complex(float(rc[0]), float(rc[1])) for name, rc in shape.items()}
        if len(points) >= 2 and all(math.isfinite(z.real) and math.isfinite(z.imag) for z in points.values()):
            parsed.append(points)
    if len(parsed) < len(shapes):
        log.warning("SkeletonPrior.fit: ignored %d shapes with fewer than two finite labels", len(shapes) - len(parsed))
    if not parsed:
        raise ValueError("SkeletonPrior.fit: no training shape has two or more labelled structures")
    return parsed


def _shape_table(parsed: Sequence[Mapping[str, complex]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(labels cranio-caudal, shapes x labels positions with NaN where unseen, visible): one frame for numpy."""
    labels = sorted({name for points in parsed for name in points}, key=lambda name: structure(name).order)
    column = {name: j for j, name in enumerate(labels)}
    data = np.full((len(parsed), len(labels)), np.nan + 0j)
    for i, points in enumerate(parsed):
        for name, z in points.items():
            data[i, column[name]] = z
    return labels, data, ~np.isnan(data)


def _overlapping(
    labels: list[str], data: np.ndarray, visible: np.ndarray
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Drop labels and shapes that cannot be put in one frame; returns them with a first mean.

    A label joins the frame through shapes sharing two labels with it (a similarity needs
    two points); shapes left with fewer than two labels align onto nothing.
    """
    mean, connected = _initial_mean(data, visible)
    if not connected.all():
        lost = [labels[j] for j in np.flatnonzero(~connected)]
        log.warning("SkeletonPrior.fit: labels %s share fewer than two labels with the rest; dropped", lost)
        labels = [name for name, keep in zip(labels, connected, strict=True) if keep]
        data, visible, mean = data[:, connected], visible[:, connected], mean[connected]
    usable = visible.sum(axis=1) >= 2
    data, visible = data[usable], visible[usable]
    if len(labels) < 2 or not usable.any():
        raise ValueError("SkeletonPrior.fit: the training shapes do not overlap enough to build a skeleton")
    return labels, data, visible, mean


def _initial_mean(data: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chain shapes into one frame, starting from the most complete; returns (mean, known)."""
    n_shapes, n_labels = data.shape
    mean = np.full(n_labels, np.nan + 0j)
    start = int(visible.sum(axis=1).argmax())
    mean[visible[start]] = data[start, visible[start]]
    known = visible[start].copy()
    while True:
        sums = np.zeros(n_labels, dtype=complex)
        counts = np.zeros(n_labels)
        for i in range(n_shapes):
            common = visible[i] & known
            new = visible[i] & ~known
            if common.sum() >= 2 and new.any():
                a, b = _similarity(data[i, common], mean[common])
                sums[new] += a * data[i, new] + b
                counts[new] += 1
        added = counts > 0
        if not added.any():
            return mean, known
        mean[added] = sums[added] / counts[added]
        known |= added


def _procrustes_mean(
    data: np.ndarray, visible: np.ndarray, mean: np.ndarray, max_iterations: int, tolerance_steps: float
) -> np.ndarray:
    """Generalised Procrustes: align every shape to the normalised mean and average, until the mean stops moving."""
    mean = _normalise_mean(mean)
    aligned = np.full(data.shape, np.nan + 0j)
    for _ in range(max_iterations):
        for i in range(len(data)):
            cols = visible[i]
            a, b = _similarity(data[i, cols], mean[cols])
            aligned[i, cols] = a * data[i, cols] + b
        new_mean = _normalise_mean(np.nanmean(aligned, axis=0))
        moved = float(np.abs(new_mean - mean).max())
        mean = new_mean
        if moved < tolerance_steps:
            break
    return mean


def _spreads_and_scales(data: np.ndarray, visible: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-label spread (steps) and per-shape size (mm per step) after a final alignment onto the mean.

    The spread is the root mean square residual per axis, corrected for the similarity's four
    parameters and counted only on shapes with three or more labels (two fit exactly); a label
    with no such shape takes the median spread.
    """
    residual_sq = np.zeros(data.shape[1])
    residual_n = np.zeros(data.shape[1])
    scales = np.ones(len(data))
    for i in range(len(data)):
        cols = visible[i]
        a, b = _similarity(data[i, cols], mean[cols])
        scales[i] = 1.0 / abs(a)
        n_points = int(cols.sum())
        if n_points >= 3:
            # A similarity has 4 parameters: 2n coordinates leave 2n - 4 degrees of freedom.
            correction = n_points / (n_points - 2)
            residual_sq[cols] += np.abs(a * data[i, cols] + b - mean[cols]) ** 2 * correction
            residual_n[cols] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        spread = np.sqrt(residual_sq / (2 * residual_n))
    if np.isnan(spread).any():
        fallback = float(np.nanmedian(spread)) if np.isfinite(spread).any() else 0.0
        spread = np.where(np.isnan(spread), fallback, spread)
    return spread, scales


@dataclass(frozen=True)
class SkeletonPrior:
    """Mean normalised skeleton of the labelled structures, with per-label spread.

    The skeleton lives in a normalised frame: centred, first label → last label pointing along
    +row (down), and scaled so that the mean distance between consecutive labels is 1 *step*.
    A concrete spine is ``a * mean + b`` for some complex ``a`` (|a| = millimetres per step,
    arg a = in-plane rotation) and translation ``b``.

    Attributes
    ----------
    labels : tuple of str
        Structure names in cranio-caudal order (``anatomy.structure(name).order``).
    mean_steps : tuple of (row, col)
        Mean position of each label in the normalised frame, in steps.
    spread_steps : tuple of float
        Per-axis standard deviation of each label around its mean after similarity alignment,
        in steps (anatomical variation plus annotation noise of the training set).
    counts : tuple of int
        Number of training shapes in which each label was visible.
    step_mm : float
        Geometric mean over the training shapes of the size of one step in millimetres.
    log_scale_sd : float
        Standard deviation of the natural log of that size across training shapes.
    n_shapes : int
        Number of training shapes used.
    """

    labels: tuple[str, ...]
    mean_steps: tuple[tuple[float, float], ...]
    spread_steps: tuple[float, ...]
    counts: tuple[int, ...]
    step_mm: float
    log_scale_sd: float = 0.0
    n_shapes: int = 0

    def __post_init__(self) -> None:
        n = len(self.labels)
        if n < 2:
            raise ValueError(f"SkeletonPrior needs at least two labels, got {list(self.labels)}")
        if not (len(self.mean_steps) == len(self.spread_steps) == len(self.counts) == n):
            raise ValueError(
                f"SkeletonPrior: {n} labels but {len(self.mean_steps)} means, {len(self.spread_steps)} spreads "
                f"and {len(self.counts)} counts"
            )
        canonical = tuple(_canonical(name) for name in self.labels)
        orders = [structure(name).order for name in canonical]
        if any(b <= a for a, b in itertools.pairwise(orders)):
            raise ValueError(f"SkeletonPrior labels must be distinct and cranio-caudal, got {list(self.labels)}")
        mean = np.asarray(self.mean_steps, dtype=np.float64)
        if mean.shape != (n, 2) or not np.isfinite(mean).all():
            raise ValueError(f"SkeletonPrior: mean_steps must be {n} finite (row, col) pairs")
        spread = np.asarray(self.spread_steps, dtype=np.float64)
        if not (np.isfinite(spread).all() and (spread >= 0).all()):
            raise ValueError("SkeletonPrior: spread_steps must be finite and >= 0")
        if not (math.isfinite(self.step_mm) and self.step_mm > 0):
            raise ValueError(f"SkeletonPrior: step_mm must be a positive number, got {self.step_mm}")
        if not (math.isfinite(self.log_scale_sd) and self.log_scale_sd >= 0):
            raise ValueError(f"SkeletonPrior: log_scale_sd must be >= 0, got {self.log_scale_sd}")
        # Store plain, canonical, immutable values whatever the caller passed in.
        object.__setattr__(self, "labels", canonical)
        object.__setattr__(self, "mean_steps", tuple((float(r), float(c)) for r, c in mean))
        object.__setattr__(self, "spread_steps", tuple(float(s) for s in spread))
        object.__setattr__(self, "counts", tuple(int(c) for c in self.counts))

    # -- arrays -------------------------------------------------------------------------------
    def mean_complex(self) -> np.ndarray:
        """Mean positions as ``row + 1j * col`` (steps), shape (L,)."""
        mean = np.asarray(self.mean_steps, dtype=np.float64)
        return mean[:, 0] + 1j * mean[:, 1]

    def index(self, label: str) -> int:
        """Position of a (loosely spelled) label in :attr:`labels`; ValueError if absent."""
        name = _canonical(label)
        try:
            return self.labels.index(name)
        except ValueError:
            raise ValueError(f"{name} is not in the skeleton prior ({', '.join(self.labels)})") from None

    # -- learning -----------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        shapes: Sequence[Mapping[str, tuple[float, float]]],
        max_iterations: int = 100,
        tolerance_steps: float = 1e-9,
    ) -> SkeletonPrior:
        """Learn the mean skeleton from training keypoints by generalised Procrustes analysis.

        Every shape maps labels to ``(row_mm, col_mm)`` in its own slice and may show any
        subset of labels (partial fields of view). Shapes are aligned to the current mean with
        a similarity transform on the labels they have (at least two), the mean of each label
        is the average of its aligned positions, and the mean is renormalised (centred,
        oriented, one step = mean consecutive distance) until it stops moving.

        Parameters
        ----------
        shapes : sequence of mapping label -> (row_mm, col_mm)
            Training keypoints in millimetres, rows down (S→I), columns A→P.
        max_iterations : int
            Upper bound on Procrustes iterations.
        tolerance_steps : float
            Stop when no mean position moves more than this (steps).

        Returns
        -------
        SkeletonPrior

        Raises
        ------
        UnknownLevelError
            When a label is not a known structure name.
        ValueError
            When fewer than one shape has two labels, or the shapes do not overlap enough to be
            put in one frame.

        Example
        -------
        >>> prior = SkeletonPrior.fit([{"L3": (0.0, 0.0), "L3-L4": (17.0, 1.0), "L4": (34.0, 1.5)}])
        >>> prior.labels
        ('L3', 'L3-L4', 'L4')
        """
        parsed = _parse_shapes(shapes)
        labels, data, visible = _shape_table(parsed)
        labels, data, visible, mean = _overlapping(labels, data, visible)
        mean = _procrustes_mean(data, visible, mean, max_iterations, tolerance_steps)
        spread, scales = _spreads_and_scales(data, visible, mean)
        log_scales = np.log(scales)
        prior = cls(
            labels=tuple(labels),
            mean_steps=tuple((float(z.real), float(z.imag)) for z in mean),
            spread_steps=tuple(float(s) for s in spread),
            counts=tuple(int(c) for c in visible.sum(axis=0)),
            step_mm=float(np.exp(log_scales.mean())),
            log_scale_sd=float(log_scales.std(ddof=1)) if len(log_scales) > 1 else 0.0,
            n_shapes=len(data),
        )
        log.info(
            "SkeletonPrior: %d labels from %d shapes, step %.1f mm, median spread %.3f steps",
            len(labels),
            len(data),
            prior.step_mm,
            float(np.median(spread)),
        )
        return prior

    def grown(self, labels: Sequence[str], shapes: Sequence[Mapping[str, tuple[float, float]]]) -> SkeletonPrior:
        """This prior with ``labels`` added, its own means, spreads and scale kept.

        Why: a model grown to new levels (:func:`napari_ivd.models.grow.grow_labels`) keeps the
        prior its parent learnt from many cases, and a handful of fine-tuning cases place only
        the new levels. A new label is placed by aligning (similarity, as in :meth:`fit`) each
        training shape that shows it and at least two placed labels onto the prior, and
        averaging; shapes chain on, so a level two steps past the prior is placed through one
        in between. A label no shape connects is first extrapolated along the prior's mean
        step per cranio-caudal position, then shapes showing two or more such labels
        re-place them by their own layout. New labels take the prior's largest spread.

        Parameters
        ----------
        labels : sequence of str
            Labels the prior must hold (its own and new ones, any order).
        shapes : sequence of mapping label -> (row_mm, col_mm)
            Training keypoints, as for :meth:`fit`.

        Example
        -------
        >>> prior = SkeletonPrior.fit([{"L3": (0.0, 0.0), "L3-L4": (17.0, 1.0), "L4": (34.0, 1.5)}])
        >>> prior.grown(["L4-L5"], [{"L3-L4": (0.0, 0.0), "L4": (17.0, 0.0), "L4-L5": (34.0, 0.0)}]).labels
        ('L3', 'L3-L4', 'L4', 'L4-L5')
        """
        wanted = {_canonical(name) for name in labels} - set(self.labels)
        if not wanted:
            return self
        placed = dict(zip(self.labels, self.mean_complex(), strict=True))
        parsed = [{_canonical(n): complex(float(rc[0]), float(rc[1])) for n, rc in shape.items()} for shape in shapes]
        counts = dict.fromkeys(wanted, 0)
        while means := _aligned_means(placed, parsed, wanted - set(placed)):  # chain on, level by level
            placed |= {name: z for name, (z, _) in means.items()}
            counts |= {name: n for name, (_, n) in means.items()}
        missing = wanted - set(placed)
        if missing:
            orders = np.array([structure(name).order for name in self.labels], dtype=np.float64)
            slope, intercept = np.polyfit(orders, self.mean_complex(), 1)
            guess = {name: complex(slope * structure(name).order + intercept) for name in missing}
            # shapes showing two or more of the guessed labels give them their own layout
            means = _aligned_means(guess, parsed, missing)
            placed |= guess | {name: z for name, (z, _) in means.items()}
            counts |= {name: n for name, (_, n) in means.items()}
        names = sorted(placed, key=lambda name: structure(name).order)
        spread = dict(zip(self.labels, self.spread_steps, strict=True))
        count = dict(zip(self.labels, self.counts, strict=True)) | counts
        new_spread = max(self.spread_steps)
        log.info("SkeletonPrior grown by %s", ", ".join(sorted(wanted, key=lambda n: structure(n).order)))
        return SkeletonPrior(
            labels=tuple(names),
            mean_steps=tuple((float(placed[n].real), float(placed[n].imag)) for n in names),
            spread_steps=tuple(spread.get(n, new_spread) for n in names),
            counts=tuple(count[n] for n in names),
            step_mm=self.step_mm,
            log_scale_sd=self.log_scale_sd,
            n_shapes=self.n_shapes,
        )

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (lists, floats, ints, str) for a model card."""
        return {
            "format_version": _FORMAT_VERSION,
            "labels": list(self.labels),
            "mean_steps": [list(rc) for rc in self.mean_steps],
            "spread_steps": list(self.spread_steps),
            "counts": list(self.counts),
            "step_mm": self.step_mm,
            "log_scale_sd": self.log_scale_sd,
            "n_shapes": self.n_shapes,
        }

    @classmethod
    def of_card(cls, card: Mapping[str, Any]) -> SkeletonPrior | None:
        """The skeleton a model card carries (its ``"skeleton"`` entry), None when it has none."""
        return cls.from_dict(card["skeleton"]) if card.get("skeleton") else None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SkeletonPrior:
        """Rebuild a prior from :meth:`to_dict` output.

        Raises
        ------
        ValueError
            On unknown keys, a missing key, an unsupported ``format_version`` or inconsistent
            contents.
        """
        unknown = set(data) - _DICT_KEYS
        missing = _DICT_KEYS - set(data)
        if unknown or missing:
            raise ValueError(
                f"SkeletonPrior.from_dict: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}; "
                "expected the output of SkeletonPrior.to_dict()"
            )
        if data["format_version"] != _FORMAT_VERSION:
            raise ValueError(
                f"SkeletonPrior.from_dict: format_version {data['format_version']!r} is not supported "
                f"(this napari-ivd reads {_FORMAT_VERSION}); update napari-ivd"
            )
        return cls(
            labels=tuple(str(name) for name in data["labels"]),
            mean_steps=tuple((float(r), float(c)) for r, c in data["mean_steps"]),
            spread_steps=tuple(float(s) for s in data["spread_steps"]),
            counts=tuple(int(c) for c in data["counts"]),
            step_mm=float(data["step_mm"]),
            log_scale_sd=float(data["log_scale_sd"]),
            n_shapes=int(data["n_shapes"]),
        )


# -- search ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Costs:
    """The weights of the hypothesis cost (see :func:`search`)."""

    missing_cost: float
    score_weight: float
    localisation_sd_steps: float
    scale_log_sd: float | None

    def point_weights(self, prior: SkeletonPrior) -> np.ndarray:
        spread = np.asarray(prior.spread_steps)
        return 1.0 / (spread**2 + self.localisation_sd_steps**2)

    def scale_sd(self, prior: SkeletonPrior) -> float | None:
        if self.scale_log_sd is None:
            return None
        return math.hypot(prior.log_scale_sd, self.scale_log_sd)


def _geometry_cost(
    n: np.ndarray,
    w_sum: np.ndarray,
    wm: np.ndarray,
    wx: np.ndarray,
    wmm: np.ndarray,
    wxx: np.ndarray,
    wmx: np.ndarray,
    step_mm: float,
    scale_sd: float | None,
) -> np.ndarray:
    """Fit + scale terms of many hypotheses from their weighted sufficient statistics.

    For prior points m_j (steps) and chosen points x_j (mm) with weights w_j, the best
    similarity ``x ≈ a m + b`` leaves the weighted residual
    ``E = Cxx - |Cmx|^2 / Cmm`` (C: weighted centred second moments) and has ``|a| = |Cmx| / Cmm``
    mm per step. The fit term ``E / |a|^2`` is that residual expressed in steps, so it does not
    change when the whole picture is scaled. With fewer than three points it is zero (two points
    fit any similarity exactly); the scale term needs two.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        safe_w = np.where(w_sum > 0, w_sum, 1.0)
        c_mm = wmm - np.abs(wm) ** 2 / safe_w
        c_xx = wxx - np.abs(wx) ** 2 / safe_w
        c_mx = wmx - np.conj(wm) * wx / safe_w
        mx_sq = np.abs(c_mx) ** 2
        scale_mm = np.sqrt(mx_sq) / np.where(c_mm > 0, c_mm, 1.0)
        residual_mm2 = np.maximum(c_xx - mx_sq / np.where(c_mm > 0, c_mm, 1.0), 0.0)
        fit = np.where(n >= 3, residual_mm2 / np.maximum(scale_mm, _MIN_SCALE_MM) ** 2, 0.0)
        fit = np.where((n >= 2) & (scale_mm < _MIN_SCALE_MM), np.inf, fit)
        if scale_sd is not None and scale_sd > 0:
            log_ratio = np.log(np.maximum(scale_mm, _MIN_SCALE_MM) / step_mm)
            fit = fit + np.where(n >= 2, (log_ratio / scale_sd) ** 2, 0.0)
    return fit


def _expand(values: np.ndarray, add: np.ndarray | float, n_options: int) -> np.ndarray:
    """Beam expansion of one statistic: option 0 (absent) keeps it, option c adds ``add[c-1]``."""
    out = np.repeat(values[:, None], n_options, axis=1).astype(np.result_type(values, add))
    out[:, 1:] += add
    return out.ravel()


def _group(
    candidates: Sequence[Candidate], prior: SkeletonPrior, max_candidates_per_label: int
) -> list[list[Candidate]]:
    """Candidates per prior label (strongest first, at most ``max_candidates_per_label``)."""
    groups: list[list[Candidate]] = [[] for _ in prior.labels]
    position = {name: j for j, name in enumerate(prior.labels)}
    ignored: set[str] = set()
    for candidate in candidates:
        name = _canonical(candidate.label)
        if name not in position:
            ignored.add(name)
            continue
        if math.isfinite(candidate.row) and math.isfinite(candidate.col) and math.isfinite(candidate.score):
            groups[position[name]].append(candidate)
    if ignored:
        log.warning(
            "skeleton search: labels %s are not in the skeleton prior; their candidates are ignored", sorted(ignored)
        )
    return [sorted(group, key=lambda c: -c.score)[:max_candidates_per_label] for group in groups]


def hypothesis_cost(
    chosen: Mapping[str, Candidate],
    candidates: Sequence[Candidate],
    prior: SkeletonPrior,
    spacing_mm: float = 1.0,
    missing_cost: float = 6.0,
    score_weight: float = 4.0,
    localisation_sd_steps: float = 0.15,
    scale_log_sd: float | None = 0.35,
) -> float:
    """Cost of one naming hypothesis, exactly as :func:`search` minimises it (see there).

    Useful to explain or debug a search result. ``chosen`` maps labels to candidates; rows
    must increase strictly in cranio-caudal order, else the cost is ``inf``.
    """
    costs = _Costs(missing_cost, score_weight, localisation_sd_steps, scale_log_sd)
    groups = _group(candidates, prior, max_candidates_per_label=len(candidates) + 1)
    weights = costs.point_weights(prior)
    mean = prior.mean_complex()
    picked = sorted(((prior.index(name), c) for name, c in chosen.items()), key=lambda jc: jc[0])
    rows = [c.row for _, c in picked]
    if any(b <= a for a, b in itertools.pairwise(rows)):
        return math.inf
    n_missing = sum(1 for j, group in enumerate(groups) if group and j not in {k for k, _ in picked})
    total = missing_cost * n_missing - score_weight * sum(c.score for _, c in picked)
    if picked:
        j = np.array([k for k, _ in picked])
        w, m = weights[j], mean[j]
        x = np.array([complex(c.row, c.col) for _, c in picked]) * spacing_mm
        geometry = _geometry_cost(
            np.array(len(picked)),
            np.array(w.sum()),
            np.array((w * m).sum()),
            np.array((w * x).sum()),
            np.array((w * np.abs(m) ** 2).sum()),
            np.array((w * np.abs(x) ** 2).sum()),
            np.array((w * np.conj(m) * x).sum()),
            prior.step_mm,
            costs.scale_sd(prior),
        )
        total += float(geometry)
    return total


def search(
    candidates: Sequence[Candidate],
    prior: SkeletonPrior,
    spacing_mm: float = 1.0,
    missing_cost: float = 6.0,
    score_weight: float = 4.0,
    localisation_sd_steps: float = 0.15,
    scale_log_sd: float | None = 0.35,
    beam_width: int = 200,
    max_candidates_per_label: int = 5,
) -> dict[str, Candidate]:
    """Choose at most one candidate per label so that the set looks like a spine.

    A hypothesis H picks, for each label of the prior in cranio-caudal order, one of that
    label's own candidates or nothing. Its chosen rows must increase strictly (a caudal
    structure lies below a cranial one); among those, H minimises

    ``cost(H) = fit(H) + scale(H) - score_weight * Σ_chosen score + missing_cost * n_missing``

    * ``fit`` = ``Σ_j w_j |T⁻¹(x_j) - m_j|²`` with ``x_j`` the chosen positions in mm, ``m_j`` the
      prior means in steps, ``T`` the weighted least-squares similarity (rotation, scale, shift;
      no reflection) from prior to image and ``w_j = 1 / (spread_j² + localisation_sd_steps²)``.
      The residual is measured in prior steps (mm divided by the fitted mm-per-step), so the fit
      is scale-invariant and a field of view with four levels is judged like a full one. It is
      a sum of squared z-scores: about 2 per well-placed point (χ² with 2 degrees of freedom),
      tens for a point one level off. Zero for fewer than three points (a similarity fits two
      points exactly).
    * ``scale`` = ``(log(|T| / step_mm) / σ)²`` with ``σ = hypot(prior.log_scale_sd, scale_log_sd)``
      for two or more points: a weak pull towards the training size (a 20 % smaller spine costs
      0.4 at the defaults), which only matters when the shape itself cannot decide (two points).
      The only place where ``spacing_mm`` matters. ``scale_log_sd=None`` removes it.
    * ``score_weight * Σ score``: detections the network is sure of are preferred.
    * ``missing_cost * n_missing``: labels that HAVE candidates but are left out (Azad's
      availability flag: labels without any candidate cost nothing, so a partial field of view
      is not penalised). A candidate is therefore kept when its fit increase is below
      ``missing_cost + score_weight * score``: at the defaults 6.4-9.8, i.e. a point about
      2.5-3 σ off, roughly half a step (the midpoint to the neighbouring structure) when the
      prior spread is small next to ``localisation_sd_steps``.

    Labels are never invented: there is no term that could place a label where it has no
    candidate. A consistent off-by-one naming by the network is not "repaired" by shifting
    levels; whichever naming of the candidates fits and scores better wins (a confident
    sacrum below the chain repairs it afterwards: :func:`anchor_on_sacrum`).

    The search is a beam search over labels in cranio-caudal order (each level: a candidate or
    absent), keeping the ``beam_width`` cheapest partial hypotheses; the partial cost is the
    same formula on the labels decided so far. Only a handful of prefixes are competitive at
    any depth, so with ≤ 20 labels and ≤ 3 candidates each a beam of 200 matches exhaustive
    search (checked in the tests on small problems) and runs in a few milliseconds
    (vectorised numpy; the fit's weighted sums are updated incrementally).

    Parameters
    ----------
    candidates : sequence of Candidate
        Decoded candidates in input pixels (any order; labels not in the prior are ignored
        with a warning).
    prior : SkeletonPrior
        The mean skeleton (positions in steps, sizes in mm).
    spacing_mm : float
        Input pixel size in mm (the model's ``spacing_mm``), to put candidates in mm.
    missing_cost : float
        Charge per label with candidates that is left absent.
    score_weight : float
        Reward per unit of candidate score.
    localisation_sd_steps : float
        Detection noise added (in quadrature) to the prior's per-label spread, in steps
        (0.15 steps ≈ 2.6 mm on a lumbar spine with 17 mm between disc and vertebra).
    scale_log_sd : float or None
        Extra tolerance on the log of the size (added in quadrature to the prior's); None
        makes the cost blind to absolute size.
    beam_width : int
        Partial hypotheses kept per level.
    max_candidates_per_label : int
        Only the highest-scoring candidates of each label are considered.

    Returns
    -------
    dict of str -> Candidate
        The chosen candidate per named label, in cranio-caudal order; absent labels are missing.

    Example
    -------
    >>> named = search(decode(probs, offsets, labels), prior, spacing_mm=1.0)  # doctest: +SKIP
    >>> list(named)  # doctest: +SKIP
    ['L2', 'L2-L3', 'L3', 'L3-L4', 'L4', 'L4-L5', 'L5', 'L5-S1']
    """
    if not (math.isfinite(spacing_mm) and spacing_mm > 0):
        raise ValueError(f"search: spacing_mm must be a positive number, got {spacing_mm}")
    if beam_width < 1 or max_candidates_per_label < 1:
        raise ValueError("search: beam_width and max_candidates_per_label must be >= 1")
    costs = _Costs(missing_cost, score_weight, localisation_sd_steps, scale_log_sd)
    groups = _group(candidates, prior, max_candidates_per_label)
    weights = costs.point_weights(prior)
    mean = prior.mean_complex()
    scale_sd = costs.scale_sd(prior)
    levels = [j for j, group in enumerate(groups) if group]
    if not levels:
        return {}
    beam = _Beam.empty(len(levels))
    for depth, j in enumerate(levels):
        beam, valid = _branch(beam, depth, groups[j], weights[j], mean[j], spacing_mm, costs)
        total = beam.costs(prior.step_mm, scale_sd)
        total[~valid] = np.inf
        keep = _cheapest(total, beam_width)
        beam, total = beam.take(keep), total[keep]
    return _best_naming(beam, total, groups, levels, prior)


@dataclass(frozen=True)
class _Beam:
    """The partial hypotheses of :func:`search`, one entry each (numpy arrays of equal length).

    Per hypothesis: the cost part that does not depend on the fit (missing charges minus
    score rewards), the last chosen row (rows must increase), the candidate chosen at each
    level so far (-1: absent), and the number of points and weighted sums that determine the
    similarity fit (:func:`_geometry_cost`), kept so that adding a label costs O(1).
    """

    base: np.ndarray
    last_row: np.ndarray
    choice: np.ndarray  # (hypotheses, levels)
    n: np.ndarray
    w_sum: np.ndarray
    wm: np.ndarray
    wx: np.ndarray
    wmm: np.ndarray
    wxx: np.ndarray
    wmx: np.ndarray

    @classmethod
    def empty(cls, n_levels: int) -> _Beam:
        """One hypothesis that has decided nothing yet: where every search starts."""
        return cls(
            base=np.zeros(1),
            last_row=np.full(1, -np.inf),
            choice=np.full((1, n_levels), -1, dtype=np.int64),
            n=np.zeros(1, dtype=np.int64),
            w_sum=np.zeros(1),
            wm=np.zeros(1, complex),
            wx=np.zeros(1, complex),
            wmm=np.zeros(1),
            wxx=np.zeros(1),
            wmx=np.zeros(1, complex),
        )

    def costs(self, step_mm: float, scale_sd: float | None) -> np.ndarray:
        """Each hypothesis's cost as :func:`search` defines it: its fixed part plus fit and scale terms."""
        return self.base + _geometry_cost(
            self.n, self.w_sum, self.wm, self.wx, self.wmm, self.wxx, self.wmx, step_mm, scale_sd
        )

    def take(self, keep: np.ndarray) -> _Beam:
        """The hypotheses at ``keep`` (indices), in that order: pruning the beam."""
        return _Beam(*(getattr(self, f.name)[keep] for f in fields(self)))


def _branch(
    beam: _Beam, depth: int, group: Sequence[Candidate], w: float, m: complex, spacing_mm: float, costs: _Costs
) -> tuple[_Beam, np.ndarray]:
    """Every hypothesis times every option at one label: absent (charged) or one of its candidates (rewarded).

    Returns the grown beam and which of its hypotheses keep the chosen rows strictly increasing.
    """
    rows = np.array([c.row for c in group])
    x = np.array([complex(c.row, c.col) for c in group]) * spacing_mm
    scores = np.array([c.score for c in group])
    n_options = len(group) + 1  # option 0: absent
    base = np.repeat(beam.base[:, None], n_options, axis=1)
    base[:, 0] += costs.missing_cost
    base[:, 1:] -= costs.score_weight * scores
    valid = np.ones((len(beam.base), n_options), dtype=bool)
    valid[:, 1:] = rows[None, :] > beam.last_row[:, None]
    last_row = np.repeat(beam.last_row[:, None], n_options, axis=1)
    last_row[:, 1:] = rows[None, :]
    choice = np.repeat(beam.choice, n_options, axis=0)
    choice[:, depth] = np.tile(np.arange(-1, n_options - 1), len(choice) // n_options)
    grown = _Beam(
        base=base.ravel(),
        last_row=last_row.ravel(),
        choice=choice,
        n=_expand(beam.n, 1, n_options),
        w_sum=_expand(beam.w_sum, w, n_options),
        wm=_expand(beam.wm, w * m, n_options),
        wx=_expand(beam.wx, w * x, n_options),
        wmm=_expand(beam.wmm, w * abs(m) ** 2, n_options),
        wxx=_expand(beam.wxx, w * np.abs(x) ** 2, n_options),
        wmx=_expand(beam.wmx, w * np.conj(m) * x, n_options),
    )
    return grown, valid.ravel()


def _cheapest(total: np.ndarray, beam_width: int) -> np.ndarray:
    """Indices of the ``beam_width`` cheapest finite hypotheses (ties keep their order, so results are stable)."""
    keep = np.flatnonzero(np.isfinite(total))
    if len(keep) > beam_width:
        keep = keep[np.argsort(total[keep], kind="stable")[:beam_width]]
    return keep


def _best_naming(
    beam: _Beam, total: np.ndarray, groups: Sequence[Sequence[Candidate]], levels: Sequence[int], prior: SkeletonPrior
) -> dict[str, Candidate]:
    """The cheapest complete hypothesis as label -> chosen candidate, cranio-caudal (absent labels left out)."""
    best = int(np.argmin(total))
    chosen = {
        prior.labels[j]: groups[j][int(beam.choice[best, depth])]
        for depth, j in enumerate(levels)
        if beam.choice[best, depth] >= 0
    }
    log.debug(
        "skeleton search: %d/%d labels with candidates named, cost %.2f (%d hypotheses in beam)",
        len(chosen),
        len(levels),
        float(total[best]),
        len(total),
    )
    return chosen


def extend_chain(
    chosen: Mapping[str, Candidate],
    candidates: Sequence[Candidate],
    labels: Sequence[str],
    renamed_score: float = 0.5,
    tolerance: float = 0.35,
    weaker: Sequence[Candidate] = (),
) -> dict[str, Candidate]:
    """Name the detections that continue the chosen chain beyond its ends by their place in it.

    A network that names structures by counting can lose count part-way down a long field
    of view: the upper structures come out right and the lower ones one level too high, so
    their names are already taken and :func:`search`, which only uses a candidate under its
    own name, leaves a run of real structures unnamed. Here the chain grows one label at a
    time, caudally past its last structure and cranially past its first: the next label's
    expected position continues the last two chosen structures (same spacing and direction
    per label), and the strongest unused detection within ``tolerance`` of one label spacing
    of it takes that label. Growth stops at the first gap, at a label already chosen and at
    the end of ``labels``, so nothing is named where nothing was detected.

    A detection renamed this way keeps its score times ``renamed_score`` (its own score when
    the network also gave it this name), so it stands out for review.

    Where no detection in ``candidates`` continues the chain, a ``weaker`` one may, but only
    under its own name: past the chain's ends no neighbour vouches for a renamed peak, while
    a peak the network itself gives the next label, where the chain expects that label, is
    two pieces of evidence agreeing. Why: a last level on the edge of the search's threshold
    (the bundled sample's L5 peaks at 0.099 under float32 and just above 0.1 under bfloat16)
    would otherwise be named or not by the arithmetic the CPU happens to use.

    Parameters
    ----------
    chosen : mapping of str to Candidate
        The search's answer.
    candidates : sequence of Candidate
        Every candidate it chose from (positions in input pixels).
    labels : sequence of str
        All labels, cranio-caudal, without gaps (vertebrae and discs alternating).
    renamed_score : float
        Score factor of a detection named differently from the network.
    tolerance : float
        Largest distance from the expected position, as a fraction of the label spacing.
    weaker : sequence of Candidate
        Detections below the search's threshold, used only under their own names.

    Returns
    -------
    dict of str -> Candidate
        ``chosen`` plus the named extensions, in cranio-caudal order.
    """
    index = {name: i for i, name in enumerate(labels)}
    named = {name: c for name, c in chosen.items() if name in index}
    if len(named) < 2:
        return dict(chosen)
    used = [_at(c) for c in named.values()]
    for direction in (1, -1):
        while True:
            ends = sorted(named, key=index.__getitem__)[::-direction][:2]  # the end, then its neighbour
            (i_end, end), (i_prev, prev) = ((index[n], named[n]) for n in ends)
            i_next = i_end + direction
            if not 0 <= i_next < len(labels) or labels[i_next] in named:
                break
            per_label = (_at(end) - _at(prev)) / (i_end - i_prev)
            expected = _at(end) + per_label * (i_next - i_end)
            radius = tolerance * abs(per_label)
            taken = _take(labels[i_next], expected, radius, candidates, used, renamed_score)
            if taken is None:
                own_name = [c for c in weaker if c.label == labels[i_next]]
                taken = _take(labels[i_next], expected, radius, own_name, used, renamed_score)
            if taken is None:
                break
            named[labels[i_next]] = taken
            used.append(_at(taken))
    return _in_order(named, chosen, index)


def fill_gaps(
    chosen: Mapping[str, Candidate],
    candidates: Sequence[Candidate],
    labels: Sequence[str],
    renamed_score: float = 0.5,
    tolerance: float = 0.35,
) -> dict[str, Candidate]:
    """Name the detections in the chain's gaps by their place between the structures around them.

    A spine has no gaps: between two chosen structures k labels apart lie k - 1 others. On
    a scan unlike its training data the network's peaks for some of them are weak or carry
    a neighbour's name, and :func:`search` leaves their labels out. Here each missing label
    between two chosen structures expects its point on the line between them, spaced evenly
    per label, and takes the strongest unused detection within ``tolerance`` of one label
    spacing of it, as :func:`extend_chain` does past the chain's ends (``candidates`` may
    hold weaker peaks than the search used: the chain around a gap vouches for it). A gap
    with no detection at a place stays a gap there: nothing is named where nothing was seen.

    The parameters are :func:`extend_chain`'s; returns ``chosen`` plus the named fillings,
    in cranio-caudal order.
    """
    index = {name: i for i, name in enumerate(labels)}
    named = {name: c for name, c in chosen.items() if name in index}
    order = sorted(named, key=index.__getitem__)
    used = [_at(c) for c in named.values()]
    for upper, lower in itertools.pairwise(order):
        i_upper, i_lower = index[upper], index[lower]
        per_label = (_at(named[lower]) - _at(named[upper])) / (i_lower - i_upper)
        for i in range(i_upper + 1, i_lower):
            expected = _at(named[upper]) + per_label * (i - i_upper)
            taken = _take(labels[i], expected, tolerance * abs(per_label), candidates, used, renamed_score)
            if taken is not None:
                named[labels[i]] = taken
                used.append(_at(taken))
    return _in_order(named, chosen, index)


def gaps(chosen: Mapping[str, Candidate], labels: Sequence[str]) -> list[str]:
    """The labels missing between the chain's first and last chosen structure, cranio-caudal."""
    inner = sorted(labels.index(name) for name in chosen if name in labels)
    return [labels[i] for i in range(inner[0] + 1, inner[-1]) if labels[i] not in chosen] if inner else []


def _at(c: Candidate) -> complex:
    return complex(c.row, c.col)


def _take(
    label: str,
    expected: complex,
    radius: float,
    candidates: Sequence[Candidate],
    used: Sequence[complex],
    renamed_score: float,
) -> Candidate | None:
    """The strongest detection within ``radius`` of ``expected``, farther than that from every used point, as ``label``.

    It keeps its score when the network also named it ``label`` (the best such score
    nearby), else its score times ``renamed_score``; None when no detection is near.
    """
    near = [c for c in candidates if abs(_at(c) - expected) <= radius and min(abs(_at(c) - u) for u in used) > radius]
    if not near:
        return None
    best = max(near, key=lambda c: c.score)
    own = [c.score for c in near if c.label == label]
    return Candidate(label, best.row, best.col, max(own) if own else best.score * renamed_score)


def _in_order(named: Mapping[str, Candidate], chosen: Mapping[str, Candidate], index: Mapping[str, int]) -> dict:
    """``named`` cranio-caudal, then the entries of ``chosen`` whose names are not labels."""
    return {name: named[name] for name in sorted(named, key=index.__getitem__)} | {
        name: c for name, c in chosen.items() if name not in index
    }


def anchor_on_sacrum(
    chosen: Mapping[str, Candidate],
    candidates: Sequence[Candidate],
    labels: Sequence[str],
    min_score: float = 0.5,
    tolerance: float = 0.5,
) -> tuple[dict[str, Candidate], bool]:
    """Name the chain from the sacrum when the network sees S1 confidently just below it.

    Why: names that come from counting levels down a field of view can be one level off
    throughout (the L5-S1 disc called L4-L5, L5 called L4, ...), and the skeleton search
    cannot tell, because a shifted chain fits the skeleton as well as the right one. The
    sacrum is unlike every lumbar level, so a confident S1 detection is a landmark: the disc
    directly above it is L5-S1, the body above that L5, and so on up.

    What: the S1 point is the strongest ``"S1"`` candidate. It anchors the chain only when
    ``labels`` hold S1 and L5-S1, its score is at least ``min_score``, and it lies where the
    sacrum follows the chain: within ``tolerance`` of one label spacing of the point one
    spacing caudal of the chain's lowest disc (the spacing is that disc minus the chain
    structure above it, per label, so the lordosis just above the sacrum is followed). A
    chain structure below that disc must be the sacrum itself under another name (within the
    same tolerance of S1), else S1 sits mid-chain or above a part of it and is ignored. Then
    every structure from the lowest disc up is renamed by the same shift that makes that
    disc L5-S1 (an even number of labels, so discs stay discs), names that leave ``labels``
    are dropped, and S1 takes the S1 point with its own score. Scores are kept: the
    detections are the network's, only their names change.

    Parameters
    ----------
    chosen : mapping of str to Candidate
        The named chain (:func:`search`, then :func:`extend_chain`).
    candidates : sequence of Candidate
        Every candidate it chose from (positions in input pixels).
    labels : sequence of str
        All labels, cranio-caudal, without gaps (vertebrae and discs alternating).
    min_score : float
        Lowest score of an S1 detection trusted as a landmark.
    tolerance : float
        Largest distance of S1 from where the chain puts it, as a fraction of the label
        spacing (0.5: nearer one step than two below the lowest disc).

    Returns
    -------
    (dict of str -> Candidate, bool)
        The chain, cranio-caudal, and whether its names were changed by the sacrum. Without a
        usable S1 the chain comes back unchanged (a new dict with the same entries) and False.
    """
    unchanged = dict(chosen), False
    index = {name: i for i, name in enumerate(labels)}
    sacrum, lowest_disc = structure("S1").name, structure("L5-S1").name
    peaks = [c for c in candidates if _canonical(c.label) == sacrum]
    if sacrum not in index or lowest_disc not in index or not peaks:
        return unchanged
    s1 = max(peaks, key=lambda c: c.score)
    chain = {name: c for name, c in chosen.items() if name in index and name != sacrum}
    order = sorted(chain, key=index.__getitem__)
    discs = [name for name in order if structure(name).kind == "disc"]
    if s1.score < min_score or not discs or order[0] == discs[-1]:
        return unchanged

    disc = discs[-1]
    above = order[order.index(disc) - 1]
    per_label = (_at(chain[disc]) - _at(chain[above])) / (index[disc] - index[above])
    radius = tolerance * abs(per_label)
    below = order[order.index(disc) + 1 :]
    misplaced = abs(_at(s1) - _at(chain[disc]) - per_label) > radius
    if misplaced or any(abs(_at(chain[n]) - _at(s1)) > radius for n in below):
        return unchanged
    shift = index[lowest_disc] - index[disc]
    if shift:
        log.info("sacrum anchor: chain renamed by %+d labels (%s was %s)", shift, lowest_disc, disc)
    return _renamed(chosen, labels, disc, shift, {sacrum: s1}), shift != 0


def _renamed(
    chosen: Mapping[str, Candidate],
    labels: Sequence[str],
    last: str,
    shift: int,
    landmarks: Mapping[str, Candidate],
) -> dict[str, Candidate]:
    """The chain down to ``last`` renamed by ``shift`` labels, then ``landmarks`` under their keys.

    Names that leave ``labels`` are dropped; the detections keep their places and scores.
    Structures not in ``labels`` follow, unchanged.
    """
    index = {name: i for i, name in enumerate(labels)}
    named = {
        labels[index[name] + shift]: Candidate(labels[index[name] + shift], c.row, c.col, c.score)
        for name, c in chosen.items()
        if name in index and index[name] <= index[last] and index[name] + shift >= 0
    }
    named |= {name: Candidate(name, c.row, c.col, c.score) for name, c in landmarks.items()}
    return _in_order(named, chosen, index)


def anchor_on_junction(
    chosen: Mapping[str, Candidate],
    candidates: Sequence[Candidate],
    labels: Sequence[str],
    min_score: float = 0.5,
    min_sacral_score: float = 0.3,
    tolerance: float = 0.5,
) -> tuple[dict[str, Candidate], bool]:
    """Name the chain from the lumbosacral junction when the chain runs past it.

    Why: a network can count the upper levels one too low and still see the bottom right.
    The skeleton search then trusts the many upper names, names the L5 body S1 and L4 L5,
    and :func:`anchor_on_sacrum` cannot help: nothing lies below the chain. But the L5
    channel peaks on the real L5, with the L5-S1 disc and the S1 body below it, and the
    sacrum is the landmark to count from.

    What: the junction is the L5, L5-S1 and S1 candidates, one after the other caudally, each
    0.4 to 1.6 label spacings (0.25 for S1, whose centroid sits close under the disc) from the
    one above, and within 73° (S1: 78°, the sacrum bends back) of the chain's direction; of
    those rows, the one with the highest summed score. It names the chain only when its L5
    scores ``min_score``, its disc and S1 together ``min_sacral_score``, its S1 is the
    strongest S1 detection (else the sacrum is elsewhere, maybe where this L5 is), its L5 lies on a
    chain vertebra (within ``tolerance`` of a spacing) named otherwise; chain structures below
    that vertebra must be the junction's disc and S1 themselves, else the chain is left alone.
    The chain's structures above that vertebra are renamed by one shift, names that leave
    ``labels`` are dropped, and L5, L5-S1 and S1 take the junction's points with their own
    scores. The spacing is the median per-label step of the chain.

    Returns
    -------
    (dict of str -> Candidate, bool)
        The chain, cranio-caudal, and whether it was renamed; unchanged (a new dict) and
        False without a junction that names it otherwise.
    """
    unchanged = dict(chosen), False
    index = {name: i for i, name in enumerate(labels)}
    junction_labels = tuple(structure(n).name for n in ("L5", "L5-S1", "S1"))
    chain = {name: c for name, c in chosen.items() if name in index}
    order = sorted(chain, key=index.__getitem__)
    if not set(junction_labels) <= set(index) or len(order) < 3:
        return unchanged
    steps = [(_at(chain[b]) - _at(chain[a])) / (index[b] - index[a]) for a, b in itertools.pairwise(order)]
    per_label = complex(float(np.median([z.real for z in steps])), float(np.median([z.imag for z in steps])))
    if abs(per_label) == 0:
        return unchanged
    direction = per_label / abs(per_label)

    def follows(above: Candidate, below: Candidate, nearest: float, cosine: float) -> bool:
        step = _at(below) - _at(above)
        along = (step * direction.conjugate()).real
        return nearest <= abs(step) / abs(per_label) <= 1.6 and along >= cosine * abs(step)

    by_label = {n: [c for c in candidates if _canonical(c.label) == n] for n in junction_labels}
    rows = [
        (l5, disc, s1)
        for l5 in by_label[junction_labels[0]]
        if l5.score >= min_score
        for disc in by_label[junction_labels[1]]
        if follows(l5, disc, 0.4, 0.3)
        for s1 in by_label[junction_labels[2]]
        if follows(disc, s1, 0.25, 0.2)
    ]
    if not rows:
        return unchanged
    junction = dict(zip(junction_labels, max(rows, key=lambda row: sum(c.score for c in row)), strict=True))
    if junction["L5-S1"].score + junction["S1"].score < min_sacral_score:
        return unchanged
    if junction["S1"] is not max(by_label[junction_labels[2]], key=lambda c: c.score):
        return unchanged  # the sacrum is where S1 peaks strongest (as for anchor_on_sacrum), not below it
    radius = tolerance * abs(per_label)
    on_l5 = min(order, key=lambda n: abs(_at(chain[n]) - _at(junction["L5"])))
    if abs(_at(chain[on_l5]) - _at(junction["L5"])) > radius or structure(on_l5).kind != "vertebra":
        return unchanged
    shift = index["L5"] - index[on_l5]
    if shift == 0:
        return unchanged
    for name in order[order.index(on_l5) + 1 :]:  # below it: the junction's own disc and S1, or no renaming
        new = index[name] + shift
        if not 0 <= new < len(labels) or labels[new] not in junction:
            return unchanged
        if abs(_at(chain[name]) - _at(junction[labels[new]])) > radius:
            return unchanged
    log.info("lumbosacral junction: chain renamed by %+d labels (L5 was %s)", shift, on_l5)
    return _renamed(chosen, labels, on_l5, shift, junction), True
