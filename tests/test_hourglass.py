"""Attention stacked hourglass (Azad 2021): intermediate supervision, multi-level attention, its loss.

The contract every architecture shares is tested in ``test_model_contract.py``.
"""

from __future__ import annotations

import pytest
import torch

from _arch_contract import (
    TINY,
    TWO_LABELS,
    assert_decodes_to_the_annotated_keypoints,
    keypoint_batch,
    paper_on_meta,
    seeded_single_thread,  # noqa: F401 (autouse fixture)
    train_on_keypoints,
)
from napari_ivd.models import AttentionHourglass, HourglassConfig, build, count_parameters, gflops_per_forward
from napari_ivd.models.hourglass import HEATMAP_VALUE_EPS, StackedHeatmapLoss
from napari_ivd.models.registry import loss_for

TINY_CONFIG = TINY["hourglass"].config


@pytest.fixture(scope="module")
def trained() -> tuple[AttentionHourglass, StackedHeatmapLoss, dict, list[dict]]:
    """The tiny network after 60 Adam steps of its registered loss on the synthetic keypoint batch."""
    return train_on_keypoints("hourglass")


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------


def test_every_stack_but_the_last_gives_intermediate_heatmaps_that_start_at_the_prior():
    net = AttentionHourglass(TINY_CONFIG).train()
    with torch.no_grad():
        out = net(torch.rand(2, 1, 64, 40))
    assert out["aux_heatmaps"].shape == (2, 1, 2, 32, 20)  # 2 stacks: one intermediate prediction
    # linear heatmaps with the CenterNet-style prior: "almost surely no keypoint here"
    assert 0.005 < out["aux_heatmaps"].mean() < 0.05
    assert 0.005 < out["heatmap_values"].mean() < 0.05
    assert torch.allclose(torch.sigmoid(out["heatmap"]), out["heatmap_values"].clamp(HEATMAP_VALUE_EPS, 1), atol=1e-5)


def test_switching_attention_off_removes_only_the_attention_block():
    with_attention = AttentionHourglass(TINY_CONFIG)
    without = AttentionHourglass(HourglassConfig(labels=TWO_LABELS, features=16, depth=3, attention=False))
    extra = {n.split(".")[0] for n in with_attention.state_dict()} - {n.split(".")[0] for n in without.state_dict()}
    assert extra == {"attention"}
    assert count_parameters(with_attention) > count_parameters(without)


def test_single_stack_has_no_intermediate_heatmaps():
    net = AttentionHourglass(HourglassConfig(labels=TWO_LABELS, features=8, stacks=1, depth=2)).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 1, 32, 32))
    assert set(out) == {"heatmap", "heatmap_values", "offset", "seg"}


def test_paper_preset_has_the_papers_sizes():
    cfg = HourglassConfig.paper()
    assert (cfg.features, cfg.stacks, cfg.depth, cfg.attention) == (256, 2, 4, True)
    assert count_parameters(paper_on_meta("hourglass")[0]) > 20 * count_parameters(AttentionHourglass())


def test_default_preset_fits_the_cpu_training_budget():
    assert gflops_per_forward(AttentionHourglass(), (1, 1, 256, 256)) <= 3.0


# --------------------------------------------------------------------------------------------
# Config and registry
# --------------------------------------------------------------------------------------------


def test_config_refuses_odd_features_and_no_stacks():
    with pytest.raises(ValueError, match="features must be even"):
        HourglassConfig(features=15)
    with pytest.raises(ValueError, match="stacks must be a positive int"):
        HourglassConfig(stacks=0)


def test_registry_builds_the_network_and_its_stacked_mse_loss_by_name():
    assert isinstance(build("hourglass", TINY_CONFIG.to_dict()), AttentionHourglass)
    assert isinstance(loss_for("hourglass", TINY_CONFIG), StackedHeatmapLoss)


# --------------------------------------------------------------------------------------------
# Loss and decode
# --------------------------------------------------------------------------------------------


def test_registered_loss_supervises_every_stack_and_falls_on_a_synthetic_batch(trained):
    *_, history = trained
    first, last = history[0], history[-1]
    assert set(first) == {"heatmap", "heatmap_aux", "offset", "seg", "seg_bce", "seg_dice", "total"}
    assert last["total"] < 0.5 * first["total"], (first, last)
    assert last["heatmap"] < 0.5 * first["heatmap"]
    assert last["heatmap_aux"] < 0.5 * first["heatmap_aux"]  # intermediate supervision


def test_heatmap_mse_ignores_labels_not_visible_in_the_sample_in_every_stack():
    batch = keypoint_batch()
    n, k, h, w = batch["heatmap"].shape
    out = {
        "heatmap_values": torch.randn(n, k, h, w, requires_grad=True),
        "aux_heatmaps": torch.randn(n, 1, k, h, w, requires_grad=True),
        "offset": torch.randn(n, 2 * k, h, w),
        "seg": torch.randn(n, 2, 2 * h, 2 * w),
    }
    loss = StackedHeatmapLoss()
    base, _ = loss(out, batch)
    changed = dict(batch, heatmap=batch["heatmap"].clone())
    changed["heatmap"][-1, -1] = torch.rand(h, w)  # the label not annotated in the last sample
    assert torch.equal(loss(out, changed)[0], base)
    base.backward()
    assert torch.all(out["heatmap_values"].grad[-1, -1] == 0) and torch.all(out["aux_heatmaps"].grad[-1, :, -1] == 0)
    assert out["heatmap_values"].grad[-1, 0].abs().sum() > 0 and out["aux_heatmaps"].grad[-1, :, 0].abs().sum() > 0


def test_trained_outputs_decode_to_the_annotated_keypoints(trained):
    net, _, batch, _ = trained
    assert_decodes_to_the_annotated_keypoints(net, batch)
