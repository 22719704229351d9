"""Attention stacked hourglass (Azad et al. 2021): disc and vertebra keypoints as pose estimation.

Azad, Rouhier and Cohen-Adad (MLMI 2021) label intervertebral discs with the stacked hourglass
network of Newell et al. (2016), one Gaussian heatmap channel per structure:

* **Stacked hourglasses with intermediate supervision.** Each hourglass pools down ``depth``
  times and back up with a residual skip at every scale; every stack but the last predicts
  heatmaps, which are mapped back into the features the next stack refines.
* **Multi-level attention** (Azad's contribution): the representations of all stacks are
  concatenated and turned, by point-wise convolutions and a sigmoid, into one attention map
  that multiplies the last stack's representation before the final heatmaps, so the
  collective multi-scale knowledge tells the decoder where the discs are.
* **Objective:** the MSE between the heatmaps and the Gaussian targets over the labels
  flagged visible (the paper's visibility flags), summed over the final and the
  intermediate heatmaps (:class:`StackedHeatmapLoss`). As in Newell's and Azad's networks
  the heatmap heads are linear: the loss sees their values directly. (A sigmoid before the
  MSE starves the keypoints of gradient, ``p (1 - p)`` times the error, once the background
  has pushed ``p`` near zero: trained that way for the 6-minute comparison of
  docs/models.md, HCA-Net, which shares this loss, named nothing.) The pipeline's
  ``"heatmap"`` logits are derived from the values by :func:`values_to_logits`, so
  decoding reads probabilities equal to the clipped values.
* **Skeleton-based post-processing** (the paper's search over candidate combinations fitting
  the mean training skeleton) is not part of the network: it is shared by every model at
  inference as :func:`napari_ivd.skeleton.search`.

Adaptations to the napari-ivd contract (docs/pipeline.md): the stem has one stride-2 step
(Newell's has two) so the hourglasses and heatmaps work at stride 2; pooling uses
``ceil_mode`` and the up-sampling goes back to the skip's exact size, so any input whose
sides are multiples of 8 works. The paper has no offset or segmentation output; a 1x1
offset head on the final (attended) representation and a light 3x3 segmentation head on the
last stack's representation are added because the pipeline needs them; both are trained
with :class:`~napari_ivd.models.losses.IvdLoss`'s offset and masked segmentation terms.

Sizes, measured with :func:`~napari_ivd.models.registry.count_parameters` and
:func:`~napari_ivd.models.registry.gflops_per_forward` (input 1x1x256x256, 14 lumbar labels;
torch's FlopCounterMode: convolutions and matrix products, multiply-add = 2 FLOPs):

===========================================  ==========  ===============
preset                                       parameters  GFLOPs/forward
===========================================  ==========  ===============
``HourglassConfig()``                           122,763    1.45
``HourglassConfig(attention=False)``            120,618    1.38
``HourglassConfig.paper()``                   7,389,883   87.20
``HourglassConfig.paper(attention=False)``    7,258,042   82.90
===========================================  ==========  ===============

The default is 2 stacks of 32-channel, depth-4 hourglasses (about as many FLOPs as IvdNet's
default: 1.47, for a CPU-trainable comparison). The paper preset costs about 4x Newell's
2-stack network because its hourglasses run at stride 2 instead of 4.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from napari_ivd.models.conventions import (
    HEATMAP_INIT_BIAS,
    LabelAxes,
    PipelineConfig,
    PipelineNet,
    init_weights,
    keypoint_axes,
)
from napari_ivd.models.ivdnet import INPUT_MULTIPLE
from napari_ivd.models.layers import conv_bn_relu, keypoint_convs
from napari_ivd.models.losses import IvdLoss
from napari_ivd.models.registry import register

__all__ = [
    "HEATMAP_VALUE_EPS",
    "AttentionHourglass",
    "HeatmapMSELoss",
    "Hourglass",
    "HourglassConfig",
    "MultiLevelAttention",
    "Residual",
    "SegHead",
    "StackedHeatmapLoss",
    "StackedHourglass",
    "StackedHourglassNet",
    "init_pipeline_weights",
    "values_to_logits",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HourglassConfig(PipelineConfig):
    """Hyper-parameters of :class:`AttentionHourglass` besides :class:`PipelineConfig`'s ``labels``, ``in_channels``.

    Parameters
    ----------
    features : int
        Channels of every hourglass (even: the bottleneck residuals halve it).
    stacks : int
        Number of stacked hourglasses; all but the last give intermediate heatmaps.
    depth : int
        Poolings per hourglass (4 in Newell et al.).
    attention : bool
        Use the multi-level attention (False: the paper's "without attention" ablation).
    """

    features: int = 32
    stacks: int = 2
    depth: int = 4
    attention: bool = True

    def __post_init__(self) -> None:
        self._check_fields(positive_ints=("features", "stacks", "depth"), flags=("attention",))
        if self.features % 2:
            raise ValueError(f"HourglassConfig.features must be even, got {self.features}")

    @classmethod
    def paper(cls, **overrides: object) -> HourglassConfig:
        """Azad et al.'s network: 2 stacks (their best) of Newell's 256-channel, depth-4 hourglasses.

        Keyword arguments override any field, e.g. ``HourglassConfig.paper(attention=False)``.
        """
        return dataclasses.replace(cls(features=256, stacks=2, depth=4), **overrides)


# --------------------------------------------------------------------------------------------
# Building blocks (shared with HCA-Net)
# --------------------------------------------------------------------------------------------


class Residual(nn.Module):
    """Newell's pre-activation bottleneck: BN-ReLU-1x1 (C/2), BN-ReLU-3x3, BN-ReLU-1x1 (C), plus identity."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        mid = max(c_out // 2, 1)
        self.body = nn.Sequential(
            nn.BatchNorm2d(c_in),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_in, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, c_out, 1),
        )
        self.skip: nn.Module = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + self.skip(x)


