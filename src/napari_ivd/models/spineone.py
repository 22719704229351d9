"""SpineOne (He et al. 2021): one-stage detection of discs and vertebrae with dual attention.

What the paper describes, and what this module implements (``SpineOneConfig.paper()``):

* **Backbone + neck: DeepLabv3+ with a ResNet** (their ablation backbone, ResNet-50; set
  ``depths=(3, 4, 23, 3)`` for their best, ResNet-101): 7x7 stem and max-pool, bottleneck
  stages, the last one dilated for output stride 16, an ASPP of one 1x1 and three 3x3
  convolutions at rates 6, 12, 18, and the DeepLabv3+ decoder that fuses the 48-channel
  projection of the stride-4 features. Its output ``U_global`` has C = 64 channels at stride
  4 (the paper's attention size: H = W = 128 for 512-pixel crops).
* **Two substreams**, discs and vertebrae, forked from ``U_global``. Each has its own dual
  self-attention (position attention PAM + channel attention CAM, reused from
  :mod:`~napari_ivd.models.ivdnet`), then the CNN of the paper's Table VI (two 3x3 conv-BN
  layers, 32 channels; ReLUs added) and its own heatmap and offset heads.
* **One channel per class (OCPC) heatmaps.** The paper puts all keypoints of a degeneration
  class into one channel; our data has no grades, so each *label* is a class
  (docs/pipeline.md): the disc stream emits the disc labels' channels, the vertebra stream
  the vertebrae's, and the outputs are interleaved back into ``labels`` order.
* **Short-range offsets + Hough voting**: the offset heads; voting is the shared
  :func:`napari_ivd.models.decode.decode`.
* **Gradient-guided objective association (OA)**: :class:`SpineOneLoss`, registered as the
  loss of ``"spineone"``.
* **Degeneration classes** are an optional head (``degeneration=True``, off by default, since
  our data has no grades): one logit per label and pixel, "the structure here is degenerative".

Added for napari-ivd, because the pipeline needs them:

* **Stride 2.** The paper's heads run at stride 4; ours must emit stride 2. Each head
  upsamples its features and fuses a projection of the stride-2 stem features (the
  DeepLabv3+ decoder step once more) before its 1x1 output convolutions.
* **Segmentation head** (vertebral body, disc) on ``U_global``, refined the same way, and a
  ``Dropout2d`` before all heads, as in :class:`~napari_ivd.models.ivdnet.IvdNet`.
* **Heatmap targets and loss** follow the shared pipeline: Gaussian targets with
  CenterNet's penalty-reduced focal loss (the paper: binary disks of radius R with the plain
  focal loss), and the shared masked segmentation loss.

The small default keeps every idea but shrinks the backbone (3x3 stem, one basic residual
block per stage, 16..64 channels) and forks the substreams at stride 8 instead of 4: position
attention over stride-4 positions costs (H/4 * W/4)^2 memory, 1 GiB per 512x512 slice.

Sizes, measured with :func:`~napari_ivd.models.registry.count_parameters` and
:func:`~napari_ivd.models.registry.gflops_per_forward` (input 1x1x256x256, 14 lumbar labels;
torch's FlopCounterMode: convolutions and matrix products, multiply-add = 2 FLOPs):

======================  ==========  ===============
preset                  parameters  GFLOPs/forward
======================  ==========  ===============
``SpineOneConfig()``        348,656    1.30
``.paper()``            38,928,400   35.42
======================  ==========  ===============

Without attention (``attention=False``): 327,452 / 1.09 and 38,844,012 / 29.77. One training
step of the default on 4 crops of 256x256 takes about as long as IvdNet's (about 1 s on one
CPU core).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from napari_ivd.anatomy import structure
from napari_ivd.models.conventions import LabelAxes, PipelineConfig, PipelineNet, init_weights, keypoint_axes
from napari_ivd.models.deeplab import ASPP, DeepLabDecoder
from napari_ivd.models.ivdnet import DualAttention
from napari_ivd.models.layers import conv_bn_relu, keypoint_convs, upsample_like
from napari_ivd.models.losses import IvdLoss
from napari_ivd.models.registry import register

__all__ = ["ResNetEncoder", "SpineOne", "SpineOneConfig", "SpineOneLoss"]

log = logging.getLogger(__name__)

#: The paper clips every heatmap-loss gradient to this range before normalising it.
OA_GRADIENT_CLIP = 100.0
#: Channel expansion of a ResNet bottleneck block.
BOTTLENECK_EXPANSION = 4


@dataclass(frozen=True)
class SpineOneConfig(PipelineConfig):
    """Hyper-parameters of :class:`SpineOne` besides :class:`PipelineConfig`'s ``labels``, ``in_channels``.

    Parameters
    ----------
    stem_width, stem_kernel : int
        Channels and kernel of the stride-2 stem convolution.
    stem_pool : bool
        ResNet's 3x3 stride-2 max-pool after the stem; without it the first stage strides.
    widths, depths : tuple of int
        Per ResNet stage: width (bottleneck stages output 4x as many channels) and number of
        blocks. Stage i has stride ``4 * 2**i`` until ``output_stride``, then dilates instead.
    bottleneck : bool
        Bottleneck (1x1, 3x3, 1x1) blocks as in ResNet-50/101, else basic (3x3, 3x3) blocks.
    output_stride : int
        Stride of the deepest features (DeepLabv3+: 16).
    decoder_stride : int
        Stride of the low-level features fused by the decoder, hence of ``U_global``, of the
        attention and of the substream CNNs (DeepLabv3+: 4).
    aspp_channels : int
        Channels of the ASPP branches and output.
    aspp_rates : tuple of int
        Dilation rates of the ASPP's 3x3 branches.
    low_level_channels : int
        Channels of the projected low-level (and stride-2 skip) features (DeepLabv3+: 48).
    feature_channels : int
        C, the channels of ``U_global`` that the attention modules see (paper: 64).
    head_channels : int
        Channels of the substream CNNs and heads (paper: 32).
    attention : bool
        Dual attention (PAM + CAM) in each substream; False for the ablation.
    degeneration : bool
        Add the degeneration-class head (needs ``batch["degenerative"]`` grades to train).
    dropout : float
        ``Dropout2d`` probability before the heads.
    objective_association : bool
        Use the gradient-guided objective association of :class:`SpineOneLoss`.
    oa_start_step : int
        Training step from which objective association applies. The paper starts it after
        75 % of training; the loss cannot know how long a run will be (the engine trains for
        a time budget), so set about ``0.75 *`` the steps your run will take. The default,
        500, is about that for the default 10-minute CPU run.
    """

    stem_width: int = 16
    stem_kernel: int = 3
    stem_pool: bool = False
    widths: tuple[int, ...] = (16, 32, 48, 64)
    depths: tuple[int, ...] = (1, 1, 1, 1)
    bottleneck: bool = False
    output_stride: int = 16
    decoder_stride: int = 8
    aspp_channels: int = 64
    aspp_rates: tuple[int, ...] = (2, 4, 6)
    low_level_channels: int = 16
    feature_channels: int = 32
    head_channels: int = 16
    attention: bool = True
    degeneration: bool = False
    dropout: float = 0.1
    objective_association: bool = True
    oa_start_step: int = 500

    def __post_init__(self) -> None:
        self._check_fields(
            tuples=("widths", "depths", "aspp_rates"),
            positive_ints=(
                "stem_width",
                "stem_kernel",
                "widths",
                "depths",
                "output_stride",
                "decoder_stride",
                "aspp_channels",
                "aspp_rates",
                "low_level_channels",
                "feature_channels",
                "head_channels",
            ),
            flags=("stem_pool", "bottleneck", "attention", "degeneration", "objective_association"),
            probabilities=("dropout",),
            min_ints={"oa_start_step": 0},
        )
        owner = type(self).__name__
        if len(self.widths) != len(self.depths):
            raise ValueError(f"{owner}: widths {self.widths} and depths {self.depths} must have one entry per stage")
        strides = ResNetEncoder.stage_strides(len(self.widths), self.output_stride)
        if self.output_stride not in strides or not (
            self.decoder_stride in strides and self.decoder_stride < self.output_stride
        ):
            raise ValueError(
                f"{owner}: with {len(self.widths)} stages the stages have strides {strides}; output_stride "
                f"({self.output_stride}) must be one of them and decoder_stride ({self.decoder_stride}) a smaller one"
            )

    @classmethod
    def paper(cls, **overrides: object) -> SpineOneConfig:
        """The paper's network: DeepLabv3+ (ResNet-50), attention at stride 4 with C = 64.

        Keyword arguments override any field, e.g. ``SpineOneConfig.paper(depths=(3, 4, 23, 3))``
        for ResNet-101 or ``in_channels=7`` for the paper's seven slices.
        """
        base = cls(
            stem_width=64,
            stem_kernel=7,
            stem_pool=True,
            widths=(64, 128, 256, 512),
            depths=(3, 4, 6, 3),
            bottleneck=True,
            output_stride=16,
            decoder_stride=4,
            aspp_channels=256,
            aspp_rates=(6, 12, 18),
            low_level_channels=48,
            feature_channels=64,
            head_channels=32,
        )
        return dataclasses.replace(base, **overrides)


class ResNetBlock(nn.Module):
    """Residual block, basic (two 3x3) or bottleneck (1x1, 3x3, 1x1 with 4x expansion), optionally dilated.

    Parameters
    ----------
    c_in, width : int
        Input channels; block width (output channels: ``width``, or ``4 * width`` for a
        bottleneck).
    stride, dilation : int
        Of the 3x3 convolution; a projection shortcut matches strides and channels.
    bottleneck : bool
    """

    def __init__(self, c_in: int, width: int, stride: int = 1, dilation: int = 1, bottleneck: bool = False) -> None:
        super().__init__()
        self.out_channels = out = width * BOTTLENECK_EXPANSION if bottleneck else width
        if bottleneck:
            body = [
                conv_bn_relu(c_in, width, kernel=1),
                conv_bn_relu(width, width, stride=stride, dilation=dilation),
                nn.Conv2d(width, out, 1, bias=False),
            ]
        else:
            body = [
                conv_bn_relu(c_in, width, stride=stride, dilation=dilation),
                nn.Conv2d(width, out, 3, padding=dilation, dilation=dilation, bias=False),
            ]
        self.body = nn.Sequential(*body, nn.BatchNorm2d(out))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != self.out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, self.out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(self.out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.body(x) + self.shortcut(x), inplace=True)


class ResNetEncoder(nn.Module):
    """DeepLab-style ResNet: stride-2 stem, stages down to ``output_stride``, dilated beyond it.

    ``forward`` returns the stem output (stride 2), the low-level features at
    ``decoder_stride`` and the deepest features.
    """

    def __init__(self, config: SpineOneConfig) -> None:
        super().__init__()
        self.stem = conv_bn_relu(config.in_channels, config.stem_width, kernel=config.stem_kernel, stride=2)
        self.pool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1) if config.stem_pool else nn.Identity()
        strides = self.stage_strides(len(config.widths), config.output_stride)
        self.low_stage = strides.index(config.decoder_stride)
        self.stages = nn.ModuleList()
        channels, stride, dilation = config.stem_width, 4 if config.stem_pool else 2, 1
        self.channels: list[int] = []
        for i, (width, depth, target) in enumerate(zip(config.widths, config.depths, strides, strict=True)):
            step = target // stride
            if i > 0 and step == 1:
                dilation *= 2  # a stage past the output stride dilates instead of striding (DeepLab)
            blocks = []
            for j in range(depth):
                blocks.append(ResNetBlock(channels, width, step if j == 0 else 1, dilation, config.bottleneck))
                channels = blocks[-1].out_channels
            self.stages.append(nn.Sequential(*blocks))
            self.channels.append(channels)
            stride = target

    @staticmethod
    def stage_strides(n_stages: int, output_stride: int) -> list[int]:
        """Output stride of each stage: 4, 8, 16, ... capped at ``output_stride``."""
        return [min(4 * 2**i, output_stride) for i in range(n_stages)]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        s2 = self.stem(x)
        outputs = [self.pool(s2)]
        for stage in self.stages:
            outputs.append(stage(outputs[-1]))
        return s2, outputs[1 + self.low_stage], outputs[-1]


class Substream(nn.Module):
    """One SpineOne substream (discs or vertebrae): dual attention, Table VI's CNN, heads.

    Parameters
    ----------
    config : SpineOneConfig
    n_labels : int
        Heatmap channels of this stream (its labels, one class each).
    """

    def __init__(self, config: SpineOneConfig, n_labels: int) -> None:
        super().__init__()
        c, h = config.feature_channels, config.head_channels
        self.attention: nn.Module = DualAttention(c) if config.attention else nn.Identity()
        self.cnn = nn.Sequential(conv_bn_relu(c, h), conv_bn_relu(h, h))
        self.to_stride2 = DeepLabDecoder(h, config.stem_width, config.low_level_channels, h)
        self.dropout = nn.Dropout2d(config.dropout)
        self.heatmap, self.offset = keypoint_convs(h, n_labels)
        self.degeneration = nn.Conv2d(h, n_labels, 1) if config.degeneration else None

    def forward(self, u_global: Tensor, s2: Tensor) -> dict[str, Tensor]:
        """Heads at the stride of ``s2`` from ``U_global`` and the stride-2 stem features."""
        features = self.dropout(self.to_stride2(self.cnn(self.attention(u_global)), s2))
        out = {"heatmap": self.heatmap(features), "offset": self.offset(features)}
        if self.degeneration is not None:
            out["degeneration"] = self.degeneration(features)
        return out


class SpineOneLoss(IvdLoss):
    """SpineOne's objective: heatmap focal + offset L1 (+ masks), with gradient-guided objective association.

    Until ``oa_start_step`` training steps have run this is exactly :class:`IvdLoss` (the
    paper's Eq. 4: heatmap and offset terms summed unweighted; plus our mask term). From then
    on, objective association (the paper's Eqs. 6-7) lets the heatmap lead the offsets:

    1. ``g = dL_heatmap / d heatmap``, the gradient of the heatmap loss with respect to each
       heatmap logit, computed on a detached copy (so it is a constant weight, not a
       second-order term), clipped to [-100, 100];
    2. its magnitude is min-max normalised to [0, 1] per sample and channel;
    3. ``w = 1 + that``, duplicated to the label's two offset channels (the paper's R), and the
       offset loss becomes ``L1(w * offset_pred, w * offset_target)`` over the supervised
       pixels, i.e. each pixel's offset error weighted by how much the heatmap still has to
       learn there.

    Two readings of the paper are made explicit here. (a) Eq. 6 multiplies only the
    prediction, ``L1(w * o_pred, o)``, whose optimum ``o_pred = o / w`` would bias the offsets
    that Hough voting later uses unweighted; weighting both sides keeps the optimum at ``o``
    and keeps the stated purpose, weighting pixels by importance. (b) The paper does not say
    whether the normalisation keeps the sign; a signed min-max would give under-confident
    keypoint pixels (large negative gradients) the *smallest* weight, so the magnitude is used.

    The step counter advances on every call made with gradients enabled in training mode
    (the engine calls the loss once per optimiser step); it is not saved with checkpoints, so
    a resumed or fine-tuned run counts from 0 again. ``parts["oa"]`` is 1.0 while the
    association is active.

    With ``degeneration`` the batch must carry ``degenerative`` ``(B, K)`` grades (1
    degenerative, 0 normal, NaN unknown); the degeneration logits are trained with BCE
    weighted by each label's Gaussian heatmap target.

    Parameters
    ----------
    config : SpineOneConfig
    """

    def __init__(self, config: SpineOneConfig) -> None:
        super().__init__()
        self.objective_association = config.objective_association
        self.oa_start_step = config.oa_start_step
        self.degeneration = config.degeneration
        self.steps = 0

    def association_weight(self, logits: Tensor, target: Tensor, visible: Tensor) -> Tensor:
        """``1 + normalised |dL_heatmap / d logits|``, ``(B, K, h, w)`` in [1, 2], without gradient."""
        with torch.enable_grad():
            probe = logits.detach().float().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.heatmap_loss(probe, target, visible), probe)
        magnitude = grad.clamp(-OA_GRADIENT_CLIP, OA_GRADIENT_CLIP).abs().flatten(2)
        low = magnitude.amin(dim=2, keepdim=True)
        span = magnitude.amax(dim=2, keepdim=True) - low
        normalised = torch.where(span > 0, (magnitude - low) / span.clamp(min=torch.finfo(span.dtype).tiny), 0.0)
        return 1.0 + normalised.view_as(grad)

    def forward(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Total loss (a differentiable scalar) and its parts as floats; see :class:`IvdLoss`.

        Raises
        ------
        ValueError
            A key is missing (including ``degenerative`` when the degeneration head is on)
            or a shape disagrees with docs/pipeline.md.
        """
        associate = self.objective_association and self.steps >= self.oa_start_step
        if associate and {"heatmap", "offset"} <= outputs.keys() and {"heatmap", "visible", "offset"} <= batch.keys():
            weight = self.association_weight(outputs["heatmap"], batch["heatmap"], batch["visible"])
            weight = weight.repeat_interleave(2, dim=1)
            outputs = {**outputs, "offset": outputs["offset"] * weight}
            batch = {**batch, "offset": batch["offset"] * weight}
        total, parts = super().forward(outputs, batch)
        if self.degeneration:
            degeneration = self._degeneration_loss(outputs, batch)
            total = total + degeneration
            parts["degeneration"] = float(degeneration.detach())
            parts["total"] = float(total.detach())
        parts["oa"] = float(associate)
        if self.training and torch.is_grad_enabled():
            self.steps += 1
        return total, parts

    @staticmethod
    def _degeneration_loss(outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> Tensor:
        if "degenerative" not in batch or "degeneration" not in outputs:
            raise ValueError(
                "SpineOne's degeneration head needs outputs['degeneration'] and batch['degenerative'] (B, K) grades "
                "(1 degenerative, 0 normal, NaN unknown); the training data has none: set degeneration=False"
            )
        logits = outputs["degeneration"].float()
        grade = batch["degenerative"].float()
        known = (torch.isfinite(grade) & (batch["visible"] > 0)).float()
        weight = batch["heatmap"].float() * known[:, :, None, None]
        target = torch.nan_to_num(grade, nan=0.0)[:, :, None, None].expand_as(logits)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return (bce * weight).sum() / weight.sum().clamp(min=1.0)


@register("spineone", SpineOneConfig, loss=SpineOneLoss)
class SpineOne(PipelineNet):
    """SpineOne: disc and vertebra substreams with dual attention on a DeepLabv3+ backbone.

    Inputs and outputs are :class:`~napari_ivd.models.conventions.PipelineNet`'s, with H
    and W multiples of ``input_multiple``, the output stride (so every down-sampling halves
    an even size), plus the optional degeneration logits (see :meth:`forward`); ``config``
    defaults to ``SpineOneConfig()``.
    """

    config: SpineOneConfig

    def __init__(self, config: SpineOneConfig | None = None) -> None:
        super().__init__(config or SpineOneConfig())
        config = self.config
        self.input_multiple = config.output_stride
        self.encoder = ResNetEncoder(config)
        self.aspp = ASPP(self.encoder.channels[-1], config.aspp_channels, config.aspp_rates)
        low_channels = self.encoder.channels[self.encoder.low_stage]
        self.decoder = DeepLabDecoder(
            config.aspp_channels, low_channels, config.low_level_channels, config.feature_channels
        )
        kinds = [structure(label).kind for label in config.labels]
        self.streams = nn.ModuleDict(
            {kind: Substream(config, kinds.count(kind)) for kind in ("disc", "vertebra") if kind in kinds}
        )
        # Streams emit their labels in label order, discs first; ``order[k]`` is label k's channel.
        stream_order = [k for kind in self.streams for k in range(len(kinds)) if kinds[k] == kind]
        order = torch.tensor([stream_order.index(k) for k in range(len(kinds))])
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("offset_order", torch.stack([2 * order, 2 * order + 1], 1).flatten(), persistent=False)
        h = config.head_channels
        self.seg_body = DeepLabDecoder(config.feature_channels, config.stem_width, config.low_level_channels, h)
        self.seg_dropout = nn.Dropout2d(config.dropout)
        self.seg = nn.Conv2d(h, 2, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        first, *others = self.streams.values()
        init_weights(self, first.heatmap, first.offset, [self.seg, *self._logit_convs(first)])
        for stream in others:  # resets only this stream's convolutions
            init_weights(stream, stream.heatmap, stream.offset, self._logit_convs(stream))

    def label_axes(self) -> LabelAxes:
        """Each substream's keypoint (and degeneration) heads, over that stream's labels."""
        axes: LabelAxes = {}
        for kind, stream in self.streams.items():
            labels = [label for label in self.config.labels if structure(label).kind == kind]
            axes |= keypoint_axes(labels, prefix=f"streams.{kind}.")
            if stream.degeneration is not None:
                one = tuple((label, 0) for label in labels)
                axes |= {f"streams.{kind}.degeneration.{p}": {0: one} for p in ("weight", "bias")}
        return axes

    def heatmap_heads(self) -> tuple[str, ...]:
        """Each substream's heatmap head."""
        return tuple(f"streams.{kind}.heatmap" for kind in self.streams)

    def label_source(self, name: str, old_state: Mapping[str, Tensor]) -> str:
        """A substream the smaller network lacks (no label of that kind) grows from the other one."""
        if name in old_state or not name.startswith("streams."):
            return name
        _, kind, rest = name.split(".", 2)
        other = next(k for k in ("disc", "vertebra") if k != kind)
        return f"streams.{other}.{rest}"

    @staticmethod
    def _logit_convs(stream: Substream) -> list[nn.Conv2d]:
        return [] if stream.degeneration is None else [stream.degeneration]

    def forward(self, x: Tensor, seg_only: bool = False) -> dict[str, Tensor]:
        """The pipeline's outputs; with ``degeneration``, also ``"degeneration"`` ``(B, K, H/2, W/2)`` logits.

        ``seg_only`` skips both substreams and their attention.
        """
        self.check_input(x, self.input_multiple)
        s2, low, deep = self.encoder(x)
        u_global = self.decoder(self.aspp(deep), low)
        out = {"seg": upsample_like(self.seg(self.seg_dropout(self.seg_body(u_global, s2))), x)}
        if seg_only:
            return out
        streams = [stream(u_global, s2) for stream in self.streams.values()]
        for key in streams[0]:
            index = self.offset_order if key == "offset" else self.order
            out[key] = torch.cat([s[key] for s in streams], dim=1).index_select(1, index)
        return out
