"""SCAR-Net (Lei et al.): spine segmentation with cross attention and keypoint-assisted label fusion.

The paper's network has two paths over the same slice, each a DeepLabv3+-style encoder with
depthwise separable convolutions (an initial convolution, separable residual blocks whose
first yields the low-level map, then ASPP for the high-level map):

* the **main path** segments vertebral bodies and discs;
* the **branch path** (the key-points recognition-assisted learner, KRAL) detects the
  keypoints of the vertebrae and discs; it is trained on keypoint labels alone, which is how
  weakly annotated scans (points, no masks) join training: mixed supervision.

The two paths meet in three places, all implemented here:

* **Multi-channel cross attention (MCCA)** fuses the high-level maps: an inter-class block
  (position attention whose queries come from the segmentation features and whose keys and
  values come from the recognition features), an intra-class block (position self-attention
  of the segmentation features), each added back with a learnt scale gamma (F1, F2), then F1
  and F2 concatenated, merged by a 1x1 convolution and passed through a channel attention
  block (the channel self-attention of :mod:`~napari_ivd.models.ivdnet`), giving MF.
* **Recognition-assisted label fusion (RALF)** with its **adaptive transformer (AT)** on MF:
  the AT's position self-attention is modulated by a weight map from the *detected
  keypoints*, so attention favours features near them, and its output is filtered by a
  *dynamic* 7x7 depthwise kernel that a parameter adapter (7x7 adaptive average pooling + a
  1x1 convolution) generates per image from the recognition features (the paper's
  alpha in R^{7x7x128}).
* The **decoder** (DeepLabv3+: upsample, concatenate a projected low-level map, separable
  convolutions) takes MF after the AT and the low-level maps of *both* paths (the "enhanced"
  low-level features FE).

How the paper's descriptions were made concrete (its text gives no equations for them):

* The keypoint weight map is the detected heatmap itself: ``max_k sigmoid(heatmap_k)``,
  detached, max-pooled to the attention grid. Our heatmaps are trained against Gaussians of
  the distance to each keypoint, so this *is* a Gaussian kernel of the distance to the
  detected keypoints, without a non-differentiable peak search. It modulates the attention
  weights multiplicatively, ``A_ij ∝ exp(q_i·k_j / sqrt(d)) * exp(beta * G_j)`` (an
  additive ``beta * G`` on the logits), with ``beta`` learnt, starting at 1.
* The dynamic kernel is applied as a residual depthwise convolution whose adapter starts at
  zero, so the AT starts as plain attention and learns how much to filter.
* The encoder follows Xception's entry and middle flows (paper preset: 32/64-channel stem,
  blocks of 128, 256 and 728 channels, 16 middle blocks, as DeepLabv3+'s Xception-65);
  the exit flow is left out, the ASPP sits directly on the middle flow.
* The mixed-supervised loss is the shared :class:`~napari_ivd.models.losses.IvdLoss`: masks
  where a scan has them (``seg_valid``), keypoints where it has those (``visible``), the
  keypoint terms weighted by ``keypoint_weight`` (the paper's lambda, 40..100 for its own,
  unstated loss scale, does not carry over; 1 balances our focal and Dice terms).

Added for napari-ivd: the branch path ends in the pipeline's keypoint heads (heatmap and
short-range offsets at stride 2, after one more decoder step that fuses the stride-2 stem
features), the segmentation has two independent sigmoid channels (vertebral body, disc)
instead of the paper's per-level softmax, and a ``Dropout2d`` precedes all heads.
``attention=False`` is the paper's ablation baseline: no MCCA (the high-level maps are
concatenated and merged by a 1x1 convolution) and no AT.

Sizes, measured with :func:`~napari_ivd.models.registry.count_parameters` and
:func:`~napari_ivd.models.registry.gflops_per_forward` (input 1x1x256x256, 14 lumbar labels;
torch's FlopCounterMode: convolutions and matrix products, multiply-add = 2 FLOPs):

====================  ==========  ===============
preset                parameters  GFLOPs/forward
====================  ==========  ===============
``ScarNetConfig()``       124,753    0.54
``.paper()``          58,021,601   40.07
====================  ==========  ===============

Without attention (``attention=False``): 115,068 / 0.52 and 57,804,732 / 40.06. Two encoders
of depthwise separable convolutions make the default as slow per step as IvdNet despite a
third of its FLOPs (about 1 s for 4 crops of 256x256 on one CPU core).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from napari_ivd.models.conventions import PipelineConfig, PipelineNet, init_weights
from napari_ivd.models.deeplab import ASPP, DeepLabDecoder
from napari_ivd.models.ivdnet import ChannelAttention, PositionAttention
from napari_ivd.models.layers import conv_bn_relu, keypoint_convs, upsample_like
from napari_ivd.models.losses import IvdLoss
from napari_ivd.models.registry import register

__all__ = [
    "AdaptiveTransformer",
    "GuidedPositionAttention",
    "MultiChannelCrossAttention",
    "ScarNet",
    "ScarNetConfig",
    "XceptionEncoder",
    "scarnet_loss",
]

log = logging.getLogger(__name__)

#: Size of the AT's dynamic depthwise kernel (the paper's 7x7 adaptive pooling).
DYNAMIC_KERNEL = 7


@dataclass(frozen=True)
class ScarNetConfig(PipelineConfig):
    """Hyper-parameters of :class:`ScarNet` besides :class:`PipelineConfig`'s ``labels``, ``in_channels``.

    Parameters
    ----------
    stem_widths : (int, int)
        Channels of the two stem convolutions (the first strides by 2).
    block_widths : tuple of int
        Channels of the separable residual blocks; block i has stride ``4 * 2**i`` until
        ``output_stride``, then dilates. The first block's output is the low-level map.
    middle_blocks : int
        Separable residual blocks at the output stride (Xception's middle flow), >= 0.
    output_stride : int
        Stride of the high-level maps (DeepLabv3+: 16).
    aspp_channels : int
        Channels of the (separable) ASPP, of MCCA and of MF.
    aspp_rates : tuple of int
        Dilation rates of the ASPP's 3x3 branches.
    low_level_channels : int
        Channels of the projected low-level features in the decoders (DeepLabv3+: 48).
    decoder_channels : int
        Channels of the stride-4 decoders of both paths (DeepLabv3+: 256).
    at_channels : int
        Channels of the adaptive transformer and its dynamic kernel (paper: 128).
    head_channels : int
        Channels of the stride-2 keypoint head.
    attention : bool
        MCCA and the adaptive transformer; False for the ablation baseline.
    dropout : float
        ``Dropout2d`` probability before the heads.
    keypoint_weight : float
        Weight of the keypoint (recognition) terms against the segmentation term.
    """

    stem_widths: tuple[int, int] = (16, 16)
    block_widths: tuple[int, ...] = (24, 32, 48)
    middle_blocks: int = 1
    output_stride: int = 16
    aspp_channels: int = 48
    aspp_rates: tuple[int, ...] = (2, 4, 6)
    low_level_channels: int = 16
    decoder_channels: int = 32
    at_channels: int = 32
    head_channels: int = 16
    attention: bool = True
    dropout: float = 0.1
    keypoint_weight: float = 1.0

    def __post_init__(self) -> None:
        self._check_fields(
            tuples=("stem_widths", "block_widths", "aspp_rates"),
            positive_ints=(
                "stem_widths",
                "block_widths",
                "output_stride",
                "aspp_channels",
                "aspp_rates",
                "low_level_channels",
                "decoder_channels",
                "at_channels",
                "head_channels",
            ),
            flags=("attention",),
            probabilities=("dropout",),
            min_ints={"middle_blocks": 0},
            non_negative=("keypoint_weight",),
        )
        owner = type(self).__name__
        if len(self.stem_widths) != 2:
            raise ValueError(f"{owner}.stem_widths must be 2 ints, got {self.stem_widths}")
        strides = XceptionEncoder.block_strides(len(self.block_widths), self.output_stride)
        if self.output_stride not in strides:
            raise ValueError(
                f"{owner}: {len(self.block_widths)} blocks reach strides {strides}; "
                f"output_stride {self.output_stride} must be one of them"
            )

    @classmethod
    def paper(cls, **overrides: object) -> ScarNetConfig:
        """The paper's sizes: Xception-65-like encoders, 256-channel ASPP/decoder, 128-channel AT.

        Keyword arguments override any field, e.g. ``ScarNetConfig.paper(middle_blocks=8)``.
        """
        base = cls(
            stem_widths=(32, 64),
            block_widths=(128, 256, 728),
            middle_blocks=16,
            output_stride=16,
            aspp_channels=256,
            aspp_rates=(6, 12, 18),
            low_level_channels=48,
            decoder_channels=256,
            at_channels=128,
            head_channels=48,
        )
        return dataclasses.replace(base, **overrides)


class SeparableBlock(nn.Module):
    """Xception block: three separable 3x3 conv-BN-ReLU layers (the last strides) plus a shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_relu(c_in, c_out, dilation=dilation, separable=True),
            conv_bn_relu(c_out, c_out, dilation=dilation, separable=True),
            conv_bn_relu(c_out, c_out, stride=stride, dilation=dilation, separable=True),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + self.shortcut(x)


class XceptionEncoder(nn.Module):
    """One SCAR-Net path's encoder: stem, separable blocks, middle flow, separable ASPP.

    ``forward`` returns the stem output (stride 2), the low-level map (first block, stride 4)
    and the high-level map (ASPP output, ``output_stride``).
    """

    def __init__(self, config: ScarNetConfig) -> None:
        super().__init__()
        w1, w2 = config.stem_widths
        self.stem = nn.Sequential(conv_bn_relu(config.in_channels, w1, stride=2), conv_bn_relu(w1, w2))
        blocks, channels, stride, dilation = [], w2, 2, 1
        strides = self.block_strides(len(config.block_widths), config.output_stride)
        for width, target in zip(config.block_widths, strides, strict=True):
            step = target // stride
            if step == 1:
                dilation *= 2  # past the output stride: dilate instead of striding (DeepLab)
            blocks.append(SeparableBlock(channels, width, step, dilation))
            channels, stride = width, target
        self.low_channels = config.block_widths[0]
        self.entry_first = blocks[0]
        self.entry_rest = nn.Sequential(*blocks[1:])
        self.middle = nn.Sequential(
            *(SeparableBlock(channels, channels, 1, dilation) for _ in range(config.middle_blocks))
        )
        self.aspp = ASPP(channels, config.aspp_channels, config.aspp_rates, separable=True)

    @staticmethod
    def block_strides(n_blocks: int, output_stride: int) -> list[int]:
        """Output stride of each block: 4, 8, 16, ... capped at ``output_stride``."""
        return [min(4 * 2**i, output_stride) for i in range(n_blocks)]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        s2 = self.stem(x)
        low = self.entry_first(s2)
        return s2, low, self.aspp(self.middle(self.entry_rest(low)))


class GuidedPositionAttention(PositionAttention):
    """Position attention (DANet's PAM) that may attend to another map and take a guidance bias.

    With neither ``context`` nor ``key_bias`` it is :class:`PositionAttention`. ``context``
    supplies keys and values (cross attention: queries from ``x``); ``key_bias`` ``(B, 1, h,
    w)``, on the key grid, is added to every query's attention logits, which multiplies the
    attention weight of key j by ``exp(key_bias_j)`` before renormalisation.
    """

    def forward(self, x: Tensor, context: Tensor | None = None, key_bias: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        b, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (B, N, d)
        k = self.key(context).flatten(2)  # (B, d, M)
        v = self.value(context).flatten(2)  # (B, C, M)
        logits = torch.bmm(q, k) / math.sqrt(self.key_dim)  # (B, N, M)
        if key_bias is not None:
            logits = logits + key_bias.flatten(1)[:, None, :]
        out = torch.bmm(v, torch.softmax(logits, dim=-1).transpose(1, 2)).view(b, c, h, w)
        return x + self.gamma * out


class MultiChannelCrossAttention(nn.Module):
    """MCCA: inter-class (cross) and intra-class (self) position attention, merged, then channel attention."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.inter = GuidedPositionAttention(channels)
        self.intra = GuidedPositionAttention(channels)
        self.merge = conv_bn_relu(2 * channels, channels, kernel=1)
        self.channel = ChannelAttention()

    def forward(self, seg: Tensor, rec: Tensor) -> Tensor:
        """MF from the high-level segmentation and recognition maps (same shape)."""
        f1 = self.inter(seg, context=rec)  # F_S^H + gamma * F_S^H'
        f2 = self.intra(seg)  # F_S^H + gamma * F_S'
        return self.channel(self.merge(torch.cat([f1, f2], dim=1)))


class AdaptiveTransformer(nn.Module):
    """RALF's adaptive transformer: keypoint-guided self-attention, then a per-image dynamic kernel.

    Parameters
    ----------
    c_in : int
        Channels of MF.
    channels : int
        AT channels (paper: 128).
    c_rec : int
        Channels of the recognition features the parameter adapter reads.
    """

    def __init__(self, c_in: int, channels: int, c_rec: int) -> None:
        super().__init__()
        self.project = conv_bn_relu(c_in, channels, kernel=1)
        self.attention = GuidedPositionAttention(channels)
        self.guide_strength = nn.Parameter(torch.ones(1))
        self.adapter = nn.Sequential(nn.AdaptiveAvgPool2d(DYNAMIC_KERNEL), nn.Conv2d(c_rec, channels, 1))

    def forward(self, x: Tensor, guide: Tensor, rec: Tensor) -> Tensor:
        """Adapt ``x`` (B, c_in, h, w) given keypoint ``guide`` (B, 1, h, w) in [0, 1] and ``rec``."""
        x = self.attention(self.project(x), key_bias=self.guide_strength * guide)
        b, c, h, w = x.shape
        kernel = self.adapter(rec).reshape(b * c, 1, DYNAMIC_KERNEL, DYNAMIC_KERNEL)
        dynamic = F.conv2d(x.reshape(1, b * c, h, w), kernel, padding=DYNAMIC_KERNEL // 2, groups=b * c)
        return x + dynamic.view(b, c, h, w)


def scarnet_loss(config: ScarNetConfig) -> IvdLoss:
    """SCAR-Net's mixed-supervised objective: masks where known, keypoints (weighted) where annotated.

    :class:`IvdLoss` already ignores unknown mask pixels and unannotated labels, so scans
    with points only (the paper's weakly annotated set) teach the recognition path alone.
    """
    return IvdLoss(heatmap_weight=config.keypoint_weight, offset_weight=config.keypoint_weight)


@register("scarnet", ScarNetConfig, loss=scarnet_loss)
class ScarNet(PipelineNet):
    """SCAR-Net: segmentation path + keypoint (recognition) path, joined by MCCA and RALF.

    Inputs and outputs are :class:`~napari_ivd.models.conventions.PipelineNet`'s, with H
    and W multiples of ``input_multiple``, the output stride; ``config`` defaults to
    ``ScarNetConfig()``.
    """

    config: ScarNetConfig

    def __init__(self, config: ScarNetConfig | None = None) -> None:
        super().__init__(config or ScarNetConfig())
        config = self.config
        self.input_multiple = config.output_stride
        c_high, c_low_proj = config.aspp_channels, config.low_level_channels
        self.seg_encoder = XceptionEncoder(config)
        self.rec_encoder = XceptionEncoder(config)
        c_low, c_stem = self.seg_encoder.low_channels, config.stem_widths[1]
        # Branch path (KRAL): keypoint heads at stride 2.
        self.kp_decoder = DeepLabDecoder(c_high, c_low, c_low_proj, config.decoder_channels, separable=True)
        self.kp_stride2 = DeepLabDecoder(config.decoder_channels, c_stem, c_low_proj, config.head_channels, True)
        self.kp_dropout = nn.Dropout2d(config.dropout)
        self.heatmap, self.offset = keypoint_convs(config.head_channels, config.num_labels)
        # Where the paths meet.
        self.fusion: nn.Module = (
            MultiChannelCrossAttention(c_high) if config.attention else conv_bn_relu(2 * c_high, c_high, kernel=1)
        )
        self.adaptive = AdaptiveTransformer(c_high, config.at_channels, c_high) if config.attention else None
        c_fused = config.at_channels if config.attention else c_high
        # Main path decoder: MF and the low-level maps of both paths (FE).
        self.seg_decoder = DeepLabDecoder(c_fused, 2 * c_low, c_low_proj, config.decoder_channels, separable=True)
        self.seg_dropout = nn.Dropout2d(config.dropout)
        self.seg = nn.Conv2d(config.decoder_channels, 2, 1)
        init_weights(self, self.heatmap, self.offset, [self.seg])
        if self.adaptive is not None:  # the dynamic kernel starts at zero: the AT starts as plain attention
            nn.init.zeros_(self.adaptive.adapter[1].weight)

    def forward(self, x: Tensor, seg_only: bool = False) -> dict[str, Tensor]:
        """The pipeline's outputs from both paths.

        With ``seg_only`` the keypoint heatmap still runs when the adaptive transformer needs
        it (``attention=True``); only the offsets are skipped, and only ``"seg"`` is returned.
        """
        self.check_input(x, self.input_multiple)
        _, seg_low, seg_high = self.seg_encoder(x)
        rec_s2, rec_low, rec_high = self.rec_encoder(x)
        out: dict[str, Tensor] = {}
        if not seg_only or self.adaptive is not None:
            kp = self.kp_dropout(self.kp_stride2(self.kp_decoder(rec_high, rec_low), rec_s2))
            out["heatmap"] = self.heatmap(kp)
            if not seg_only:
                out["offset"] = self.offset(kp)
        if self.adaptive is not None:
            fused = self.fusion(seg_high, rec_high)
            detected = torch.sigmoid(out["heatmap"]).amax(dim=1, keepdim=True).detach()
            fused = self.adaptive(fused, F.adaptive_max_pool2d(detected, fused.shape[-2:]), rec_high)
        else:
            fused = self.fusion(torch.cat([seg_high, rec_high], dim=1))
        seg = self.seg(self.seg_dropout(self.seg_decoder(fused, torch.cat([seg_low, rec_low], dim=1))))
        out["seg"] = upsample_like(seg, x)
        return {"seg": out["seg"]} if seg_only else out
