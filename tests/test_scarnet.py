"""SCAR-Net: a segmentation path and a keypoint path joined by cross attention and keypoint-guided fusion.

The contract every architecture shares is tested in ``test_model_contract.py``.
"""

from __future__ import annotations

import pytest
import torch

from _arch_contract import (
    TINY,
    TWO_LABELS,
    blob_batch,
    paper_on_meta,
    seeded_single_thread,  # noqa: F401 (autouse fixture)
    train_steps,
)
from napari_ivd.models import ScarNet, ScarNetConfig, build, registry
from napari_ivd.models.ivdnet import PositionAttention
from napari_ivd.models.losses import IvdLoss
from napari_ivd.models.scarnet import GuidedPositionAttention, MultiChannelCrossAttention

TINY_CONFIG = TINY["scarnet"].config


def test_default_strides_by_16_and_paper_preset_has_xception_paths_and_a_128_channel_7x7_dynamic_kernel():
    assert build("scarnet").input_multiple == 16
    paper, _ = paper_on_meta("scarnet")
    alpha = paper.adaptive.adapter(torch.empty(2, 256, 4, 6, device="meta"))
    assert len(paper.seg_encoder.middle) == 16 and len(paper.rec_encoder.middle) == 16
    assert paper.seg_encoder.aspp.project[0].out_channels == 256
    assert tuple(alpha.shape) == (2, 128, 7, 7)  # the paper's alpha in R^{7x7x128}, per image


def test_masks_follow_the_detected_keypoints_only_through_the_adaptive_transformer():
    x = torch.rand(1, 1, 32, 32)
    for attention in (True, False):
        net = ScarNet(ScarNetConfig(**{**TINY_CONFIG.to_dict(), "attention": attention})).eval()
        with torch.no_grad():
            if attention:
                net.adaptive.attention.gamma.fill_(1.0)  # as after some training; it starts at 0
            before = net(x)["seg"]
            net.heatmap.bias.fill_(4.0)  # the keypoint path now "detects" keypoints everywhere
            after = net(x)["seg"]
        assert torch.equal(before, after) != attention


def test_guided_attention_is_pam_without_guidance_and_follows_context_and_bias():
    torch.manual_seed(1)
    guided, plain = GuidedPositionAttention(8), PositionAttention(8)
    with torch.no_grad():
        guided.gamma.fill_(1.0)
    plain.load_state_dict(guided.state_dict())
    x, context = torch.randn(2, 8, 4, 5), torch.randn(2, 8, 3, 3)
    assert torch.allclose(guided(x), plain(x), atol=1e-6)
    assert guided(x, context=context).shape == x.shape
    bias = torch.zeros(2, 1, 4, 5)
    bias[:, :, 2, 3] = 1e4  # every query attends to position (2, 3) only
    expected = x + guided.value(x)[:, :, 2:3, 3:4]
    assert torch.allclose(guided(x, key_bias=bias), expected, atol=1e-5)


def test_cross_attention_mixes_recognition_features_into_the_segmentation_features():
    mcca = MultiChannelCrossAttention(8).eval()
    with torch.no_grad():
        mcca.inter.gamma.fill_(1.0)
        seg, rec = torch.randn(1, 8, 4, 4), torch.randn(1, 8, 4, 4)
        assert not torch.allclose(mcca(seg, rec), mcca(seg, 2 * rec))


def test_twenty_steps_more_than_halve_the_mixed_supervised_loss():
    config = ScarNetConfig(labels=TWO_LABELS, keypoint_weight=2.0)
    loss = registry.loss_for("scarnet", config)
    assert isinstance(loss, IvdLoss) and loss.heatmap_weight == loss.offset_weight == 2.0
    history = train_steps("scarnet", ScarNetConfig(labels=TWO_LABELS))
    assert history[-1]["total"] < 0.5 * history[0]["total"], (history[0], history[-1])
    assert history[-1]["heatmap"] < history[0]["heatmap"]


def test_points_only_scans_teach_the_keypoint_path_and_leave_the_mask_head_alone():
    net = ScarNet(TINY_CONFIG).train()
    batch = blob_batch()
    batch["seg_valid"].zero_()  # weakly annotated: keypoints, no masks
    total, parts = registry.loss_for("scarnet", TINY_CONFIG)(net(batch["image"]), batch)
    total.backward()
    assert parts["seg"] == 0.0 and parts["heatmap"] > 0
    assert net.seg.weight.grad.abs().sum() == 0 and net.heatmap.weight.grad.abs().sum() > 0


def test_scarnet_config_refuses_an_unreachable_output_stride_and_a_negative_keypoint_weight():
    with pytest.raises(ValueError, match=r"reach strides \[4, 8\]; output_stride 16"):
        ScarNetConfig(block_widths=(8, 8))
    with pytest.raises(ValueError, match="keypoint_weight must be a number >= 0"):
        ScarNetConfig(keypoint_weight=-1.0)
