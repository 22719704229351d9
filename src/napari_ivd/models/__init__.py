"""Networks of napari-ivd and their registry: build by name, save and load model folders.

Importing this package registers the built-in architectures (``"ivdnet"``), so
:func:`available` lists them and :func:`load_checkpoint` can rebuild them from a card;
:func:`find_model_dir` finds a model folder (or a bundled model by name) and
:func:`resolve_device` the device to run it on; a :class:`ModelCache` keeps
loaded models between predictions.
"""

from __future__ import annotations

from napari_ivd.models.cache import ModelCache
from napari_ivd.models.denseaspp import DenseAsppConfig, DenseAsppNet  # registers "denseaspp"
from napari_ivd.models.device import cuda_available, resolve_device, usable_cpus
from napari_ivd.models.hcanet import HcaNet, HcaNetConfig  # registers "hcanet"
from napari_ivd.models.hourglass import AttentionHourglass, HourglassConfig  # registers "hourglass"
from napari_ivd.models.ivdnet import IvdNet, IvdNetConfig  # importing registers "ivdnet"
from napari_ivd.models.lookup import BUNDLED_MODELS_DIR, DEFAULT_MODEL, bundled_model_names, find_model_dir
from napari_ivd.models.registry import (
    CARD_NAME,
    FORMAT_VERSION,
    TORCH_WEIGHT_SUFFIXES,
    WEIGHTS_NAME,
    ModelConfig,
    available,
    build,
    clean_state_dict,
    config_class,
    count_parameters,
    gflops_per_forward,
    import_torch_weights,
    load_checkpoint,
    read_card,
    register,
    save_checkpoint,
    to_device,
)
from napari_ivd.models.scarnet import ScarNet, ScarNetConfig  # registers "scarnet"
from napari_ivd.models.spineone import SpineOne, SpineOneConfig  # registers "spineone"
from napari_ivd.models.unet import UNet, UNetConfig  # registers "unet"

__all__ = [
    "BUNDLED_MODELS_DIR",
    "CARD_NAME",
    "DEFAULT_MODEL",
    "FORMAT_VERSION",
    "TORCH_WEIGHT_SUFFIXES",
    "WEIGHTS_NAME",
    "AttentionHourglass",
    "DenseAsppConfig",
    "DenseAsppNet",
    "HcaNet",
    "HcaNetConfig",
    "HourglassConfig",
    "IvdNet",
    "IvdNetConfig",
    "ModelCache",
    "ModelConfig",
    "ScarNet",
    "ScarNetConfig",
    "SpineOne",
    "SpineOneConfig",
    "UNet",
    "UNetConfig",
    "available",
    "build",
    "bundled_model_names",
    "clean_state_dict",
    "config_class",
    "count_parameters",
    "cuda_available",
    "find_model_dir",
    "gflops_per_forward",
    "import_torch_weights",
    "load_checkpoint",
    "read_card",
    "register",
    "resolve_device",
    "save_checkpoint",
    "to_device",
    "usable_cpus",
]
