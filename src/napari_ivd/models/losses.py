"""Training losses for keypoint heatmaps, short-range offsets and partial segmentation masks.

All losses honour the visibility rules of docs/pipeline.md: a label that is not annotated in a
sample (``visible == 0``), an offset outside the keypoint's radius (``offset_mask == 0``) and a
mask pixel or channel without ground truth (``seg_valid == 0``) contribute neither loss nor
gradient, so partially labelled scans can be mixed freely. Shapes, with K labels and input
H x W:

==============  ==================  =====================================================
key             shape               meaning
==============  ==================  =====================================================
heatmap         (B, K, H/2, W/2)    Gaussian targets in [0, 1] (logits in the output)
visible         (B, K)              1 where the label is annotated in the sample
offset          (B, 2K, H/2, W/2)   rows, cols to the keypoint, in output pixels
offset_mask     (B, K, H/2, W/2)    1 where an offset is supervised
seg             (B, 2, H, W)        vertebral body, disc masks (logits in the output)
seg_valid       (B, 2, H, W)        1 where the mask is known
==============  ==================  =====================================================
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HeatmapFocalLoss", "IvdLoss", "MaskedSegLoss", "OffsetL1Loss"]

log = logging.getLogger(__name__)

_BATCH_KEYS = ("heatmap", "visible", "offset", "offset_mask", "seg", "seg_valid")
_OUTPUT_KEYS = ("heatmap", "offset", "seg")


def _check_shape(name: str, tensor: Tensor, expected: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != tuple(expected):
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {tuple(expected)} (docs/pipeline.md)")


class HeatmapFocalLoss(nn.Module):
    """Penalty-reduced pixel-wise focal loss on Gaussian heatmaps (CenterNet, SpineOne).

    Why: nearly all heatmap pixels are background; the focal term ``(1 - p)^alpha`` /
    ``p^alpha`` concentrates learning on hard pixels, and ``(1 - y)^beta`` forgives
    near-misses next to the keypoint. With ``p = sigmoid(logit)`` and target ``y``::

        positive pixels:  -(1 - p)^alpha * log(p)
        other pixels:     -(1 - y)^beta * p^alpha * log(1 - p)

    The positives of a channel are the pixel(s) holding its maximum when that maximum is
    > 0, so targets rendered around a sub-pixel keypoint (peak < 1) work as well as integer
    ones. Each (sample, label) channel is weighted by ``visible``; the sum is divided by the
    number of visible labels that have a peak (at least 1).

    Parameters
    ----------
    alpha, beta : float
        Focal and penalty-reduction exponents (2 and 4 as in CenterNet).
    """

    def __init__(self, alpha: float = 2.0, beta: float = 4.0) -> None:
        super().__init__()
        self.alpha, self.beta = alpha, beta

    def forward(self, logits: Tensor, target: Tensor, visible: Tensor) -> Tensor:
        """Loss for ``logits``, ``target`` ``(B, K, h, w)`` and ``visible`` ``(B, K)``; a scalar."""
        _check_shape("heatmap target", target, tuple(logits.shape))
        _check_shape("visible", visible, tuple(logits.shape[:2]))
        logits, target = logits.float(), target.float()
        weight = visible.to(logits.dtype)[:, :, None, None]
        peak = target.flatten(2).amax(dim=2)[:, :, None, None]
        positive = (target >= peak) & (peak > 0)
        prob = torch.sigmoid(logits)
        pos = -((1 - prob) ** self.alpha) * F.logsigmoid(logits)
        neg = -((1 - target).clamp(min=0) ** self.beta) * prob**self.alpha * F.logsigmoid(-logits)
        per_pixel = torch.where(positive, pos, neg) * weight
        num_keypoints = (weight * (peak > 0)).sum().clamp(min=1)
        return per_pixel.sum() / num_keypoints


class OffsetL1Loss(nn.Module):
    """Mean absolute error of short-range offsets, over supervised pixels only.

    Why: offsets are only meaningful near their keypoint (SpineOne's short-range offset);
    elsewhere the target is undefined and may even hold NaN, which is ignored.
    Channels ``2k`` and ``2k + 1`` (rows, cols) of label k share ``mask[:, k]``; the result
    is the mean over both coordinates of all masked (label, pixel) pairs, 0 if there are none.
    """

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """Loss for ``pred``, ``target`` ``(B, 2K, h, w)`` and ``mask`` ``(B, K, h, w)``; a scalar."""
        b, k2, h, w = pred.shape
        _check_shape("offset target", target, (b, k2, h, w))
        _check_shape("offset_mask", mask, (b, k2 // 2, h, w))
        mask2 = mask.repeat_interleave(2, dim=1) > 0
        error = torch.where(mask2, (pred.float() - target.float()).abs(), 0.0)
        return error.sum() / mask2.sum().clamp(min=1)


class MaskedSegLoss(nn.Module):
    """BCE-with-logits plus soft Dice per mask channel, restricted to pixels with ground truth.

    Why: a scan may carry vertebra masks but no disc masks, or masks for part of the field of
    view only; ``valid`` marks where each channel's target is known. BCE is averaged over
    valid pixels per channel; Dice is pooled over the batch per channel (stable when one
    image holds little foreground). A channel with no valid pixel in the batch adds 0, and
    the result is the mean over channels that have valid pixels.

    Parameters
    ----------
    dice_weight : float
        Weight of the Dice term relative to BCE.
    smooth : float
        Added to Dice numerator and denominator.

    Returns
    -------
    total : Tensor
        Scalar ``bce + dice_weight * dice``; ``forward`` also returns both parts.
    """

    def __init__(self, dice_weight: float = 1.0, smooth: float = 1e-5) -> None:
        super().__init__()
        self.dice_weight, self.smooth = dice_weight, smooth

    def forward(self, logits: Tensor, target: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(total, bce, dice)`` scalars for ``logits``, ``target``, ``valid`` ``(B, C, H, W)``."""
        _check_shape("seg target", target, tuple(logits.shape))
        _check_shape("seg_valid", valid, tuple(logits.shape))
        logits, target = logits.float(), target.float()
        valid = valid.to(logits.dtype)
        dims = (0, 2, 3)
        n_valid = valid.sum(dim=dims)  # (C,)
        has_valid = n_valid > 0
        n_channels = has_valid.sum().clamp(min=1)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        bce_c = (bce * valid).sum(dim=dims) / n_valid.clamp(min=1)
        prob, truth = torch.sigmoid(logits) * valid, target * valid
        intersection = (prob * truth).sum(dim=dims)
        denominator = prob.sum(dim=dims) + truth.sum(dim=dims)
        dice_c = 1 - (2 * intersection + self.smooth) / (denominator + self.smooth)
        bce_total = torch.where(has_valid, bce_c, 0.0).sum() / n_channels
        dice_total = torch.where(has_valid, dice_c, 0.0).sum() / n_channels
        return bce_total + self.dice_weight * dice_total, bce_total, dice_total


class IvdLoss(nn.Module):
    """Weighted sum of heatmap focal, offset L1 and masked segmentation losses.

    Why one module: the trainer, the validation loop and tests all compute the same total
    with the same masking; the parts come back as floats for logging.

    Parameters
    ----------
    heatmap_weight, offset_weight, seg_weight : float
        Weights of the three terms (SpineOne sums heatmap and offset losses unweighted).
    alpha, beta : float
        Focal-loss exponents, see :class:`HeatmapFocalLoss`.
    dice_weight : float
        Dice weight inside the segmentation term, see :class:`MaskedSegLoss`.

    Example
    -------
    >>> criterion = IvdLoss()
    >>> total, parts = criterion(model(batch["image"]), batch)  # doctest: +SKIP
    >>> sorted(parts)  # doctest: +SKIP
    ['heatmap', 'offset', 'seg', 'seg_bce', 'seg_dice', 'total']
    """

    def __init__(
        self,
        heatmap_weight: float = 1.0,
        offset_weight: float = 1.0,
        seg_weight: float = 1.0,
        *,
        alpha: float = 2.0,
        beta: float = 4.0,
        dice_weight: float = 1.0,
    ) -> None:
        super().__init__()
        for name, value in (("heatmap", heatmap_weight), ("offset", offset_weight), ("seg", seg_weight)):
            if value < 0:
                raise ValueError(f"{name}_weight must be >= 0, got {value}")
        self.heatmap_weight, self.offset_weight, self.seg_weight = heatmap_weight, offset_weight, seg_weight
        self.heatmap_loss = HeatmapFocalLoss(alpha, beta)
        self.offset_loss = OffsetL1Loss()
        self.seg_loss = MaskedSegLoss(dice_weight)

    def forward(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Total loss (a differentiable scalar) and its parts as floats.

        Parameters
        ----------
        outputs : dict
            Model outputs ``heatmap``, ``offset``, ``seg`` (docs/pipeline.md).
        batch : dict
            Targets ``heatmap``, ``visible``, ``offset``, ``offset_mask``, ``seg``,
            ``seg_valid`` (``image`` may be present and is ignored).

        Raises
        ------
        ValueError
            When a key is missing or a shape disagrees with the contract.
        """
        missing = [k for k in _OUTPUT_KEYS if k not in outputs] + [
            f"batch[{k!r}]" for k in _BATCH_KEYS if k not in batch
        ]
        if missing:
            raise ValueError(f"IvdLoss needs {', '.join(missing)}; see docs/pipeline.md for the batch contract")
        visible = batch["visible"]
        heatmap = self.heatmap_loss(outputs["heatmap"], batch["heatmap"], visible)
        offset_mask = batch["offset_mask"] * (visible.to(batch["offset_mask"].dtype)[:, :, None, None] > 0)
        offset = self.offset_loss(outputs["offset"], batch["offset"], offset_mask)
        seg, seg_bce, seg_dice = self.seg_loss(outputs["seg"], batch["seg"], batch["seg_valid"])
        total = self.heatmap_weight * heatmap + self.offset_weight * offset + self.seg_weight * seg
        parts = {"heatmap": heatmap, "offset": offset, "seg": seg, "seg_bce": seg_bce, "seg_dice": seg_dice}
        floats = {k: float(v.detach()) for k, v in parts.items()}
        floats["total"] = float(total.detach())
        return total, floats
