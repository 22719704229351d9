"""IvdNet: the default napari-ivd network, keypoints + segmentation of discs and vertebrae.

One shared encoder-decoder feeds two heads (see docs/pipeline.md for the output contract):

* **Encoder** with only three stride-2 down-samplings (output stride 8), following Gao et al.
  2018: few down-samplings keep thin discs sharp. Residual 3x3 conv blocks carry
  squeeze-and-excitation (channel attention).
* **Densely connected ASPP** at stride 8 (Gao et al. 2018, after DenseASPP): each dilated
  branch sees the concatenation of the input and all earlier branches' outputs, so the
  receptive field covers the whole lumbar spine while scales are combined freely.
* **Light decoder** with skip connections back to stride 2.
* **Keypoint head** (SpineOne): dual self-attention on the stride-8 features (position
  attention = spatial self-attention from every stride-8 position to a 2x pooled copy of the
  map, channel attention = Gram matrix over channels), which lets each level's channel look
  along the whole spine to tell L4 from L5; it is upsampled, fused with the stride-2 decoder
  features and turned into one heatmap channel per label (SpineOne's one-channel-per-class)
  plus short-range offsets.
* **Segmentation head**: vertebral body and disc logits at full resolution, each stride-2
  pixel emitting its four sub-pixels (pixel shuffle) rather than one bilinearly upsampled
  value, so the thin discs' borders are learned, not interpolated.

A ``Dropout2d`` sits before both heads so Monte-Carlo dropout can score uncertainty later.

Sizes, measured with :func:`~napari_ivd.models.registry.count_parameters` and
:func:`~napari_ivd.models.registry.gflops_per_forward` (input 1x1x256x256, 14 lumbar labels;
torch's FlopCounterMode: convolutions and matrix products, multiply-add = 2 FLOPs):

===================  ==========  ===============
preset               parameters  GFLOPs/forward
===================  ==========  ===============
``IvdNetConfig()``      252,656    1.47
``.paper()``          2,664,848    9.35
===================  ==========  ===============

Position attention costs O((H/8 * W/8)^2 / 4) memory with the default 2x pooling: about
1 MiB per 256x256 image, 16 MiB per 512x512 image. Pooling also cuts a forward pass of 8
384x384 slices on 2 CPU cores (bfloat16) from 0.28-0.33 s to 0.18-0.25 s; GFLOPs, which
count the attention's matrix products but not its softmax, fall from 3.99 to 3.41 there.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from napari_ivd.anatomy import LUMBAR_LABELS
from napari_ivd.models.conventions import PipelineConfig, PipelineNet, init_weights
from napari_ivd.models.layers import conv_bn_relu, keypoint_convs, upsample_like
from napari_ivd.models.registry import register

__all__ = ["DEFAULT_LABELS", "INPUT_MULTIPLE", "IvdNet", "IvdNetConfig"]

log = logging.getLogger(__name__)

#: The lumbar label set of docs/pipeline.md, cranio-caudal: T11, T11-T12, T12, ..., L5, L5-S1.
DEFAULT_LABELS: tuple[str, ...] = LUMBAR_LABELS
#: Input rows and columns must be multiples of this (three stride-2 down-samplings).
INPUT_MULTIPLE = 8


@dataclass(frozen=True)
class IvdNetConfig(PipelineConfig):
    """Hyper-parameters of :class:`IvdNet` besides :class:`PipelineConfig`'s ``labels``, ``in_channels``.

    Parameters
    ----------
    widths : tuple of 4 int
        Channels at stride 2, 4 and 8 in the encoder, and after the dense ASPP.
    aspp_rates : tuple of int
        Dilation rates of the densely connected ASPP branches at stride 8.
    se_reduction : int
        Squeeze-and-excitation bottleneck ratio.
    attention : bool
        Use the dual (position + channel) attention in the keypoint head.
    attention_pool : int
        Average-pooling factor of the position attention's keys and values: each stride-8
        position attends to stride-``8 * attention_pool`` context, ``attention_pool**2``
        times cheaper (the attention's cost grows with the square of the image area).
    subpixel_seg : bool
        Segmentation logits at full resolution from a sub-pixel convolution (pixel shuffle
        of 4 learned sub-positions per stride-2 pixel) instead of bilinear upsampling of
        stride-2 logits; thin discs keep sharper boundaries.
    dropout : float
        ``Dropout2d`` probability before the heads (0 disables it).
    """

    widths: tuple[int, int, int, int] = (16, 32, 48, 64)
    aspp_rates: tuple[int, ...] = (3, 6, 12, 18)
    se_reduction: int = 4
    attention: bool = True
    attention_pool: int = 2
    subpixel_seg: bool = True
    dropout: float = 0.1

    #: Cards written before 2026-12-02 describe full-map position attention and bilinear masks.
    CARD_LEGACY_VALUES: ClassVar[Mapping[str, Any]] = {"attention_pool": 1, "subpixel_seg": False}

    def __post_init__(self) -> None:
        self._check_fields(
            tuples=("widths", "aspp_rates"),
            positive_ints=("widths", "aspp_rates", "se_reduction", "attention_pool"),
            flags=("attention", "subpixel_seg"),
            probabilities=("dropout",),
        )
        if len(self.widths) != 4:
            raise ValueError(f"IvdNetConfig.widths must be 4 positive ints, got {self.widths}")

    @classmethod
    def paper(cls, **overrides: object) -> IvdNetConfig:
        """Larger preset closer to the papers: wider stages and Gao's five ASPP rates (3..24).

        Keyword arguments override any field, e.g. ``IvdNetConfig.paper(in_channels=3)``.
        """
        base = cls(widths=(32, 64, 128, 256), aspp_rates=(3, 6, 12, 18, 24), se_reduction=16)
        return dataclasses.replace(base, **overrides)


class SqueezeExcite(nn.Module):
    """Channel re-weighting from globally pooled features (Hu et al.): ``x * sigmoid(mlp(mean(x)))``."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        w = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(w), inplace=True)))


class ResidualSEBlock(nn.Module):
    """Two 3x3 conv-BN layers with squeeze-and-excitation and a (projected) identity shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, se_reduction: int = 4) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(c_in, c_out, stride=stride)
        self.conv2 = nn.Sequential(nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))
        self.se = SqueezeExcite(c_out, se_reduction)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.se(self.conv2(self.conv1(x))) + self.shortcut(x), inplace=True)


class DenseASPP(nn.Module):
    """Densely connected atrous spatial pyramid pooling.

    Branch i (dilation ``rates[i]``) takes the concatenation of the input and the outputs of
    branches 0..i-1, so every combination of scales is reachable; the input and all branch
    outputs are finally concatenated and projected to ``c_out`` channels.
    """

    def __init__(self, c_in: int, c_out: int, rates: tuple[int, ...], growth: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList()
        channels = c_in
        for rate in rates:
            self.branches.append(
                nn.Sequential(conv_bn_relu(channels, growth, kernel=1), conv_bn_relu(growth, growth, dilation=rate))
            )
            channels += growth
        self.project = conv_bn_relu(channels, c_out, kernel=1)

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for branch in self.branches:
            features.append(branch(torch.cat(features, dim=1)))
        return self.project(torch.cat(features, dim=1))


class PositionAttention(nn.Module):
    """Spatial self-attention (DANet's PAM): each position adds a weighted sum over all positions.

    ``gamma`` starts at 0, so the module starts as the identity and learns how much global
    context to mix in. With ``pool`` > 1 the keys and values come from the average-pooled
    map (queries stay at full resolution), ``pool**2`` times cheaper.
    """

    def __init__(self, channels: int, pool: int = 1) -> None:
        super().__init__()
        self.pool = pool
        self.key_dim = max(channels // 8, 4)
        self.query = nn.Conv2d(channels, self.key_dim, 1)
        self.key = nn.Conv2d(channels, self.key_dim, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        context = F.avg_pool2d(x, self.pool, ceil_mode=True) if self.pool > 1 else x
        q = self.query(x).flatten(2).transpose(1, 2)  # (B, N, d)
        k = self.key(context).flatten(2)  # (B, d, M)
        v = self.value(context).flatten(2)  # (B, C, M)
        attn = torch.softmax(torch.bmm(q, k) / math.sqrt(self.key_dim), dim=-1)  # (B, N, M)
        out = torch.bmm(v, attn.transpose(1, 2)).view(b, c, h, w)
        return x + self.gamma * out


class ChannelAttention(nn.Module):
    """Channel self-attention (DANet's CAM): each channel adds a mix of channels it correlates with."""

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        flat = x.flatten(2)  # (B, C, N)
        energy = torch.bmm(flat, flat.transpose(1, 2)) / (h * w)  # (B, C, C)
        # DANet subtracts from the row maximum, so weakly correlated channels get more weight.
        attn = torch.softmax(energy.amax(dim=-1, keepdim=True) - energy, dim=-1)
        return x + self.gamma * torch.bmm(attn, flat).view(b, c, h, w)


class DualAttention(nn.Module):
    """Position and channel attention in parallel, summed, then a 3x3 fusion conv (SpineOne)."""

    def __init__(self, channels: int, pool: int = 1) -> None:
        super().__init__()
        self.pam = PositionAttention(channels, pool)
        self.cam = ChannelAttention()
        self.fuse = conv_bn_relu(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.fuse(self.pam(x) + self.cam(x) - x)


@register("ivdnet", IvdNetConfig)
class IvdNet(PipelineNet):
    """Keypoint heatmaps, short-range offsets and disc/vertebra masks from a sagittal slice.

    Inputs and outputs are :class:`~napari_ivd.models.conventions.PipelineNet`'s, with H
    and W multiples of 8; ``config`` defaults to ``IvdNetConfig()``.
    """

    config: IvdNetConfig

    def __init__(self, config: IvdNetConfig | None = None) -> None:
        super().__init__(config or IvdNetConfig())
        config = self.config
        w2, w4, w8, wa = config.widths
        k, r = config.num_labels, config.se_reduction
        # Encoder: three stride-2 steps only.
        self.stem = nn.Sequential(conv_bn_relu(config.in_channels, w2, stride=2), ResidualSEBlock(w2, w2, 1, r))
        self.down4 = nn.Sequential(ResidualSEBlock(w2, w4, 2, r), ResidualSEBlock(w4, w4, 1, r))
        self.down8 = nn.Sequential(ResidualSEBlock(w4, w8, 2, r), ResidualSEBlock(w8, w8, 1, r))
        self.aspp = DenseASPP(w8, wa, config.aspp_rates, growth=max(wa // 2, 8))
        # Decoder back to stride 2 (shared by both heads).
        self.fuse4 = nn.Sequential(conv_bn_relu(wa + w4, w4, kernel=1), conv_bn_relu(w4, w4))
        self.fuse2 = nn.Sequential(conv_bn_relu(w4 + w2, w2, kernel=1), conv_bn_relu(w2, w2))
        self.dropout = nn.Dropout2d(config.dropout)
        # Keypoint head: global context at stride 8, fused into stride-2 detail.
        self.attention: nn.Module = DualAttention(wa, config.attention_pool) if config.attention else nn.Identity()
        self.context = conv_bn_relu(wa, w2, kernel=1)
        self.kp_body = conv_bn_relu(2 * w2, w4)
        self.heatmap, self.offset = keypoint_convs(w4, k)
        # Segmentation head.
        self.seg_body = conv_bn_relu(w2, w2)
        self.seg = nn.Conv2d(w2, 2 * 4 if config.subpixel_seg else 2, 1)
        init_weights(self, self.heatmap, self.offset, [self.seg])

    def forward_features(self, x: Tensor) -> tuple[Tensor, ...]:
        """The dense ASPP's output at stride 8: the deepest features, from the encoder alone."""
        self.check_input(x, INPUT_MULTIPLE)
        return (self.aspp(self.down8(self.down4(self.stem(x)))),)

    def forward(self, x: Tensor, seg_only: bool = False) -> dict[str, Tensor]:
        """The pipeline's outputs; ``seg_only`` skips the keypoint head and its attention (a third of the time)."""
        self.check_input(x, INPUT_MULTIPLE)
        s2 = self.stem(x)
        s4 = self.down4(s2)
        s8 = self.aspp(self.down8(s4))
        d4 = self.fuse4(torch.cat([upsample_like(s8, s4), s4], dim=1))
        d2 = self.fuse2(torch.cat([upsample_like(d4, s2), s2], dim=1))

        seg = self.seg(self.dropout(self.seg_body(d2)))
        out = {"seg": F.pixel_shuffle(seg, 2) if self.config.subpixel_seg else upsample_like(seg, x)}
        if not seg_only:
            context = self.context(self.attention(s8))
            kp = self.dropout(self.kp_body(torch.cat([d2, upsample_like(context, d2)], dim=1)))
            out.update(heatmap=self.heatmap(kp), offset=self.offset(kp))
        return out
