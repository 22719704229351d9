"""The plain U-Net baseline: Ronneberger's sizes, the default objective, its config rules.

The contract every architecture shares is tested in ``test_model_contract.py``.
"""

from __future__ import annotations

import pytest

from _arch_contract import (
    TINY,
    TWO_LABELS,
    paper_on_meta,
    seeded_single_thread,  # noqa: F401 (autouse fixture)
    train_steps,
)
from napari_ivd.models import build, registry
from napari_ivd.models.losses import IvdLoss
from napari_ivd.models.unet import UNetConfig


def test_default_unet_is_the_small_baseline_and_paper_preset_is_ronnebergers():
    default, (paper, _) = build("unet"), paper_on_meta("unet")
    assert default.input_multiple == 8 and paper.input_multiple == 16
    assert paper.encoder[-1][1][0].out_channels == 1024  # 64 ... 1024 channels


def test_twenty_steps_of_the_default_loss_more_than_halve_it():
    assert isinstance(registry.loss_for("unet", TINY["unet"].config), IvdLoss)  # no paper-specific objective
    history = train_steps("unet", UNetConfig(labels=TWO_LABELS, base_channels=8))
    assert history[-1]["total"] < 0.5 * history[0]["total"], (history[0], history[-1])
    assert history[-1]["heatmap"] < history[0]["heatmap"]


def test_unet_config_refuses_a_depth_without_a_stride_2_stage_and_empty_stages():
    with pytest.raises(ValueError, match="depth must be an int >= 2"):
        UNetConfig(depth=1)
    with pytest.raises(ValueError, match="base_channels must be a positive int"):
        UNetConfig(base_channels=0)
