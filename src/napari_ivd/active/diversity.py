"""What a scan looks like to the model (an embedding), and greedy k-center picks that cover what is unseen.

Uncertainty alone tends to pick near-duplicates (five scans from one scanner that all
confuse the model the same way). Sener & Savarese's core-set idea (greedy k-center) picks
instead the case farthest from everything already annotated or picked; weighting that
distance by uncertainty keeps both. The embedding is what the model itself makes of the
mid-sagittal slice (its :meth:`~napari_ivd.models.conventions.PipelineNet.forward_features`:
for ivdnet its deepest encoder features, after the dense ASPP; by default the heatmaps and
masks), mean- and max-pooled per channel and scaled to unit length. The slice is prepared
as for a prediction (:mod:`napari_ivd.preprocess`); one slice is far cheaper than a prediction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_ivd.io import SagittalView, Volume
from napari_ivd.models.conventions import PipelineNet
from napari_ivd.preprocess import ModelInput, channel_picks, network_input, pad_to_multiple

log = logging.getLogger(__name__)

__all__ = ["Pick", "embed_volume", "k_center_order", "points_mid_sagittal_mm"]


@dataclass(frozen=True)
class Pick:
    """One greedy k-center pick.

    ``index`` is the candidate's row; ``value`` what it was picked for (its weight times
    its distance as a share of the first spread, see :func:`k_center_order`); ``distance``
    its distance to the nearest reference when picked (``inf`` when there was none yet);
    ``nearest`` that reference's row in ``np.vstack([labelled, candidates])`` (None when
    there was none).
    """

    index: int
    value: float
    distance: float
    nearest: int | None


def points_mid_sagittal_mm(view: SagittalView, ijk_vox: np.ndarray) -> float | None:
    """Left-right display position (mm) of annotated points (median): the slice to embed a verified case at."""
    if not len(ijk_vox):
        return None
    display = view.vox_to_display(np.asarray(ijk_vox, dtype=np.float64).reshape(-1, 3))
    return float(np.median(display[:, 0]) * view.spacing_mm[0])


def _pooled(maps: torch.Tensor) -> torch.Tensor:
    """(C, H, W) -> (2C,): each channel's mean and maximum."""
    flat = maps.flatten(1)
    return torch.cat([flat.mean(dim=1), flat.amax(dim=1)])


@torch.inference_mode()
def embed_volume(
    volume: Volume,
    model: PipelineNet,
    card: dict[str, Any],
    device: str | torch.device = "cpu",
    mid_sagittal_mm: float | None = None,
) -> np.ndarray:
    """Unit-length embedding of a scan: the model's pooled view of its mid-sagittal slice.

    Parameters
    ----------
    volume : Volume
    model, card : from :func:`napari_ivd.models.load_checkpoint`.
    device : where ``model`` lives.
    mid_sagittal_mm : float, optional
        Left-right position of the slice on the display grid (mm, as
        :attr:`napari_ivd.inference.Prediction.mid_sagittal_mm`); default the middle slice.

    Returns
    -------
    (D,) float64 array of unit norm: twice the channels of the model's feature maps.
    """
    model_input = ModelInput.from_card(card)
    view = volume.view
    n_slices = view.display.shape[0]
    centre = n_slices // 2 if mid_sagittal_mm is None else round(mid_sagittal_mm / view.spacing_mm[0])
    picks = channel_picks(int(centre), n_slices, model_input.in_channels)
    planes = pad_to_multiple(network_input(volume, model_input, picks), model_input.multiple)
    x = torch.from_numpy(planes.astype(np.float32))[None].to(device)
    pooled = torch.cat([_pooled(maps[0]) for maps in model.forward_features(x)])
    embedding = pooled.double().cpu().numpy()
    norm = float(np.linalg.norm(embedding))
    return embedding / norm if norm > 0 else embedding


def k_center_order(
    candidates: np.ndarray, labelled: np.ndarray | None = None, weights: np.ndarray | None = None
) -> list[Pick]:
    """Order every candidate by greedy k-center, optionally weighted: far from the known ones first.

    At each step the candidate maximising ``weight * distance / spread`` is picked, where
    ``distance`` is its Euclidean distance to the nearest labelled embedding or earlier pick
    and ``spread`` the largest such distance the first time there was one (a fixed scale,
    so a near-duplicate keeps a value near 0 however late it comes); it then joins the
    references. With nothing to measure against yet, the highest weight goes first (the
    first row when unweighted).

    Parameters
    ----------
    candidates : (N, D) array
        Embeddings of the cases to order.
    labelled : (M, D) array, optional
        Embeddings of the cases already annotated.
    weights : (N,) array, optional
        Non-negative weight per candidate (e.g. its uncertainty); default all 1 (pure k-center).

    Returns
    -------
    list of Pick
        All N candidates in pick order.

    Example
    -------
    >>> [p.index for p in k_center_order(np.array([[0.0, 1.0], [1.0, 0.0]]), labelled=np.array([[0.1, 1.0]]))]
    [1, 0]
    """
    candidates = np.asarray(candidates, dtype=np.float64).reshape(len(candidates), -1)
    width = candidates.shape[1]
    labelled = np.zeros((0, width)) if labelled is None else np.asarray(labelled, np.float64).reshape(-1, width)
    weight = np.ones(len(candidates)) if weights is None else np.asarray(weights, dtype=np.float64)
    nearest_distance = np.full(len(candidates), np.inf)
    nearest = np.full(len(candidates), -1)
    for row, reference in enumerate(labelled):
        _update(candidates, reference, row, nearest_distance, nearest)
    remaining = list(range(len(candidates)))
    picks: list[Pick] = []
    spread: float | None = None
    while remaining:
        distance = nearest_distance[remaining]
        if spread is None and np.isfinite(distance).all():
            spread = float(distance.max())
        share = np.ones(len(remaining)) if not spread else distance / spread
        value = weight[remaining] * share
        best = int(np.argmax(value))
        chosen = remaining.pop(best)
        neighbour = int(nearest[chosen])
        reference = None if neighbour < 0 else neighbour
        picks.append(Pick(chosen, float(value[best]), float(nearest_distance[chosen]), reference))
        _update(candidates, candidates[chosen], len(labelled) + chosen, nearest_distance, nearest)
    return picks


def _update(candidates: np.ndarray, reference: np.ndarray, row: int, distance: np.ndarray, nearest: np.ndarray) -> None:
    """Let ``reference`` (row ``row`` of labelled + candidates) be the nearest where it is closer."""
    to_reference = np.linalg.norm(candidates - reference, axis=1)
    closer = to_reference < distance
    distance[closer] = to_reference[closer]
    nearest[closer] = row
