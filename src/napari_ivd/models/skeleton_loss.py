"""HCA-Net's skeleton loss: keypoints read off the heatmaps must fit the annotated spine's geometry.

Bozorgpour et al. (HCA-Net, 2023) add to the heatmap loss a term on positions: each heatmap
channel becomes, by a softmax over its pixels, a 2-D distribution of where its structure is;
a prototype position is the average of T samples from it; the loss is the L2 distance of
each prototype to its annotated keypoint plus, weighted by a learnable alpha, how much the
pairwise distances between prototypes differ from those between the annotated keypoints
(``D(V, i, k) = ||V_i - V_{i+k}||``), so a prediction whose spacing or shape does not match
the spine is penalised even when each blob looks plausible on its own.

Choices where the paper leaves room (its equations are missing from the text in shared/papers):

* **Differentiable sampling.** Samples are drawn with the straight-through Gumbel-softmax (tau 1):
  the forward pass uses exact one-hot samples from the softmax distribution, the gradient
  that of the relaxed sample. ``samples=0`` uses the distribution's mean instead (the
  soft-argmax, the T -> infinity limit), deterministic and lower-variance.
* **theta** (0.75 in the paper) is read as the softmax temperature over heatmap logits.
* **Learnable alpha** (0.8 in the paper) multiplies the pair-distance term. A bare learnable
  factor on a non-negative loss is driven to 0 by gradient descent, so alpha is learnt as the
  precision of a Laplace likelihood, ``alpha * L_pd - log(alpha)`` (Kendall et al. 2018),
  started at 0.8; the optimiser receives it through ``loss_fn.parameters()``.
* **All pairs** ``i < j`` of annotated keypoints enter the pair term (every offset k).
* Distances are in output pixels; keypoints not annotated (``visible == 0`` or NaN) are
  left out of both terms.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from napari_ivd.models.decode import input_to_output_px

__all__ = ["SkeletonLoss", "check_skeleton_settings", "soft_positions"]

log = logging.getLogger(__name__)

_EPS = 1e-6  # inside square roots: keeps gradients finite at zero distance


def soft_positions(logits: Tensor, temperature: float = 1.0, samples: int = 0) -> Tensor:
    """Prototype position of each heatmap channel from its softmax distribution over pixels.

    Parameters
    ----------
    logits : Tensor
        ``(B, K, h, w)`` heatmap logits.
    temperature : float
        Softmax temperature (HCA-Net's theta).
    samples : int
        T > 0: the mean of T straight-through Gumbel-softmax samples (one-hot forward,
        relaxed gradient); 0: the distribution's mean (soft-argmax).

    Returns
    -------
    Tensor
        ``(B, K, 2)`` (row, col) in output pixels, differentiable in ``logits``.
    """
    h, w = logits.shape[-2:]
    log_prob = F.log_softmax(logits.float().flatten(2) / temperature, dim=-1)  # (B, K, h*w)
    if samples > 0:  # (T, B, K, h*w) one-hot samples, gradient of the relaxed ones
        weights = F.gumbel_softmax(log_prob.expand(samples, -1, -1, -1), tau=1.0, hard=True, dim=-1).mean(dim=0)
    else:
        weights = log_prob.exp()
    rows = torch.arange(h, device=logits.device, dtype=weights.dtype).repeat_interleave(w)
    cols = torch.arange(w, device=logits.device, dtype=weights.dtype).repeat(h)
    return torch.stack([weights @ rows, weights @ cols], dim=-1)


def check_skeleton_settings(owner: str, temperature: object, samples: object, alpha: object) -> None:
    """Refuse a non-positive temperature or alpha, or a sample count that is not an int >= 0.

    Raises
    ------
    ValueError
        Naming ``owner`` and the bad setting.
    """
    for name, value, ok in (
        ("temperature", temperature, _is_real(temperature) and temperature > 0),
        ("alpha", alpha, _is_real(alpha) and alpha > 0),
        ("samples", samples, isinstance(samples, int) and not isinstance(samples, bool) and samples >= 0),
    ):
        if not ok:
            raise ValueError(f"{owner}: {name} must be {'an int >= 0' if name == 'samples' else '> 0'}, got {value!r}")


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _distance(a: Tensor, b: Tensor) -> Tensor:
    return torch.sqrt(((a - b) ** 2).sum(dim=-1) + _EPS)


class SkeletonLoss(nn.Module):
    """L2 from soft keypoint prototypes to the annotation plus alpha-weighted pair-distance error.

    Parameters
    ----------
    temperature : float
        Softmax temperature turning heatmap logits into position distributions.
    samples : int
        Samples T per prototype (0: the soft-argmax mean), see :func:`soft_positions`.
    alpha : float
        Initial weight of the pair-distance term (learnt, > 0).

    Example
    -------
    >>> loss = SkeletonLoss()
    >>> total, parts = loss(torch.zeros(1, 2, 8, 8), torch.tensor([[[4.5, 4.5], [10.5, 4.5]]]), torch.ones(1, 2))
    >>> sorted(parts)
    ['skeleton', 'skeleton_alpha', 'skeleton_l2', 'skeleton_pd']
    """

    def __init__(self, temperature: float = 0.75, samples: int = 8, alpha: float = 0.8) -> None:
        super().__init__()
        check_skeleton_settings("SkeletonLoss", temperature, samples, alpha)
        self.temperature, self.samples = temperature, samples
        self.log_alpha = nn.Parameter(torch.tensor(math.log(alpha)))

    def forward(self, logits: Tensor, keypoints_px: Tensor, visible: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Skeleton loss of heatmap ``logits`` ``(B, K, h, w)`` (output stride 2).

        Parameters
        ----------
        logits : Tensor
            ``(B, K, h, w)`` heatmap logits.
        keypoints_px : Tensor
            ``(B, K, 2)`` annotated (row, col) in INPUT pixels, NaN where absent (the
            ``keypoints`` of a training batch).
        visible : Tensor
            ``(B, K)``; labels with 0 are ignored.

        Returns
        -------
        total : Tensor
            Scalar ``L_l2 + alpha * L_pd - log(alpha)``.
        parts : dict
            ``skeleton`` (the total), ``skeleton_l2``, ``skeleton_pd``, ``skeleton_alpha`` as floats.
        """
        b, k = logits.shape[:2]
        if keypoints_px.shape != (b, k, 2) or visible.shape != (b, k):
            raise ValueError(
                f"keypoints {tuple(keypoints_px.shape)} / visible {tuple(visible.shape)} do not fit heatmap "
                f"{tuple(logits.shape)}; expected ({b}, {k}, 2) / ({b}, {k})"
            )
        valid = (visible > 0) & torch.isfinite(keypoints_px).all(dim=-1)  # (B, K)
        truth = torch.where(valid[..., None], input_to_output_px(keypoints_px.float()), 0.0)
        pred = soft_positions(logits, self.temperature, self.samples)
        l2 = torch.where(valid, _distance(pred, truth), 0.0).sum() / valid.sum().clamp(min=1)
        pairs = valid[:, :, None] & valid[:, None, :] & torch.ones(k, k, dtype=torch.bool, device=valid.device).triu(1)
        pair_error = (_distance(pred[:, :, None], pred[:, None]) - _distance(truth[:, :, None], truth[:, None])).abs()
        pd = torch.where(pairs, pair_error, 0.0).sum() / pairs.sum().clamp(min=1)
        alpha = self.log_alpha.exp()
        total = l2 + alpha * pd - self.log_alpha
        parts = {"skeleton": total, "skeleton_l2": l2, "skeleton_pd": pd, "skeleton_alpha": alpha}
        return total, {name: float(value.detach()) for name, value in parts.items()}
