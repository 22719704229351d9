"""UNet: the plain baseline of the model comparison, a textbook 2D U-Net with the pipeline's heads.

Ronneberger et al. 2015's U-Net, as every segmentation paper's baseline draws it: an encoder
of "two 3x3 convolutions, then 2x2 max-pooling" stages that double the channels at each
step, a symmetric decoder of "2x2 transposed convolution, concatenate the encoder's skip,
two 3x3 convolutions" stages, and nothing else (no attention, no dilation, no residuals).
It is here so every paper's architecture is compared, on the same data and budget, against
what a plain U-Net achieves (docs/models.md).

The pipeline's three outputs (docs/pipeline.md) come from 1x1 convolutions on the decoder:
the keypoint heatmap and short-range offsets on the stride-2 decoder stage (U-Net has no
keypoint head; these two 1x1 layers are the lightest that name levels through the shared
Hough decode and skeleton search), the vertebral-body/disc mask logits on the full-resolution
stage. Deviations from the 2015 paper, all the norm in today's U-Net baselines: padded
("same") convolutions, so outputs align with inputs without cropping; batch normalisation
after every convolution, so it trains from scratch in minutes; no dropout.

Sizes, measured with :func:`~napari_ivd.models.registry.count_parameters` and
:func:`~napari_ivd.models.registry.gflops_per_forward` (input 1x1x256x256, 14 lumbar labels;
torch's FlopCounterMode: convolutions, multiply-add = 2 FLOPs):

=================  ==========  ======  ===============
preset             parameters  levels  GFLOPs/forward
=================  ==========  ======  ===============
``UNetConfig()``      483,852  4        4.65
``.paper()``       31,041,964  5       96.37
=================  ==========  ======  ===============

The default has 16 base channels and four resolution levels (three poolings: 16-32-64-128
channels); ``paper()`` is the classic 64-1024 U-Net with five levels (four poolings). Each
level costs about the same (channels double while pixels quarter) and the full-resolution
stages are not cheap, so the default needs about three times IvdNet's GFLOPs, above the
~3 GFLOPs aimed at for the other defaults: the baseline keeps the textbook's 16 base channels
rather than being thinned to fit.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from napari_ivd.models.conventions import PipelineConfig, PipelineNet, init_weights
from napari_ivd.models.layers import conv_bn_relu, keypoint_convs
from napari_ivd.models.registry import register

__all__ = ["UNet", "UNetConfig"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UNetConfig(PipelineConfig):
    """Hyper-parameters of :class:`UNet` besides :class:`PipelineConfig`'s ``labels``, ``in_channels``.

    Parameters
    ----------
    base_channels : int
        Channels of the full-resolution stage; each pooling doubles them.
    depth : int
        Number of 2x2 poolings (resolution levels minus one), at least 2; inputs must be
        multiples of ``2 ** depth``.
    """

    base_channels: int = 16
    depth: int = 3

    def __post_init__(self) -> None:
        self._check_fields(positive_ints=("base_channels",), min_ints={"depth": 2})  # heads on stride 2

    @classmethod
    def paper(cls, **overrides: object) -> UNetConfig:
        """Ronneberger et al. 2015's sizes: 64 base channels, four poolings (64 ... 1024 channels).

        Keyword arguments override any field, e.g. ``UNetConfig.paper(in_channels=3)``.
        """
        return dataclasses.replace(cls(base_channels=64, depth=4), **overrides)


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(conv_bn_relu(c_in, c_out), conv_bn_relu(c_out, c_out))


class _UpStage(nn.Module):
    """2x2 transposed convolution halving the channels, concatenation with the skip, double conv."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_out, kernel_size=2, stride=2)
        self.conv = _double_conv(2 * c_out, c_out)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


@register("unet", UNetConfig)
class UNet(PipelineNet):
    """Textbook 2D U-Net giving keypoint heatmaps, offsets and disc/vertebra masks.

    Inputs and outputs are :class:`~napari_ivd.models.conventions.PipelineNet`'s, with H
    and W multiples of ``input_multiple = 2 ** depth``; ``config`` defaults to ``UNetConfig()``.
    """

    config: UNetConfig

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__(config or UNetConfig())
        config = self.config
        self.input_multiple = 2**config.depth
        widths = [config.base_channels * 2**level for level in range(config.depth + 1)]
        self.encoder = nn.ModuleList([_double_conv(config.in_channels, widths[0])])
        self.encoder.extend(_double_conv(widths[i - 1], widths[i]) for i in range(1, config.depth + 1))
        self.pool = nn.MaxPool2d(2)
        # decoder[i] brings level i + 1 up to level i; run from the deepest level upwards
        self.decoder = nn.ModuleList(_UpStage(widths[i + 1], widths[i]) for i in range(config.depth))
        self.heatmap, self.offset = keypoint_convs(widths[1], config.num_labels)
        self.seg = nn.Conv2d(widths[0], 2, 1)
        init_weights(self, self.heatmap, self.offset, [self.seg])

    def forward(self, x: Tensor, seg_only: bool = False) -> dict[str, Tensor]:
        """The pipeline's outputs; ``seg_only`` skips the two keypoint convolutions."""
        self.check_input(x, self.input_multiple)
        skips = []
        for level, stage in enumerate(self.encoder):
            x = stage(x if level == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        out: dict[str, Tensor] = {}
        for level in reversed(range(self.config.depth)):
            x = self.decoder[level](x, skips[level])
            if level == 1 and not seg_only:
                out.update(heatmap=self.heatmap(x), offset=self.offset(x))
        out["seg"] = self.seg(x)
        return out
