"""Small layers every architecture in :mod:`napari_ivd.models` builds from (one definition each)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["conv_bn_relu", "keypoint_convs", "upsample_like"]


def conv_bn_relu(
    c_in: int, c_out: int, kernel: int = 3, stride: int = 1, dilation: int = 1, separable: bool = False
) -> nn.Sequential:
    """Convolution, batch norm, ReLU; ``separable`` splits it into depthwise + pointwise.

    A depthwise separable convolution (depthwise ``kernel`` x ``kernel`` conv-BN-ReLU, then a
    1x1 conv-BN-ReLU, as in DeepLabv3+'s Xception) costs about ``1/c_out + 1/kernel**2`` of
    the plain convolution. Padding keeps the size (divided by ``stride``).
    """
    padding = dilation * (kernel // 2)
    if not separable or kernel == 1:
        return nn.Sequential(
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, kernel, stride=stride, padding=padding, dilation=dilation, groups=c_in, bias=False),
        nn.BatchNorm2d(c_in),
        nn.ReLU(inplace=True),
        *conv_bn_relu(c_in, c_out, kernel=1),
    )


def keypoint_convs(c_in: int, num_labels: int) -> tuple[nn.Conv2d, nn.Conv2d]:
    """The keypoint head's 1x1 output convolutions: ``heatmap`` (K logits) and ``offset`` (2K: rows, cols per label).

    A pair, not a module, so each network keeps them as its own ``heatmap`` and ``offset``
    attributes: the state-dict keys of the bundled IvdNet weights name them so.

    Example
    -------
    >>> heatmap, offset = keypoint_convs(16, 14)
    >>> heatmap.out_channels, offset.out_channels
    (14, 28)
    """
    return nn.Conv2d(c_in, num_labels, 1), nn.Conv2d(c_in, 2 * num_labels, 1)


def upsample_like(x: Tensor, like: Tensor) -> Tensor:
    """Bilinearly resize ``x`` to the rows and columns of ``like`` (``x`` itself when they already match)."""
    if x.shape[-2:] == like.shape[-2:]:
        return x
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)