class Hourglass(nn.Module):
    """Recursive hourglass: a residual skip at this scale plus pool -> (inner hourglass) -> up-sample.

    Pooling rounds up and the up-sampling returns to the skip's exact size, so odd sizes work.
    """

    def __init__(self, depth: int, channels: int) -> None:
        super().__init__()
        self.skip = Residual(channels, channels)
        self.down = Residual(channels, channels)
        self.inner: nn.Module = Hourglass(depth - 1, channels) if depth > 1 else Residual(channels, channels)
        self.up = Residual(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        low = self.up(self.inner(self.down(F.max_pool2d(x, 2, ceil_mode=True))))
        return self.skip(x) + F.interpolate(low, size=x.shape[-2:], mode="nearest")


def init_pipeline_weights(
    model: nn.Module, heatmaps: Sequence[nn.Conv2d], offset: nn.Conv2d, seg: Sequence[nn.Conv2d]
) -> None:
    """The registry's shared start (:func:`~napari_ivd.models.conventions.init_weights`) for linear heatmap heads.

    Every heatmap head (the final one and the intermediate predictions of each stack) starts
    at the value ``sigmoid(HEATMAP_INIT_BIAS)``: the same prior probability as the other
    architectures' logits, near the background optimum.
    """
    init_weights(model, heatmaps[0], offset, seg)
    nn.init.constant_(heatmaps[0].bias, 1.0 / (1.0 + math.exp(-HEATMAP_INIT_BIAS)))
    for head in heatmaps[1:]:
        head.load_state_dict(heatmaps[0].state_dict())


#: Heatmap values are clipped to [eps, 1 - eps] before becoming logits (finite, about ±9.2).
HEATMAP_VALUE_EPS = 1e-4


def values_to_logits(values: Tensor) -> Tensor:
    """The pipeline's heatmap logits from linear heatmap values: ``logit(clip(values))``.

    ``sigmoid`` of the result is the value clipped to ``[eps, 1 - eps]``, so the shared
    decoding reads the values as probabilities.
    """
    return torch.logit(values.float().clamp(HEATMAP_VALUE_EPS, 1.0 - HEATMAP_VALUE_EPS))


class SegHead(nn.Module):
    """Light vertebral-body / disc head: 3x3 conv-BN-ReLU, 1x1 to 2 logits, bilinear x2 to the input size."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = conv_bn_relu(channels, channels)
        self.logits = nn.Conv2d(channels, 2, 1)

    def forward(self, x: Tensor, size: Sequence[int]) -> Tensor:
        """``(B, 2, *size)`` logits from stride-2 features ``x``."""
        return F.interpolate(self.logits(self.body(x)), size=tuple(size), mode="bilinear", align_corners=False)


class StackedHourglass(nn.Module):
    """Stem to stride 2, then ``stacks`` hourglasses with intermediate heatmaps fed back (Newell et al.).

    After each hourglass a residual and a 1x1 conv-BN-ReLU give that stack's representation,
    optionally refined by ``refine(features)`` (HCA-Net's M-LKA). Every stack but the last
    predicts heatmaps, and ``x + remap(representation) + remap(heatmaps)`` enters the next
    stack. The last stack's heatmaps are left to the caller, whose papers differ there.

    Parameters
    ----------
    in_channels, features, stacks, depth, num_labels : int
        As in :class:`HourglassConfig`.
    refine : callable, optional
        ``refine(features) -> nn.Module`` applied to each stack's representation.
    """

    def __init__(
        self,
        in_channels: int,
        features: int,
        stacks: int,
        depth: int,
        num_labels: int,
        refine: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        half = features // 2
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, half, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
            Residual(half, features),
            Residual(features, features),
        )
        self.hourglasses = nn.ModuleList(Hourglass(depth, features) for _ in range(stacks))
        self.post = nn.ModuleList(
            nn.Sequential(
                Residual(features, features),
                nn.Conv2d(features, features, 1, bias=False),
                nn.BatchNorm2d(features),
                nn.ReLU(inplace=True),
                refine(features) if refine is not None else nn.Identity(),
            )
            for _ in range(stacks)
        )
        self.heads = nn.ModuleList(nn.Conv2d(features, num_labels, 1) for _ in range(stacks - 1))
        self.remap_features = nn.ModuleList(nn.Conv2d(features, features, 1) for _ in range(stacks - 1))
        self.remap_heatmaps = nn.ModuleList(nn.Conv2d(num_labels, features, 1) for _ in range(stacks - 1))

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Each stack's representation ``(B, F, H/2, W/2)`` and the ``stacks - 1`` intermediate heatmap values."""
        x = self.stem(x)
        representations: list[Tensor] = []
        heatmaps: list[Tensor] = []
        for s, (hourglass, post) in enumerate(zip(self.hourglasses, self.post, strict=True)):
            rep = post(hourglass(x))
            representations.append(rep)
            if s < len(self.heads):
                heatmaps.append(self.heads[s](rep))
                x = x + self.remap_features[s](rep) + self.remap_heatmaps[s](heatmaps[-1])
        return representations, heatmaps


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------


class MultiLevelAttention(nn.Module):
    """Azad's multi-level attention: all stacks' representations -> point-wise convs -> one sigmoid map."""

    def __init__(self, c_in: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, 1),
        )

    def forward(self, representations: Sequence[Tensor]) -> Tensor:
        """``(B, 1, h, w)`` attention in (0, 1) from the concatenated ``(B, F, h, w)`` representations."""
        return torch.sigmoid(self.body(torch.cat(list(representations), dim=1)))


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------


class HeatmapMSELoss(nn.Module):
    """Squared error of linear heatmap values against Gaussian targets over visible labels (Azad, Eq. 1).

    Why the sum over pixels: Eq. 1 averages over the V labels and N pixels; summing over the
    pixels instead (per visible (sample, label) channel, then averaging over those channels,
    as :class:`~napari_ivd.models.losses.HeatmapFocalLoss` normalises per keypoint) multiplies
    it by the constant N, so the term does not shrink with the crop size and stays of the
    same order as the offset and segmentation terms it is summed with. Labels with
    ``visible == 0`` add neither loss nor gradient.
    """

    def forward(self, values: Tensor, target: Tensor, visible: Tensor) -> Tensor:
        """Loss for ``values``, ``target`` ``(B, K, h, w)`` and ``visible`` ``(B, K)``; a scalar."""
        if target.shape != values.shape or visible.shape != values.shape[:2]:
            raise ValueError(
                f"heatmap target {tuple(target.shape)} and visible {tuple(visible.shape)} do not fit heatmap "
                f"{tuple(values.shape)} (docs/pipeline.md)"
            )
        weight = visible.to(torch.float32)[:, :, None, None]
        error = (values.float() - target.float()) ** 2 * weight
        return error.sum() / weight.sum().clamp(min=1)


class StackedHeatmapLoss(nn.Module):
    """:class:`~napari_ivd.models.losses.IvdLoss` with the heatmap MSE, summed over all stacks' heatmaps.

    The heatmap term reads the linear values ``outputs["heatmap_values"]`` (not the derived
    logits). Intermediate supervision (Newell, Azad): ``outputs["aux_heatmaps"]``
    ``(B, S, K, h, w)`` values, when present, adds the same heatmap term for each of its S
    predictions. The offset and masked segmentation terms and their visibility rules are
    IvdLoss's own.

    Parameters
    ----------
    heatmap_weight, offset_weight, seg_weight : float
        Weights of the (summed) heatmap, offset and segmentation terms.

    Example
    -------
    >>> total, parts = StackedHeatmapLoss()(net(batch["image"]), batch)  # doctest: +SKIP
    >>> sorted(parts)  # doctest: +SKIP
    ['heatmap', 'heatmap_aux', 'offset', 'seg', 'seg_bce', 'seg_dice', 'total']
    """

    def __init__(self, heatmap_weight: float = 1.0, offset_weight: float = 1.0, seg_weight: float = 1.0) -> None:
        super().__init__()
        self.base = IvdLoss(heatmap_weight, offset_weight, seg_weight)
        self.base.heatmap_loss = HeatmapMSELoss()  # the papers' objective instead of the focal loss

    def forward(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Total loss (a differentiable scalar) and its parts as floats, ``heatmap_aux`` included.

        Raises
        ------
        ValueError
            When a key is missing or a shape disagrees with the contract.
        """
        if "heatmap_values" not in outputs:
            raise ValueError("StackedHeatmapLoss needs outputs['heatmap_values'], the linear heatmaps")
        total, parts = self.base({**outputs, "heatmap": outputs["heatmap_values"]}, batch)
        aux = outputs.get("aux_heatmaps")
        aux_loss = torch.zeros((), device=total.device)
        if aux is not None:
            for heatmap in aux.unbind(dim=1):
                aux_loss = aux_loss + self.base.heatmap_loss(heatmap, batch["heatmap"], batch["visible"])
        total = total + self.base.heatmap_weight * aux_loss
        parts["heatmap_aux"] = float(aux_loss.detach())
        parts["total"] = float(total.detach())
        return total, parts


def _hourglass_loss(config: HourglassConfig) -> StackedHeatmapLoss:
    """The registered objective of ``"hourglass"``: heatmap MSE over all stacks + offsets + masks."""
    return StackedHeatmapLoss()


class StackedHourglassNet(PipelineNet):
    """Base of :class:`AttentionHourglass` and HCA-Net: stacked hourglasses, masks from the last stack.

    Subclasses build ``backbone`` (a :class:`StackedHourglass`) and ``seg`` (a :class:`SegHead`);
    their heatmap heads, where the two papers differ, follow :meth:`_stacks`.
    """

    backbone: StackedHourglass
    seg: SegHead
    #: Attribute name of the last heatmap convolution.
    heatmap_head = "heatmap"

    def label_axes(self) -> LabelAxes:
        """The keypoint head's axes, plus every intermediate head and the remap that feeds its heatmaps on."""
        one = tuple((label, 0) for label in self.config.labels)
        axes = keypoint_axes(self.config.labels, heatmap=self.heatmap_head)
        for s in range(len(self.backbone.heads)):
            axes |= {f"backbone.heads.{s}.weight": {0: one}, f"backbone.heads.{s}.bias": {0: one}}
            axes[f"backbone.remap_heatmaps.{s}.weight"] = {1: one}
        return axes

    def heatmap_heads(self) -> tuple[str, ...]:
        """The last heatmap head and every stack's intermediate one."""
        return (self.heatmap_head, *(f"backbone.heads.{s}" for s in range(len(self.backbone.heads))))

    def _stacks(self, x: Tensor) -> tuple[list[Tensor], list[Tensor], dict[str, Tensor]]:
        """Check ``x``, run the stacks: each stack's representation, the intermediate heatmaps, ``{"seg": ...}``."""
        self.check_input(x, INPUT_MULTIPLE)
        representations, heatmaps = self.backbone(x)
        return representations, heatmaps, {"seg": self.seg(representations[-1], x.shape[-2:])}


@register("hourglass", HourglassConfig, loss=_hourglass_loss)
class AttentionHourglass(StackedHourglassNet):
    """Keypoint heatmaps, offsets and masks from a stacked hourglass with multi-level attention.

    Inputs and outputs are :class:`~napari_ivd.models.conventions.PipelineNet`'s, with H
    and W multiples of 8, plus the intermediate heatmaps (see :meth:`forward`); ``config``
    defaults to ``HourglassConfig()``.
    """

    config: HourglassConfig

    def __init__(self, config: HourglassConfig | None = None) -> None:
        super().__init__(config or HourglassConfig())
        config = self.config
        f, k = config.features, config.num_labels
        self.backbone = StackedHourglass(config.in_channels, f, config.stacks, config.depth, k)
        self.attention = MultiLevelAttention(config.stacks * f, f) if config.attention else None
        self.heatmap, self.offset = keypoint_convs(f, k)
        self.seg = SegHead(f)
        init_pipeline_weights(self, [self.heatmap, *self.backbone.heads], self.offset, [self.seg.logits])

    def forward(self, x: Tensor, seg_only: bool = False) -> dict[str, Tensor]:
        """The pipeline's outputs, and the linear heatmaps for :class:`StackedHeatmapLoss`.

        ``seg_only`` skips the attention and the keypoint heads. Beyond the contract:
        ``"heatmap_values"`` ``(B, K, H/2, W/2)``, the final heatmaps (``"heatmap"`` holds
        their :func:`values_to_logits`) and, with more than one stack, ``"aux_heatmaps"``
        ``(B, stacks - 1, K, H/2, W/2)``, the intermediate predictions.
        """
        representations, intermediate, out = self._stacks(x)
        if seg_only:
            return out
        last = representations[-1]
        if self.attention is not None:
            last = last * self.attention(representations)
        values = self.heatmap(last)
        out.update(heatmap=values_to_logits(values), heatmap_values=values, offset=self.offset(last))
        if intermediate:
            out["aux_heatmaps"] = torch.stack(intermediate, dim=1)
        return out
