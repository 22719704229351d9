"""Heatmaps + short-range offsets -> keypoint candidates, by Hough voting (numpy/scipy only).

A keypoint network (see ``docs/pipeline.md``) predicts, per label, a probability heatmap and a
two-channel short-range offset field at output stride 2. Following SpineOne (§D), every output
pixel that is reasonably sure it lies near the keypoint votes, with its probability, for the
position it points at (``pixel + offset``); the votes are spread bilinearly to the four
neighbouring pixels, so the vote map peaks sharply where many confident pixels agree, at a
sub-pixel position. Peaks of that map, after non-maximum suppression, are the candidates that
:func:`napari_ivd.skeleton.search` later names.

Coordinates
-----------
Output pixel ``(y, x)`` covers input pixels ``stride*y .. stride*y + stride - 1``, so its centre
lies at input pixel ``stride * (y + 0.5) - 0.5`` (2y + 0.5 for stride 2); the same affine map
converts any sub-pixel output coordinate (see :func:`output_to_input_px` and its inverse
:func:`input_to_output_px`, which training targets must use too). Input pixels are those of
the slice resampled to the model's ``spacing_mm``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["Candidate", "decode", "hough_votes", "input_to_output_px", "output_to_input_px", "pool_channels"]

log = logging.getLogger(__name__)

# At most this many vote-map maxima per channel go through non-maximum suppression; far more
# than any real channel has, it only bounds the work on pathological (noise) maps.
_MAX_PEAKS_PER_CHANNEL = 256


@dataclass(frozen=True, slots=True)
class Candidate:
    """One possible position of one labelled structure on a resampled sagittal slice.

    Attributes
    ----------
    label : str
        Structure name from :mod:`napari_ivd.anatomy` ("L4", "L4-L5").
    row, col : float
        Sub-pixel position in INPUT pixels of the resampled slice (row: down, S→I; col: A→P);
        multiply by the model's ``spacing_mm`` for millimetres.
    score : float
        Confidence in 0..1: the network's heatmap probability at this position.
    """

    label: str
    row: float
    col: float
    score: float


def output_to_input_px(coord_out: float | np.ndarray, stride: int = 2) -> float | np.ndarray:
    """Map a (sub-pixel) output-grid coordinate to input pixels: ``stride * (c + 0.5) - 0.5``.

    Parameters
    ----------
    coord_out : float or array
        Row or column coordinate(s) on the network's output grid.
    stride : int
        Output stride of the network (2 in ``docs/pipeline.md``).

    Returns
    -------
    float or array
        The same coordinate(s) in input pixels.
    """
    return stride * (coord_out + 0.5) - 0.5


def input_to_output_px(coord_in: float | np.ndarray, stride: int = 2) -> float | np.ndarray:
    """Inverse of :func:`output_to_input_px`: ``(c + 0.5) / stride - 0.5``.

    Training targets (Gaussian centres, offsets) must be placed with this map so that decoding
    returns the annotated input-pixel position exactly.
    """
    return (coord_in + 0.5) / stride - 0.5


def _check_maps(prob: np.ndarray, offset_rows: np.ndarray, offset_cols: np.ndarray) -> None:
    if prob.ndim != 2:
        raise ValueError(f"hough_votes: prob must be 2-D (h, w), got shape {prob.shape}")
    if offset_rows.shape != prob.shape or offset_cols.shape != prob.shape:
        raise ValueError(f"hough_votes: offsets {offset_rows.shape} / {offset_cols.shape} must match prob {prob.shape}")


def hough_votes(
    prob: np.ndarray,
    offset_rows: np.ndarray,
    offset_cols: np.ndarray,
    min_prob: float = 0.05,
) -> np.ndarray:
    """Hough score map of one channel: confident pixels vote for where their offsets point.

    Each output pixel ``(y, x)`` with probability ``p >= min_prob`` adds ``p`` at
    ``(y + offset_rows[y, x], x + offset_cols[y, x])``, spread over the four surrounding pixels
    with bilinear weights (SpineOne's Hough score map, without its constant ``1 / (pi R^2)``).
    The bilinear spread keeps the sub-pixel information: the weighted centroid of the votes
    cast by a set of agreeing pixels is exactly the point they agree on. Votes that land
    outside the map are dropped. Low-probability pixels are skipped because their offsets are
    not supervised (only within ``offset_radius_px`` of a keypoint) and mostly noise.

    Parameters
    ----------
    prob : ndarray, shape (h, w)
        Heatmap probabilities (after the sigmoid) of one label, output grid.
    offset_rows, offset_cols : ndarray, shape (h, w)
        Short-range offsets in OUTPUT pixels from each pixel to the keypoint.
    min_prob : float
        Pixels with a lower probability (or non-finite values) cast no vote.

    Returns
    -------
    ndarray, shape (h, w), float64
        Vote mass per output pixel; sums to the total probability of the voting pixels whose
        votes land inside the map.

    Example
    -------
    >>> prob = np.zeros((8, 8)); prob[2:5, 2:5] = 0.5
    >>> rows, cols = np.mgrid[0:8, 0:8].astype(float)
    >>> votes = hough_votes(prob, 3.25 - rows, 3.0 - cols)
    >>> float(votes[3, 3]), float(votes[4, 3])
    (3.375, 1.125)
    """
    prob = np.asarray(prob, dtype=np.float64)
    offset_rows = np.asarray(offset_rows, dtype=np.float64)
    offset_cols = np.asarray(offset_cols, dtype=np.float64)
    _check_maps(prob, offset_rows, offset_cols)
    h, w = prob.shape
    with np.errstate(invalid="ignore"):
        voting = np.isfinite(prob) & (prob >= min_prob) & np.isfinite(offset_rows) & np.isfinite(offset_cols)
    ys, xs = np.nonzero(voting)
    mass = prob[ys, xs]
    target_rows = ys + offset_rows[ys, xs]
    target_cols = xs + offset_cols[ys, xs]
    row0 = np.floor(target_rows)
    col0 = np.floor(target_cols)
    frac_rows = target_rows - row0
    frac_cols = target_cols - col0
    row0 = row0.astype(np.int64)
    col0 = col0.astype(np.int64)

    flat_index: list[np.ndarray] = []
    flat_mass: list[np.ndarray] = []
    for d_row, d_col, weight in (
        (0, 0, (1 - frac_rows) * (1 - frac_cols)),
        (0, 1, (1 - frac_rows) * frac_cols),
        (1, 0, frac_rows * (1 - frac_cols)),
        (1, 1, frac_rows * frac_cols),
    ):
        rows, cols = row0 + d_row, col0 + d_col
        inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w) & (weight > 0)
        flat_index.append(rows[inside] * w + cols[inside])
        flat_mass.append(mass[inside] * weight[inside])
    votes = np.bincount(np.concatenate(flat_index), weights=np.concatenate(flat_mass), minlength=h * w)
    return votes.reshape(h, w)


def pool_channels(
    heatmap_prob: np.ndarray, offset: np.ndarray, groups: Sequence[Sequence[int]]
) -> tuple[np.ndarray, np.ndarray]:
    """One heatmap per group of channels: the chance that any of them lies here, and where.

    Why: on a scan unlike its training data the network can see a disc plainly yet hesitate
    over its name, spreading the probability over several disc channels, each too weak to
    vote (:func:`hough_votes`). Pooled, they show the disc. The pooled probability is the
    noisy-OR ``1 - prod(1 - p_k)`` of the group's channels; the pooled offset is their
    offsets' mean weighted by ``p_k``, so the channels sure of the place point the way.

    Parameters
    ----------
    heatmap_prob, offset : ndarray
        As :func:`decode` takes them: (K, h, w) probabilities and (2K, h, w) offsets.
    groups : sequence of sequences of int
        Channel indices per pooled channel (for instance every disc label, every vertebra).

    Returns
    -------
    (ndarray, ndarray)
        (G, h, w) probabilities and (2G, h, w) offsets, one channel (pair) per group, to
        :func:`decode` with one name per group.

    Example
    -------
    >>> prob = np.full((2, 1, 1), 0.5); off = np.array([1.0, 0, 3, 0]).reshape(4, 1, 1)
    >>> pooled, pooled_off = pool_channels(prob, off, [[0, 1]])
    >>> float(pooled[0, 0, 0]), float(pooled_off[0, 0, 0])
    (0.75, 2.0)
    """
    heatmap_prob = np.nan_to_num(np.asarray(heatmap_prob, dtype=np.float64))
    offset = np.nan_to_num(np.asarray(offset, dtype=np.float64))
    shape = heatmap_prob.shape[1:]
    probs, offsets = [], []
    for group in groups:
        p = heatmap_prob[list(group)]
        weight = p.sum(axis=0)
        safe = np.where(weight > 0, weight, 1.0)
        probs.append(1.0 - np.prod(1.0 - p, axis=0))
        for axis in (0, 1):
            per_channel = offset[[2 * k + axis for k in group]]
            offsets.append(np.where(weight > 0, (p * per_channel).sum(axis=0) / safe, 0.0))
    empty = np.zeros((0, *shape))
    return (np.stack(probs) if probs else empty), (np.stack(offsets) if offsets else empty)


def _peak_prob(prob: np.ndarray, row: float, col: float) -> float:
    """Highest probability among the (up to) four pixels around a sub-pixel position.

    Not the bilinear interpolation: a Gaussian blob sampled between its pixels is
    underestimated by interpolation (about 6 % for sigma 1.5 px at 0.4 px off-centre), which
    would make scores depend on where the keypoint falls within a pixel.
    """
    h, w = prob.shape
    r0 = min(max(math.floor(row), 0), h - 1)
    c0 = min(max(math.floor(col), 0), w - 1)
    window = prob[r0 : min(r0 + 2, h), c0 : min(c0 + 2, w)]
    return float(np.nanmax(window)) if np.isfinite(window).any() else 0.0


def _refine(votes: np.ndarray, row: int, col: int) -> tuple[float, float]:
    """Weighted centroid of the vote map in the 3x3 window around a peak (output pixels)."""
    h, w = votes.shape
    r0, r1 = max(row - 1, 0), min(row + 2, h)
    c0, c1 = max(col - 1, 0), min(col + 2, w)
    window = votes[r0:r1, c0:c1]
    total = float(window.sum())
    if total <= 0:
        return float(row), float(col)
    rows, cols = np.mgrid[r0:r1, c0:c1]
    return float((window * rows).sum() / total), float((window * cols).sum() / total)


def _channel_peaks(votes: np.ndarray, nms_radius_out: float) -> list[tuple[float, float, float]]:
    """Vote-map maxima after non-maximum suppression, strongest first: (mass, row, col) out px."""
    size = 2 * max(1, math.ceil(nms_radius_out)) + 1
    local_max = ndimage.maximum_filter(votes, size=size, mode="constant", cval=0.0)
    peak_rows, peak_cols = np.nonzero((votes == local_max) & (votes > 0))
    masses = votes[peak_rows, peak_cols]
    order = np.argsort(-masses, kind="stable")[:_MAX_PEAKS_PER_CHANNEL]
    kept: list[tuple[float, float, float]] = []
    for i in order:
        row, col = _refine(votes, int(peak_rows[i]), int(peak_cols[i]))
        # Plateaus and the refined positions of neighbouring maxima can sit closer than the
        # filter window suggests; suppress on the refined sub-pixel positions.
        if all(math.hypot(row - r, col - c) >= nms_radius_out for _, r, c in kept):
            kept.append((float(masses[i]), row, col))
    return kept


def decode(
    heatmap_prob: np.ndarray,
    offset: np.ndarray,
    labels: Sequence[str],
    stride: int = 2,
    max_per_label: int = 3,
    min_score: float = 0.1,
    nms_radius_px: float = 4.0,
    min_prob: float = 0.05,
) -> list[Candidate]:
    """Turn one slice's heatmap probabilities and offsets into labelled keypoint candidates.

    Per channel: build the Hough vote map (:func:`hough_votes`), take its local maxima
    (``scipy.ndimage.maximum_filter``) and suppress maxima closer than ``nms_radius_px`` to a
    stronger one, refine each to sub-pixel precision with the weighted centroid of the vote map
    in the 3x3 window around it (exact when the offsets agree exactly, because votes are spread
    bilinearly), and convert to input pixels.

    Ranking and score are deliberately different quantities. Maxima are ranked by their vote
    mass (how much probability agrees on the point, SpineOne's Hough score), which suppresses
    isolated stray votes. The reported ``score`` is the heatmap probability at the refined
    position (the highest of the four pixels around it): it stays in 0..1 whatever the blob
    size, so it is comparable across channels, models and slices (which the skeleton search
    needs), and it is low where offsets point to a place the heatmap itself does not believe
    in. Candidates with
    ``score < min_score`` are dropped; at most ``max_per_label`` remain per label.

    Parameters
    ----------
    heatmap_prob : ndarray, shape (K, h, w)
        Sigmoid probabilities, one channel per label, output grid.
    offset : ndarray, shape (2K, h, w)
        Short-range offsets in output pixels: channel ``2k`` rows, ``2k + 1`` columns of label k.
    labels : sequence of str, length K
        Channel names in channel order (the model's ``labels``).
    stride : int
        Output stride: input pixels per output pixel.
    max_per_label : int
        Keep at most this many candidates per label (the strongest by vote mass).
    min_score : float
        Drop candidates whose heatmap probability is below this (0..1).
    nms_radius_px : float
        Minimum distance between two candidates of one label, in input pixels.
    min_prob : float
        Minimum probability for a pixel to vote (see :func:`hough_votes`).

    Returns
    -------
    list of Candidate
        Grouped by label in channel order, strongest first within a label; positions in input
        pixels of the resampled slice.

    Raises
    ------
    ValueError
        When the array shapes do not match each other or ``labels``.

    Example
    -------
    >>> candidates = decode(probs, offsets, ("L4", "L4-L5"))  # doctest: +SKIP
    >>> [(c.label, round(c.row, 1), round(c.col, 1)) for c in candidates]  # doctest: +SKIP
    [('L4', 101.3, 57.8), ('L4-L5', 118.9, 60.2)]
    """
    heatmap_prob = np.asarray(heatmap_prob, dtype=np.float64)
    offset = np.asarray(offset, dtype=np.float64)
    if heatmap_prob.ndim != 3:
        raise ValueError(f"decode: heatmap_prob must be (K, h, w), got shape {heatmap_prob.shape}")
    n_labels = heatmap_prob.shape[0]
    if len(labels) != n_labels:
        raise ValueError(f"decode: {len(labels)} labels given for {n_labels} heatmap channels")
    if offset.shape != (2 * n_labels, *heatmap_prob.shape[1:]):
        raise ValueError(
            f"decode: offset must be (2K, h, w) = {(2 * n_labels, *heatmap_prob.shape[1:])}, got {offset.shape}"
        )
    if stride < 1 or max_per_label < 1 or nms_radius_px < 0:
        raise ValueError(
            f"decode: need stride >= 1, max_per_label >= 1, nms_radius_px >= 0; "
            f"got {stride}, {max_per_label}, {nms_radius_px}"
        )

    nms_radius_out = nms_radius_px / stride
    candidates: list[Candidate] = []
    for k, label in enumerate(labels):
        votes = hough_votes(heatmap_prob[k], offset[2 * k], offset[2 * k + 1], min_prob=min_prob)
        kept = 0
        for mass, row_out, col_out in _channel_peaks(votes, nms_radius_out):
            score = min(max(_peak_prob(heatmap_prob[k], row_out, col_out), 0.0), 1.0)
            if score < min_score:
                log.debug(
                    "decode: %s peak at out (%.1f, %.1f), mass %.3g, p=%.3f dropped",
                    label,
                    row_out,
                    col_out,
                    mass,
                    score,
                )
                continue
            row_in = float(output_to_input_px(row_out, stride))
            col_in = float(output_to_input_px(col_out, stride))
            candidates.append(Candidate(str(label), row_in, col_in, score))
            kept += 1
            if kept == max_per_label:
                break
    log.debug("decode: %d candidates over %d labels", len(candidates), n_labels)
    return candidates
