"""DenseAsppNet: Gao et al. 2018's disc segmentation network, with light heads to name levels.

Gao 2018 (MICCAI IVDM3Seg challenge) segments discs with a 2D fully convolutional network
built for thin structures (see /work/shared/papers/ivd-denseaspp-gao2018.txt):

* **Two down-samplings only** (output stride 4), so thin discs keep their edges. The
  backbone is DenseNet-like: in each dense block every 3x3 layer sees all earlier layers'
  outputs; a 1x1 transition and **squeeze-and-excitation** (channel attention) close it.
* **Densely connected ASPP** with dilation rates 3, 6, 12, 18, 24 at stride 4: each dilated
  branch sees the input and all earlier branches, so scales combine freely and the
  receptive field (hundreds of pixels) covers the lumbar spine despite the shallow encoder.
* **Three separate resolution paths** (full, 1/2, 1/4): instead of a U-Net decoder, in which
  an encoder stage gets mixed gradients from its skip and from below, each resolution gets
  its own path, treated "as a single task": every path reads its own encoder stage plus the
  ASPP context and emits its own mask logits, trained by its own loss; the fine mask is
  their mean.
* **Spine-region focus**: Gao trains a separate U-Net on the dilated disc region, ignores the
  segmentation loss outside that region and blanks the output outside it at inference.
  Here a coarse **spine-region branch** on the ASPP features (stride 4) predicts that
  region, supervised by the union of the vertebra and disc masks dilated by
  ``region_margin_px``; the loss (:class:`DenseAsppLoss`) ignores the fine masks' loss
  outside the true region, and the output mask is gated by the predicted region,
  ``seg = seg_fine + log(sigmoid(region))`` (probabilities multiply: outside the spine the
  mask is background). ``spine_region=False`` removes branch, gate and focus (ablation).

Not in the paper, added so the pipeline can name levels (docs/pipeline.md): a light
keypoint head (one 3x3 convolution on the 1/2 path, then 1x1 heatmap and offset layers) and
vertebral-body masks next to disc masks. Gao names discs with a separate 3D V-Net and a
registration-based post-process; the shared Hough decode and skeleton search do that here.
Simplified: a single input contrast (Gao stacks four Dixon images as channels; ``in_channels``
stacks neighbouring slices instead), BCE + Dice masks instead of cross-entropy then focal
loss, the region branch shares the encoder instead of being a second network, and the
region is a dilation of the masks rather than the convex hull of dilated discs.

Sizes, measured with :func:`~napari_ivd.models.registry.count_parameters` and
:func:`~napari_ivd.models.registry.gflops_per_forward` (input 1x1x256x256, 14 lumbar labels;
torch's FlopCounterMode: convolutions and matrix products, multiply-add = 2 FLOPs):

========================  ==========  ===============
preset                    parameters  GFLOPs/forward
========================  ==========  ===============
``DenseAsppConfig()``         201,119     2.50
``.paper()``                2,346,113    30.03
========================  ==========  ===============

Without the spine-region branch (``spine_region=False``) the default has 173,326
parameters and 2.27 GFLOPs. The dense ASPP is the largest part (0.63 GFLOPs); the
full-resolution stage and path together cost 0.41, the price of Gao's edge detail.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from napari_ivd.models.conventions import PipelineConfig, PipelineNet, init_weights
from napari_ivd.models.ivdnet import DenseASPP, SqueezeExcite
from napari_ivd.models.layers import conv_bn_relu, keypoint_convs, upsample_like
from napari_ivd.models.losses import IvdLoss, MaskedSegLoss
from napari_ivd.models.registry import register

__all__ = ["DenseAsppConfig", "DenseAsppLoss", "DenseAsppNet"]

log = logging.getLogger(__name__)

#: Input rows and columns must be multiples of this (two stride-2 down-samplings).
INPUT_MULTIPLE = 4
_PATHS = 3  # full, 1/2 and 1/4 resolution


@dataclass(frozen=True)
class DenseAsppConfig(PipelineConfig):
    """Hyper-parameters of :class:`DenseAsppNet` besides :class:`PipelineConfig`'s ``labels``, ``in_channels``.

    Parameters
    ----------
    widths : tuple of 3 int
        Channels of the encoder stages (and of their paths) at full, 1/2 and 1/4 resolution.
    aspp_width : int
        Channels after the densely connected ASPP.
    aspp_rates : tuple of int
        Dilation rates of the dense ASPP branches (Gao: 3, 6, 12, 18, 24).
    growth : int
        Channels each dense-block layer adds.
    dense_layers : int
        3x3 layers per dense block.
    se_reduction : int
        Squeeze-and-excitation bottleneck ratio.
    spine_region : bool
        Coarse spine-region branch gating the masks, and the loss's focus on that region.
    dropout : float
        ``Dropout2d`` probability before the keypoint head (0 disables it).
    """

    widths: tuple[int, int, int] = (8, 24, 48)
    aspp_width: int = 64
    aspp_rates: tuple[int, ...] = (3, 6, 12, 18, 24)
    growth: int = 8
    dense_layers: int = 2
    se_reduction: int = 4
    spine_region: bool = True
    dropout: float = 0.1

    def __post_init__(self) -> None:
        self._check_fields(
            tuples=("widths", "aspp_rates"),
            positive_ints=(
                "widths",
                "aspp_width",
                "aspp_rates",
                "growth",
                "dense_layers",
                "se_reduction",
            ),
            flags=("spine_region",),
            probabilities=("dropout",),
        )
        if len(self.widths) != _PATHS:
            raise ValueError(f"DenseAsppConfig.widths must be {_PATHS} positive ints, got {self.widths}")

    @classmethod
    def paper(cls, **overrides: object) -> DenseAsppConfig:
        """Sizes of a DenseNet-scale backbone, as in Gao 2018 (which does not list its widths).

        Growth 16 with four layers per block and 32/64/128 channels, an ASPP of 256 channels
        with Gao's rates 3..24 and SE reduction 16 (Hu et al.'s default). Keyword arguments
        override any field, e.g. ``DenseAsppConfig.paper(in_channels=3)``.
        """
        base = cls(widths=(32, 64, 128), aspp_width=256, growth=16, dense_layers=4, se_reduction=16)
        return dataclasses.replace(base, **overrides)


class DenseSEBlock(nn.Module):
    """DenseNet block: each 3x3 layer sees all earlier outputs; a 1x1 transition and SE close it."""

    def __init__(self, c_in: int, c_out: int, layers: int, growth: int, se_reduction: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(conv_bn_relu(c_in + i * growth, growth) for i in range(layers))
        self.transition = conv_bn_relu(c_in + layers * growth, c_out, kernel=1)
        self.se = SqueezeExcite(c_out, se_reduction)

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return self.se(self.transition(torch.cat(features, dim=1)))


class _ResolutionPath(nn.Module):
    """One resolution's own path: its encoder stage plus the ASPP context -> features and mask logits."""

    def __init__(self, c_stage: int, c_context: int) -> None:
        super().__init__()
        self.body = conv_bn_relu(c_stage + c_context, c_stage)
        self.seg = nn.Conv2d(c_stage, 2, 1)

    def forward(self, stage: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        features = self.body(torch.cat([stage, upsample_like(context, stage)], dim=1))
        return features, self.seg(features)


def _dilated_spine(batch: Mapping[str, Tensor], margin_px: int) -> tuple[Tensor, Tensor]:
    """Spine-region target and where it is known, ``(B, 1, H, W)`` each.

    The region is the union of the known vertebra and disc masks dilated by ``margin_px``
    (a square neighbourhood); it is known wherever either mask channel is.
    """
    valid = batch["seg_valid"].float()
    known = valid.amax(dim=1, keepdim=True)
    foreground = (batch["seg"].float() * valid).amax(dim=1, keepdim=True)
    region = F.max_pool2d(foreground, 2 * margin_px + 1, stride=1, padding=margin_px) if margin_px else foreground
    return region, known


class DenseAsppLoss(nn.Module):
    """Gao 2018's objective on the pipeline's outputs: focused masks per path, spine region, keypoints.

    Terms (the parts dict holds each as a float):

    * ``heatmap``, ``offset``: :class:`~napari_ivd.models.losses.IvdLoss`'s focal heatmap and
      offset L1 terms (weight 1), for the added keypoint head;
    * ``seg_focus``: :class:`~napari_ivd.models.losses.MaskedSegLoss` (BCE + Dice) of the
      fine masks, counted only inside the true spine region (Gao's "ignore the loss outside
      the spine region"; everywhere when the config has no spine region);
    * ``seg_paths``: the same for each resolution path's own logits, averaged, times
      ``path_weight`` (each path trained as its own task);
    * ``spine_region``: BCE + Dice of the region branch at stride 4 against the union of
      the known masks dilated by ``region_margin_px`` (weight ``region_weight``);
    * ``seg``: the gated output mask's loss over every known pixel, logged only (weight 0):
      what the pipeline sees.

    Parameters
    ----------
    config : DenseAsppConfig
        Tells whether the model has the spine-region branch.
    path_weight, region_weight : float
        Weights of the per-path and region terms.
    region_margin_px : int
        Dilation of the masks into the spine region, in input pixels (mm at 1 mm spacing).

    Example
    -------
    >>> criterion = DenseAsppLoss(DenseAsppConfig())
    >>> total, parts = criterion(model(batch["image"]), batch)  # doctest: +SKIP
    """

    def __init__(
        self,
        config: DenseAsppConfig,
        path_weight: float = 0.5,
        region_weight: float = 1.0,
        region_margin_px: int = 8,
    ) -> None:
        super().__init__()
        self.spine_region = config.spine_region
        self.path_weight, self.region_weight, self.region_margin_px = path_weight, region_weight, region_margin_px
        self.keypoints = IvdLoss(seg_weight=0.0)
        self.seg_loss = MaskedSegLoss()

    def forward(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Total loss (a differentiable scalar) and its parts as floats.

        Raises
        ------
        ValueError
            When an output or batch key is missing or a shape disagrees with the contract.
        """
        needed = ["seg_fine", "seg_paths"] + (["spine_region"] if self.spine_region else [])
        missing = [k for k in needed if k not in outputs]
        if missing:
            raise ValueError(f"DenseAsppLoss needs outputs {missing}; pass DenseAsppNet's full output")
        total, parts = self.keypoints(outputs, batch)
        valid = batch["seg_valid"]
        terms: dict[str, Tensor] = {}
        if self.spine_region:
            region, known = _dilated_spine(batch, self.region_margin_px)
            valid = valid * region
            logits = outputs["spine_region"]
            coarse = [F.adaptive_max_pool2d(m, logits.shape[-2:]) for m in (region, known)]
            terms["spine_region"] = self.seg_loss(logits, *coarse)[0]
        terms["seg_focus"] = self.seg_loss(outputs["seg_fine"], batch["seg"], valid)[0]
        per_path = [self.seg_loss(p, batch["seg"], valid)[0] for p in outputs["seg_paths"].split(2, dim=1)]
        terms["seg_paths"] = torch.stack(per_path).mean()
        weights = {"seg_focus": 1.0, "seg_paths": self.path_weight, "spine_region": self.region_weight}
        total = total + sum(weights[name] * value for name, value in terms.items())
        parts.update({name: float(value.detach()) for name, value in terms.items()})
        parts["total"] = float(total.detach())
        return total, parts


@register("denseaspp", DenseAsppConfig, loss=DenseAsppLoss)
class DenseAsppNet(PipelineNet):
    """Gao 2018's network: dense SE backbone, dense ASPP, three resolution paths, spine-region gate.

    Inputs and outputs are :class:`~napari_ivd.models.conventions.PipelineNet`'s, with H
    and W multiples of 4, plus what :class:`DenseAsppLoss` reads (see :meth:`forward`);
    ``config`` defaults to ``DenseAsppConfig()``.
    """

    config: DenseAsppConfig

    def __init__(self, config: DenseAsppConfig | None = None) -> None:
        super().__init__(config or DenseAsppConfig())
        config = self.config
        w1, w2, w4 = config.widths
        blocks = {"layers": config.dense_layers, "growth": config.growth, "se_reduction": config.se_reduction}
        self.stage1 = nn.Sequential(conv_bn_relu(config.in_channels, w1), DenseSEBlock(w1, w1, **blocks))
        self.stage2 = nn.Sequential(conv_bn_relu(w1, w2, stride=2), DenseSEBlock(w2, w2, **blocks))
        self.stage4 = nn.Sequential(conv_bn_relu(w2, w4, stride=2), DenseSEBlock(w4, w4, **blocks))
        self.aspp = DenseASPP(w4, config.aspp_width, config.aspp_rates, growth=max(config.aspp_width // 2, 8))
        # The context the two finer paths read: the ASPP output squeezed to the finest width.
        self.context = conv_bn_relu(config.aspp_width, w1, kernel=1)
        self.path1 = _ResolutionPath(w1, w1)
        self.path2 = _ResolutionPath(w2, w1)
        self.path4 = _ResolutionPath(w4, config.aspp_width)
        self.region: nn.Module | None = None
        if config.spine_region:
            self.region = nn.Sequential(conv_bn_relu(config.aspp_width, w4), nn.Conv2d(w4, 1, 1))
        self.dropout = nn.Dropout2d(config.dropout)
        self.kp_body = conv_bn_relu(w2, w2)
        self.heatmap, self.offset = keypoint_convs(w2, config.num_labels)
        seg_layers = [self.path1.seg, self.path2.seg, self.path4.seg]
        init_weights(self, self.heatmap, self.offset, seg_layers)

    def forward(self, x: Tensor, seg_only: bool = False) -> dict[str, Tensor]:
        """The pipeline's outputs (``"seg"`` gated by the spine region), and those of :class:`DenseAsppLoss`.

        ``seg_only`` skips the keypoint head. Beyond the contract: ``"seg_fine"``
        ``(B, 2, H, W)`` the ungated mean of the paths, ``"seg_paths"`` ``(B, 6, H, W)`` each
        path's logits (full, 1/2, 1/4 resolution), and with the spine-region branch
        ``"spine_region"`` ``(B, 1, H/4, W/4)`` logits.
        """
        self.check_input(x, INPUT_MULTIPLE)
        s1 = self.stage1(x)
        s2 = self.stage2(s1)
        s4 = self.stage4(s2)
        aspp = self.aspp(s4)
        context = self.context(aspp)
        _, seg1 = self.path1(s1, context)
        f2, seg2 = self.path2(s2, context)
        _, seg4 = self.path4(s4, aspp)
        paths = [seg1, upsample_like(seg2, seg1), upsample_like(seg4, seg1)]
        fine = torch.stack(paths).mean(dim=0)
        out = {"seg_fine": fine, "seg_paths": torch.cat(paths, dim=1), "seg": fine}
        if self.region is not None:
            region = self.region(aspp)
            out.update(spine_region=region, seg=fine + F.logsigmoid(upsample_like(region, fine)))
        if not seg_only:
            kp = self.dropout(self.kp_body(f2))
            out.update(heatmap=self.heatmap(kp), offset=self.offset(kp))
        return out
