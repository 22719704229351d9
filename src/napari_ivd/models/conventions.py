"""Config checks, input check, base network and starting weights shared by every architecture.

Why one module: every architecture's config validates the same ``labels`` (canonical names,
unique, cranio-caudal) and the same kinds of fields, every network takes and returns the
tensors of docs/pipeline.md and refuses other inputs with the same message, and every
network starts its heads the same way (CenterNet's heatmap prior, near-zero offsets and
masks), so error messages and starting points stay identical across the registry and the
comparison in docs/models.md is about the architectures, not their plumbing.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from napari_ivd.anatomy import LUMBAR_LABELS, normalize_name, structure
from napari_ivd.errors import UnknownLevelError
from napari_ivd.models.registry import ModelConfig

__all__ = [
    "HEATMAP_INIT_BIAS",
    "ChannelKey",
    "LabelAxes",
    "PipelineConfig",
    "PipelineNet",
    "canonical_labels",
    "check_at_least",
    "check_flag",
    "check_positive_ints",
    "check_probability",
    "init_weights",
    "keypoint_axes",
]

log = logging.getLogger(__name__)

#: One channel of a per-label axis: (label, part), e.g. ("L4", 1) for L4's column offset.
ChannelKey = tuple[str, int]
#: Per-label axes of a state dict: weight name -> {dim: the channel key of each index along it}.
LabelAxes = dict[str, dict[int, tuple[ChannelKey, ...]]]

#: Starting bias of heatmap logits: sigmoid(-4) ~ 0.02, near the focal loss's prior (CenterNet).
HEATMAP_INIT_BIAS = -4.0


def canonical_labels(labels: Iterable[str], owner: str) -> tuple[str, ...]:
    """Canonical, unique, cranio-caudal structure names, or a ``ValueError`` naming ``owner``.

    Parameters
    ----------
    labels : iterable of str
        Loose spellings allowed (``"l4/l5"`` -> ``"L4-L5"``).
    owner : str
        Config class name for the message, e.g. ``"UNetConfig"``.

    Raises
    ------
    ValueError
        Unknown names, no names, duplicates or names out of cranio-caudal order.

    Example
    -------
    >>> canonical_labels(["l4", "L4/L5"], "UNetConfig")
    ('L4', 'L4-L5')
    """
    try:
        names = tuple(normalize_name(label) for label in labels)
    except (UnknownLevelError, TypeError) as exc:
        raise ValueError(f"{owner}.labels: {exc}") from exc
    if not names:
        raise ValueError(f"{owner}.labels is empty; give at least one structure name")
    orders = [structure(name).order for name in names]
    if orders != sorted(set(orders)):
        raise ValueError(f"{owner}.labels must be unique and cranio-caudal, got {list(names)}")
    return names


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_positive_ints(owner: str, **fields: int | tuple[int, ...]) -> None:
    """Raise a ``ValueError`` naming the field unless each value (or tuple item) is an int > 0.

    Example
    -------
    >>> check_positive_ints("UNetConfig", base_channels=16, depth=0)
    Traceback (most recent call last):
    ...
    ValueError: UNetConfig.depth must be a positive int (or a non-empty tuple of them), got 0
    """
    for name, value in fields.items():
        items = value if isinstance(value, tuple) else (value,)
        if not items or not all(_positive_int(v) for v in items):
            raise ValueError(f"{owner}.{name} must be a positive int (or a non-empty tuple of them), got {value!r}")


def check_probability(owner: str, name: str, value: object) -> None:
    """Raise a ``ValueError`` unless ``value`` is a number in [0, 1) (a dropout rate)."""
    if isinstance(value, bool) or not (isinstance(value, int | float) and 0.0 <= value < 1.0):
        raise ValueError(f"{owner}.{name} must be in [0, 1), got {value!r}")


def check_flag(owner: str, name: str, value: object) -> None:
    """Raise a ``ValueError`` unless ``value`` is ``True`` or ``False`` (not 0, 1 or a string)."""
    if not isinstance(value, bool):
        raise ValueError(f"{owner}.{name} must be true or false, got {value!r}")


def check_at_least(owner: str, name: str, value: object, minimum: int, *, integer: bool = True) -> None:
    """Raise a ``ValueError`` unless ``value`` is an int (``integer=False``: any number) >= ``minimum``.

    Example
    -------
    >>> check_at_least("ScarNetConfig", "keypoint_weight", -1.0, 0, integer=False)
    Traceback (most recent call last):
    ...
    ValueError: ScarNetConfig.keypoint_weight must be a number >= 0, got -1.0
    """
    kinds = int if integer else int | float
    if isinstance(value, bool) or not isinstance(value, kinds) or not value >= minimum:  # NaN fails too
        raise ValueError(f"{owner}.{name} must be {'an int' if integer else 'a number'} >= {minimum}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class PipelineConfig(ModelConfig):
    """Base of every architecture's frozen config: ``labels``, ``in_channels`` and the shared field checks.

    Why: every config starts with these two fields and validates fields of the same few
    kinds with the same messages; a subclass adds its own fields and, in ``__post_init__``,
    lists them by kind in one :meth:`_check_fields` call plus the rules of its own
    architecture. JSON round trip: :class:`~napari_ivd.models.registry.ModelConfig`.

    Parameters
    ----------
    labels : tuple of str
        Structure names predicted, one heatmap channel each, cranio-caudal (default: the 14
        lumbar labels T11 ... L5-S1). Loose spellings are canonicalised.
    in_channels : int
        Adjacent sagittal slices stacked as input channels (1 = the slice alone).

    Example
    -------
    >>> @dataclasses.dataclass(frozen=True)
    ... class TinyConfig(PipelineConfig):
    ...     width: int = 8
    ...     def __post_init__(self) -> None:
    ...         self._check_fields(positive_ints=("width",))
    >>> TinyConfig(labels=["l4", "L4/L5"]).num_labels
    2
    """

    labels: tuple[str, ...] = LUMBAR_LABELS
    in_channels: int = 1

    def __post_init__(self) -> None:
        self._check_fields()

    @property
    def num_labels(self) -> int:
        """K, the number of heatmap channels."""
        return len(self.labels)

    def _check_fields(
        self,
        *,
        tuples: Iterable[str] = (),
        positive_ints: Iterable[str] = (),
        flags: Iterable[str] = (),
        probabilities: Iterable[str] = (),
        min_ints: Mapping[str, int] | None = None,
        non_negative: Iterable[str] = (),
    ) -> None:
        """Canonicalise ``labels``, check ``in_channels``, store ``tuples`` fields as tuples, check the rest by kind.

        Parameters
        ----------
        tuples : iterable of str
            Fields given as sequences (JSON lists), stored as tuples so the config stays hashable.
        positive_ints, flags, probabilities : iterable of str
            Fields checked by :func:`check_positive_ints`, :func:`check_flag` and
            :func:`check_probability`.
        min_ints : mapping of str to int, optional
            Int fields and their smallest allowed value (:func:`check_at_least`).
        non_negative : iterable of str
            Number fields that must be >= 0 (loss weights).

        Raises
        ------
        ValueError
            Naming the config class, the field and the value.
        """
        owner = type(self).__name__
        object.__setattr__(self, "labels", canonical_labels(self.labels, owner))
        for name in tuples:
            object.__setattr__(self, name, tuple(getattr(self, name)))
        check_positive_ints(owner, **{name: getattr(self, name) for name in ("in_channels", *positive_ints)})
        for name, minimum in (min_ints or {}).items():
            check_at_least(owner, name, getattr(self, name), minimum)
        for name in non_negative:
            check_at_least(owner, name, getattr(self, name), 0, integer=False)
        for name in flags:
            check_flag(owner, name, getattr(self, name))
        for name in probabilities:
            check_probability(owner, name, getattr(self, name))


class PipelineNet(nn.Module):
    """Base of every registered network: its config and the input/output contract of docs/pipeline.md.

    Every architecture maps a batch of normalised sagittal slices to the same outputs, so
    inference, decoding and training treat them alike; subclasses build their layers and
    implement ``forward(x, seg_only=False)``, starting it with :meth:`check_input`.

    * Input ``x``: ``(B, in_channels, H, W)``, H and W multiples of the network's input
      multiple (its total down-sampling; inference pads slices with zeros at the
      bottom/right).
    * Output, a dict: ``"heatmap"`` ``(B, K, H/2, W/2)`` logits, one channel per label;
      ``"offset"`` ``(B, 2K, H/2, W/2)`` short-range offsets in output pixels (rows, cols per
      label); ``"seg"`` ``(B, 2, H, W)`` mask logits (vertebral body, disc); plus whatever the
      architecture's own loss reads (documented on its ``forward``).
    * ``seg_only=True`` returns ``"seg"`` (and no ``"heatmap"``/``"offset"``), skipping what
      only the keypoints need: what inference runs on the lateral slices.
    * :meth:`forward_features` returns feature maps that active learning pools into an
      embedding of a scan (what the model makes of it).

    Parameters
    ----------
    config : PipelineConfig
        The architecture's config; subclasses default it to their config class's defaults.

    Attributes
    ----------
    input_multiple : int
        Only on networks whose multiple depends on their config (U-Net, SpineOne, SCAR-Net):
        the model card records it and inference pads slices to it (to 8 for the others).

    Raises
    ------
    ValueError
        From ``forward`` (:meth:`check_input`) when ``x`` breaks the input contract.

    Example
    -------
    >>> import torch
    >>> from napari_ivd.models import build
    >>> net = build("unet").eval()  # any name in available(), default config: 14 lumbar labels
    >>> out = net(torch.zeros(1, 1, 64, 96))
    >>> tuple(out["heatmap"].shape), tuple(out["offset"].shape), tuple(out["seg"].shape)
    ((1, 14, 32, 48), (1, 28, 32, 48), (1, 2, 64, 96))
    """

    def __init__(self, config: PipelineConfig) -> None:
        super().__init__()
        self.config = config

    def forward_features(self, x: Tensor) -> tuple[Tensor, ...]:
        """What the network makes of ``x``: feature maps ``(B, C, h, w)`` to pool into an embedding.

        This default is the heatmap and mask probabilities (the outputs every network has);
        a network with a telling deep representation returns that instead, cheaper too.
        """
        out = self(x)
        return torch.sigmoid(out["heatmap"]), torch.sigmoid(out["seg"])

    def label_axes(self) -> LabelAxes:
        """Where the state dict holds per-label channels, for :func:`~napari_ivd.models.grow.grow_labels`.

        Dimension 0 of a weight is its output channels, dimension 1 its inputs. This default
        covers a ``heatmap`` and an ``offset`` 1x1 convolution (:func:`keypoint_axes`);
        networks with more per-label weights extend it.
        """
        return keypoint_axes(self.config.labels)

    def heatmap_heads(self) -> tuple[str, ...]:
        """The convolutions whose output channels are the labels' heatmaps (one per label), by state-dict prefix.

        :func:`~napari_ivd.models.grow.grow_labels` starts a new label's rows of these silent.
        """
        return ("heatmap",)

    def label_source(self, name: str, old_state: Mapping[str, Tensor]) -> str:
        """The weight of a smaller network that ``name`` grows from: ``name`` itself unless overridden."""
        return name

    def check_input(self, x: Tensor, multiple: int) -> None:
        """Refuse ``x`` unless it is ``(B, in_channels, H, W)`` with H and W multiples of ``multiple``.

        Why: a network down-sampling by ``multiple`` would otherwise meet odd sizes, and bilinear
        upsampling of ceil-sized maps misaligns them with the skip features by up to half a
        deep pixel.

        Raises
        ------
        ValueError
            Naming the network, the shape received and the fix.
        """
        name, in_channels = type(self).__name__, self.config.in_channels
        if x.ndim != 4 or x.shape[1] != in_channels:
            raise ValueError(f"{name} expects input (B, {in_channels}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % multiple or w % multiple:
            raise ValueError(
                f"{name} input rows and cols must be multiples of {multiple}, got {h}x{w}; "
                "pad with zeros at the bottom/right (docs/pipeline.md)"
            )


def keypoint_axes(labels: Iterable[str], prefix: str = "", heatmap: str = "heatmap") -> LabelAxes:
    """The label axes of a keypoint head's ``heatmap`` (one channel per label) and ``offset`` (rows, cols per label).

    Example
    -------
    >>> keypoint_axes(["L4"])["offset.weight"]
    {0: (('L4', 0), ('L4', 1))}
    """
    one = tuple((label, 0) for label in labels)
    two = tuple((label, part) for label, _ in one for part in (0, 1))
    return {
        f"{prefix}{heatmap}.weight": {0: one},
        f"{prefix}{heatmap}.bias": {0: one},
        f"{prefix}offset.weight": {0: two},
        f"{prefix}offset.bias": {0: two},
    }


def init_weights(model: nn.Module, heatmap: nn.Conv2d, offset: nn.Conv2d, seg: Iterable[nn.Conv2d]) -> None:
    """Kaiming-initialise every convolution, then give the output heads their starting point.

    The heatmap starts at ``sigmoid(HEATMAP_INIT_BIAS)`` (about 0.02, near the focal loss's
    background optimum, so early gradients come from the keypoints), offsets and mask logits
    start near zero; the same start as :class:`~napari_ivd.models.ivdnet.IvdNet`.

    Parameters
    ----------
    model : nn.Module
        The whole network (all its ``Conv2d`` / ``ConvTranspose2d`` layers are reset).
    heatmap, offset : nn.Conv2d
        The 1x1 output convolutions of the keypoint head.
    seg : iterable of nn.Conv2d
        Every convolution that emits mask logits.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    nn.init.normal_(heatmap.weight, std=0.01)
    nn.init.constant_(heatmap.bias, HEATMAP_INIT_BIAS)
    nn.init.normal_(offset.weight, std=0.001)
    for conv in seg:
        nn.init.normal_(conv.weight, std=0.01)
