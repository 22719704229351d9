"""HCA-Net (Bozorgpour et al. 2023): stacked hourglasses with multi-scale large-kernel attention.

HCA-Net treats disc labelling as pose estimation, like the attention hourglass
(:mod:`napari_ivd.models.hourglass`, whose building blocks it reuses), and differs in:

* **Hierarchical context attention (HCA) blocks.** Each stacked hourglass models local
  structure; its output representation is then re-weighted by **multi-scale large kernel
  attention (M-LKA)**: parallel large-kernel attentions (LKA, Guo et al.: a (2d-1)x(2d-1)
  depth-wise conv, then a 7x7 depth-wise conv dilated by d, decomposing a (7d)x(7d) kernel)
  at several dilations d, concatenated and fused by a 1x1 conv into an attention map that
  multiplies the input. The default dilations (1, 2, 3) give 7, 14 and 21 pixel kernels
  (VAN's 21x21 for d = 3; 21 output pixels are 42 mm at 1 mm spacing, about one lumbar
  vertebra plus its disc).
* **Merged predictions.** The N stacks' heatmaps (N - 1 intermediate and the last) are
  merged by a 1x1 conv into the final heatmap (initialised as their mean).
* **Objective:** the sum of heatmap MSEs (all stacks and the merged map, visibility flags
  as in :class:`~napari_ivd.models.hourglass.StackedHeatmapLoss`) plus ``lambda`` times the
  **skeleton loss** (:class:`~napari_ivd.models.skeleton_loss.SkeletonLoss`) on the merged
  heatmap.

Choices where the paper leaves room, and adaptations to docs/pipeline.md:

* M-LKA sits after each stack's hourglass and post-convolutions, applied residually
  (``x + attention * x``) so a fresh block starts close to the plain hourglass; the paper
  states ``x' = attention * x`` without saying how the block is wired into the stack.
* ``lambda``: the paper's 2e-4 pairs a skeleton loss in pixels with an MSE averaged over
  the N pixels; our heatmap MSE is summed over them (see
  :class:`~napari_ivd.models.hourglass.HeatmapMSELoss`), so the same balance is
  ``2e-4 * N``: 3.3 at 128x128 outputs, 1.6 at 128x64. The default, 1.0, is of that order;
  it is a config field for tuning, and ``skeleton_loss=False`` is the paper's ablation.
* The paper's text fixes no widths; :meth:`HcaNetConfig.paper` uses those of the attention
  hourglass paper it follows (2 stacks of 256 channels, depth 4).
* The paper has no offset or segmentation output: the same light heads as the attention
  hourglass's are added on the last stack's representation.

Sizes, measured with :func:`~napari_ivd.models.registry.count_parameters` and
:func:`~napari_ivd.models.registry.gflops_per_forward` (input 1x1x256x256, 14 lumbar labels;
torch's FlopCounterMode: convolutions and matrix products, multiply-add = 2 FLOPs):

========================================  ==========  ===============
preset                                    parameters  GFLOPs/forward
========================================  ==========  ===============
``HcaNetConfig()``                           139,264    1.98
``HcaNetConfig(attention=False)``            121,024    1.40
``HcaNetConfig.paper()``                   7,748,432   98.85
``HcaNetConfig.paper(attention=False)``    7,258,448   82.91
========================================  ==========  ===============

The skeleton loss adds one parameter (alpha, in the loss module) and no forward cost.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from napari_ivd.models.conventions import LabelAxes, PipelineConfig
from napari_ivd.models.hourglass import (
    SegHead,
    StackedHeatmapLoss,
    StackedHourglass,
    StackedHourglassNet,
    init_pipeline_weights,
    values_to_logits,
)
from napari_ivd.models.layers import keypoint_convs
from napari_ivd.models.registry import register
from napari_ivd.models.skeleton_loss import SkeletonLoss, check_skeleton_settings

__all__ = ["HcaNet", "HcaNetConfig", "HcaNetLoss", "MultiScaleLKA"]

log = logging.getLogger(__name__)

#: Kernel of the dilated depth-wise conv of every LKA branch: branch d sees (7d)x(7d).
LKA_DILATED_KERNEL = 7


@dataclass(frozen=True)
class HcaNetConfig(PipelineConfig):
    """Hyper-parameters of :class:`HcaNet` and its loss besides :class:`PipelineConfig`'s ``labels``, ``in_channels``.

    Parameters
    ----------
    features : int
        Channels of every hourglass (even).
    stacks : int
        Number of HCA blocks (stacked hourglasses), each predicting heatmaps.
    depth : int
        Poolings per hourglass.
    lka_dilations : tuple of int
        Dilation d of each M-LKA branch; branch d covers (7d)x(7d) pixels.
    attention : bool
        Use M-LKA (False: plain stacked hourglasses with merged predictions, for ablation).
    skeleton_loss : bool
        Add the skeleton loss (False: the paper's "without L_sk" ablation).
    skeleton_weight : float
        lambda, the weight of the skeleton loss (see the module notes for its scale).
    skeleton_temperature : float
        theta, the softmax temperature turning heatmap logits into position distributions.
    skeleton_samples : int
        T, samples averaged into each prototype (0: the soft-argmax mean).
    skeleton_alpha : float
        Initial value of the learnable weight of the pair-distance term.
    """

    features: int = 32
    stacks: int = 2
    depth: int = 4
    lka_dilations: tuple[int, ...] = (1, 2, 3)
    attention: bool = True
    skeleton_loss: bool = True
    skeleton_weight: float = 1.0
    skeleton_temperature: float = 0.75
    skeleton_samples: int = 8
    skeleton_alpha: float = 0.8

    def __post_init__(self) -> None:
        self._check_fields(
            tuples=("lka_dilations",),
            positive_ints=("features", "stacks", "depth", "lka_dilations"),
            flags=("attention", "skeleton_loss"),
            non_negative=("skeleton_weight",),
        )
        if self.features % 2:
            raise ValueError(f"HcaNetConfig.features must be even, got {self.features}")
        check_skeleton_settings(
            "HcaNetConfig.skeleton_*", self.skeleton_temperature, self.skeleton_samples, self.skeleton_alpha
        )

    @classmethod
    def paper(cls, **overrides: object) -> HcaNetConfig:
        """The paper's setting: Azad 2021's widths (2 stacks x 256, depth 4), theta 0.75, alpha 0.8.

        Keyword arguments override any field, e.g. ``HcaNetConfig.paper(skeleton_loss=False)``.
        """
        return dataclasses.replace(cls(features=256, stacks=2, depth=4), **overrides)


class MultiScaleLKA(nn.Module):
    """M-LKA: large-kernel attentions at several dilations, fused by a 1x1 conv, re-weighting the input.

    Branch d: (2d-1)x(2d-1) depth-wise conv (local), then 7x7 depth-wise conv dilated by d
    (long range). ``attention = conv1x1(concat(branches))``; returns ``x + attention * x``.
    """

    def __init__(self, channels: int, dilations: Sequence[int]) -> None:
        super().__init__()
        k = LKA_DILATED_KERNEL
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, channels, 2 * d - 1, padding=d - 1, groups=channels),
                nn.Conv2d(channels, channels, k, padding=d * (k // 2), dilation=d, groups=channels),
            )
            for d in dilations
        )
        self.fuse = nn.Conv2d(len(self.branches) * channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        attention = self.fuse(torch.cat([branch(x) for branch in self.branches], dim=1))
        return x + attention * x


class HcaNetLoss(nn.Module):
    """HCA-Net's objective: heatmap MSE over every stack and the merged map, + lambda * skeleton loss.

    Offsets and masks are trained as in :class:`~napari_ivd.models.losses.IvdLoss`. The
    skeleton loss reads ``batch["keypoints"]`` ``(B, K, 2)`` (input pixels, NaN where absent);
    its learnable alpha is a parameter of this module.

    Parameters
    ----------
    config : HcaNetConfig
        ``skeleton_loss`` switches the skeleton term; ``skeleton_*`` set it.

    Example
    -------
    >>> total, parts = HcaNetLoss(HcaNetConfig())(net(batch["image"]), batch)  # doctest: +SKIP
    """

    def __init__(self, config: HcaNetConfig) -> None:
        super().__init__()
        self.heatmaps = StackedHeatmapLoss()
        self.skeleton_weight = config.skeleton_weight
        self.skeleton = (
            SkeletonLoss(config.skeleton_temperature, config.skeleton_samples, config.skeleton_alpha)
            if config.skeleton_loss
            else None
        )

    def forward(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Total loss (a differentiable scalar) and its parts as floats.

        Raises
        ------
        ValueError
            When a key is missing (``keypoints`` included, with the skeleton loss on) or a
            shape disagrees with the contract.
        """
        total, parts = self.heatmaps(outputs, batch)
        if self.skeleton is None:
            return total, parts
        if "keypoints" not in batch:
            raise ValueError("HcaNetLoss needs batch['keypoints'] (B, K, 2) for the skeleton loss; see SliceDataset")
        skeleton, skeleton_parts = self.skeleton(outputs["heatmap"], batch["keypoints"], batch["visible"])
        total = total + self.skeleton_weight * skeleton
        parts.update(skeleton_parts)
        parts["total"] = float(total.detach())
        return total, parts


@register("hcanet", HcaNetConfig, loss=HcaNetLoss)
class HcaNet(StackedHourglassNet):
    """Keypoint heatmaps, offsets and masks from stacked hourglasses with M-LKA (HCA blocks).

    Inputs and outputs are :class:`~napari_ivd.models.conventions.PipelineNet`'s, with H
    and W multiples of 8, plus every stack's own heatmaps (see :meth:`forward`); ``config``
    defaults to ``HcaNetConfig()``.
    """

    config: HcaNetConfig
    heatmap_head = "last_heatmap"

    def __init__(self, config: HcaNetConfig | None = None) -> None:
        super().__init__(config or HcaNetConfig())
        config = self.config
        f, k, stacks = config.features, config.num_labels, config.stacks
        dilations = config.lka_dilations
        refine = (lambda channels: MultiScaleLKA(channels, dilations)) if config.attention else None
        self.backbone = StackedHourglass(config.in_channels, f, stacks, config.depth, k, refine=refine)
        self.last_heatmap, self.offset = keypoint_convs(f, k)
        self.merge = nn.Conv2d(stacks * k, k, 1)
        self.seg = SegHead(f)
        init_pipeline_weights(self, [self.last_heatmap, *self.backbone.heads], self.offset, [self.seg.logits])
        with torch.no_grad():  # the merge starts as the mean of the stacks' heatmaps, keeping their prior
            self.merge.weight.copy_(torch.eye(k).repeat(1, stacks)[:, :, None, None] / stacks)
            self.merge.bias.zero_()

    def label_axes(self) -> LabelAxes:
        """The stacked hourglass's axes, plus the merge: one output per label, inputs stack by stack."""
        one = tuple((label, 0) for label in self.config.labels)
        stacked = tuple((label, s) for s in range(self.config.stacks) for label, _ in one)
        return super().label_axes() | {"merge.weight": {0: one, 1: stacked}, "merge.bias": {0: one}}

    def heatmap_heads(self) -> tuple[str, ...]:
        """Every stack's heatmap head, and the merge of them (it starts as their mean)."""
        return (*super().heatmap_heads(), "merge")

    def forward(self, x: Tensor, seg_only: bool = False) -> dict[str, Tensor]:
        """The pipeline's outputs (``"heatmap"``: logits of the merged heatmap), and every stack's own.

        ``seg_only`` skips the last heatmap head, the merge and the offsets. Beyond the
        contract, for :class:`HcaNetLoss`: ``"heatmap_values"``, the merged linear heatmap,
        and ``"aux_heatmaps"`` ``(B, stacks, K, H/2, W/2)``, every stack's own.
        """
        representations, heatmaps, out = self._stacks(x)
        if seg_only:
            return out
        last = representations[-1]
        heatmaps = [*heatmaps, self.last_heatmap(last)]
        merged = self.merge(torch.cat(heatmaps, dim=1))
        out.update(
            heatmap=values_to_logits(merged),
            heatmap_values=merged,
            offset=self.offset(last),
            aux_heatmaps=torch.stack(heatmaps, dim=1),
        )
        return out
