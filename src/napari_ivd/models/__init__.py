"""Networks of napari-ivd and their registry: build by name, save and load model folders.

Importing this package registers the built-in architectures (``"ivdnet"``), so
:func:`available` lists them and :func:`load_checkpoint` can rebuild them from a card.
"""

from __future__ import annotations

from napari_ivd.models.ivdnet import IvdNet, IvdNetConfig  # importing registers "ivdnet"
from napari_ivd.models.registry import (
    CARD_NAME,
    FORMAT_VERSION,
    WEIGHTS_NAME,
    ModelConfig,
    available,
    build,
    clean_state_dict,
    config_class,
    count_parameters,
    gflops_per_forward,
    load_checkpoint,
    read_card,
    register,
    save_checkpoint,
)

__all__ = [
    "CARD_NAME",
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "IvdNet",
    "IvdNetConfig",
    "ModelConfig",
    "available",
    "build",
    "clean_state_dict",
    "config_class",
    "count_parameters",
    "gflops_per_forward",
    "load_checkpoint",
    "read_card",
    "register",
    "save_checkpoint",
]
