"""DeepLabv3+ building blocks shared by the SpineOne and SCAR-Net backbones.

Both papers build on DeepLabv3+ (Chen et al. 2018): an encoder whose deepest features pass
through atrous spatial pyramid pooling (ASPP), and a light decoder that upsamples them and
fuses a projected low-level feature map. SCAR-Net's "improved" encoder uses depthwise
separable convolutions throughout (DeepLabv3+'s Xception variant), SpineOne a ResNet; the
blocks here take a ``separable`` switch so both share one implementation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from napari_ivd.models.layers import conv_bn_relu, upsample_like

__all__ = ["ASPP", "DeepLabDecoder"]

log = logging.getLogger(__name__)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: parallel 1x1 and dilated 3x3 branches, concatenated, projected.

    Parameters
    ----------
    c_in, c_out : int
        Input channels; channels of every branch and of the projected output.
    rates : sequence of int
        Dilation rates of the 3x3 branches (DeepLabv3+: 6, 12, 18 at output stride 16).
    separable : bool
        Depthwise separable 3x3 branches (DeepLabv3+ with Xception).

    SpineOne describes its ASPP as exactly these branches (a 1x1 and three dilated 3x3
    convolutions), without DeepLabv3's image-pooling branch, so neither architecture has it.
    """

    def __init__(self, c_in: int, c_out: int, rates: Sequence[int], separable: bool = False) -> None:
        super().__init__()
        self.branches = nn.ModuleList([conv_bn_relu(c_in, c_out, kernel=1)])
        self.branches.extend(conv_bn_relu(c_in, c_out, dilation=rate, separable=separable) for rate in rates)
        self.project = conv_bn_relu(len(self.branches) * c_out, c_out, kernel=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class DeepLabDecoder(nn.Module):
    """DeepLabv3+ decoder: upsample the deep features, concatenate a 1x1-projected low-level map, refine.

    Parameters
    ----------
    c_high : int
        Channels of the deep (ASPP) features.
    c_low : int
        Channels of the low-level features, projected to ``c_low_proj`` (DeepLabv3+: 48) so
        they do not outweigh the deep features.
    c_low_proj, c_out : int
        Projected low-level channels; output channels of the two 3x3 refinement convolutions.
    separable : bool
        Depthwise separable refinement convolutions.
    """

    def __init__(self, c_high: int, c_low: int, c_low_proj: int, c_out: int, separable: bool = False) -> None:
        super().__init__()
        self.project_low = conv_bn_relu(c_low, c_low_proj, kernel=1)
        self.refine = nn.Sequential(
            conv_bn_relu(c_high + c_low_proj, c_out, separable=separable),
            conv_bn_relu(c_out, c_out, separable=separable),
        )

    def forward(self, high: Tensor, low: Tensor) -> Tensor:
        """Fused features at the resolution of ``low``."""
        return self.refine(torch.cat([upsample_like(high, low), self.project_low(low)], dim=1))
