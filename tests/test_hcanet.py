"""HCA-Net (M-LKA hourglasses + skeleton loss): merged predictions, its losses, decode.

The contract every architecture shares is tested in ``test_model_contract.py``.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from _arch_contract import (
    LABEL_STEP_PX,
    TINY,
    TWO_LABELS,
    assert_decodes_to_the_annotated_keypoints,
    keypoint_batch,
    paper_on_meta,
    seeded_single_thread,  # noqa: F401 (autouse fixture)
    train_on_keypoints,
)
from napari_ivd.models import HcaNet, HcaNetConfig, build, count_parameters, gflops_per_forward
from napari_ivd.models.decode import output_to_input_px
from napari_ivd.models.hcanet import HcaNetLoss, MultiScaleLKA
from napari_ivd.models.registry import loss_for
from napari_ivd.models.skeleton_loss import SkeletonLoss, soft_positions

TINY_CONFIG = TINY["hcanet"].config


@pytest.fixture(scope="module")
def trained() -> tuple[HcaNet, HcaNetLoss, dict, list[dict]]:
    """The tiny network after 60 Adam steps of its registered loss (skeleton loss on) on the keypoint batch."""
    return train_on_keypoints("hcanet")


def _peaked_logits(points_out: list[tuple[int, int]], shape: tuple[int, int] = (16, 12)) -> torch.Tensor:
    """(1, K, h, w) logits: -10 everywhere but +10 at one output pixel per channel."""
    logits = torch.full((1, len(points_out), *shape), -10.0)
    for k, (row, col) in enumerate(points_out):
        logits[0, k, row, col] = 10.0
    return logits


def _input_px(points_out: list[tuple[float, float]]) -> torch.Tensor:
    return torch.tensor([[[output_to_input_px(r), output_to_input_px(c)] for r, c in points_out]])


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------


def test_every_stack_predicts_and_the_merge_starts_as_their_mean():
    net = HcaNet(TINY_CONFIG).train()
    with torch.no_grad():
        out = net(torch.rand(2, 1, 64, 40))
    assert out["aux_heatmaps"].shape == (2, 2, 2, 32, 20)  # every stack's own prediction
    # The merge starts as the stacks' mean, so the merged map keeps the "no keypoint here" prior.
    assert torch.allclose(out["heatmap_values"], out["aux_heatmaps"].mean(dim=1), atol=1e-5)
    assert 0.005 < out["heatmap_values"].mean() < 0.05


def test_switching_attention_off_removes_exactly_the_multi_scale_lka_blocks():
    on, off = HcaNet(TINY_CONFIG), HcaNet(dataclasses.replace(TINY_CONFIG, attention=False))
    blocks = [m for m in on.modules() if isinstance(m, MultiScaleLKA)]
    assert len(blocks) == TINY_CONFIG.stacks  # one per HCA block
    assert not any(isinstance(m, MultiScaleLKA) for m in off.modules())
    assert count_parameters(on) - count_parameters(off) == sum(count_parameters(m) for m in blocks)


def test_paper_preset_has_the_papers_settings():
    cfg = HcaNetConfig.paper()
    assert (cfg.features, cfg.stacks, cfg.skeleton_temperature, cfg.skeleton_alpha) == (256, 2, 0.75, 0.8)
    assert count_parameters(paper_on_meta("hcanet")[0]) > 20 * count_parameters(HcaNet())


def test_default_preset_fits_the_cpu_training_budget():
    assert gflops_per_forward(HcaNet(), (1, 1, 256, 256)) <= 3.0


# --------------------------------------------------------------------------------------------
# Config and registry
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lka_dilations": (1, 0)}, "lka_dilations must be a positive int"),
        ({"skeleton_temperature": 0.0}, "temperature must be > 0"),
        ({"skeleton_samples": -1}, "samples must be an int >= 0"),
        ({"skeleton_weight": -1.0}, "skeleton_weight must be a number >= 0"),
        ({"skeleton_loss": "yes"}, "skeleton_loss must be true or false"),
    ],
)
def test_config_refuses_bad_values_naming_them(changes: dict, message: str):
    with pytest.raises(ValueError, match=message):
        HcaNetConfig(**changes)


def test_registry_builds_the_network_and_its_skeleton_aware_loss_by_name():
    assert isinstance(build("hcanet", TINY_CONFIG.to_dict()), HcaNet)
    loss = loss_for("hcanet", TINY_CONFIG)
    assert isinstance(loss, HcaNetLoss)
    assert [name for name, _ in loss.named_parameters()] == ["skeleton.log_alpha"]  # the learnable alpha
    assert list(loss_for("hcanet", HcaNetConfig(skeleton_loss=False)).parameters()) == []


# --------------------------------------------------------------------------------------------
# Skeleton loss
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("samples", [0, 4])
def test_prototypes_sit_on_a_sharp_heatmap_peak_whether_sampled_or_averaged(samples: int):
    positions = soft_positions(_peaked_logits([(3, 7), (12, 2)]), temperature=0.75, samples=samples)
    assert torch.allclose(positions, torch.tensor([[[3.0, 7.0], [12.0, 2.0]]]), atol=1e-3)


def test_sampled_prototypes_pass_gradients_to_the_heatmap():
    logits = torch.zeros(1, 1, 8, 8, requires_grad=True)
    soft_positions(logits, samples=4).sum().backward()
    assert logits.grad.abs().sum() > 0


def test_skeleton_loss_penalises_wrong_spacing_but_not_a_shifted_spine_in_its_pair_term():
    truth = [(4.0, 5.0), (9.0, 5.0), (14.0, 5.0)]
    loss = SkeletonLoss(samples=0)
    visible = torch.ones(1, 3)
    _, shifted = loss(_peaked_logits([(5, 6), (10, 6), (15, 6)], (18, 12)), _input_px(truth), visible)
    _, squeezed = loss(_peaked_logits([(6, 5), (9, 5), (12, 5)], (18, 12)), _input_px(truth), visible)
    assert shifted["skeleton_l2"] == pytest.approx(math.sqrt(2), abs=1e-3)
    assert shifted["skeleton_pd"] == pytest.approx(0.0, abs=1e-3)  # same shape, only displaced
    assert squeezed["skeleton_pd"] == pytest.approx((2 + 2 + 4) / 3, abs=1e-3)  # spacing 3 instead of 5


def test_skeleton_loss_ignores_labels_not_annotated_in_the_sample():
    logits = torch.randn(1, 3, 16, 12, requires_grad=True)
    keypoints = _input_px([(4.0, 5.0), (9.0, 5.0), (14.0, 5.0)])
    visible = torch.tensor([[1.0, 1.0, 0.0]])
    loss = SkeletonLoss(samples=0)
    base, _ = loss(logits, keypoints, visible)
    moved = keypoints.clone()
    moved[0, 2] = torch.tensor([math.nan, math.nan])
    assert torch.equal(loss(logits, moved, visible)[0], base)
    base.backward()
    assert torch.all(logits.grad[0, 2] == 0)
    assert logits.grad[0, :2].abs().sum() > 0


def test_pair_term_weight_is_learnt_without_collapsing_to_zero():
    loss = SkeletonLoss(samples=0, alpha=0.8)
    optimiser = torch.optim.SGD(loss.parameters(), lr=0.5)
    logits = _peaked_logits([(6, 5), (9, 5), (12, 5)], (18, 12))
    keypoints = _input_px([(4.0, 5.0), (9.0, 5.0), (14.0, 5.0)])
    for _ in range(200):
        total, parts = loss(logits, keypoints, torch.ones(1, 3))
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
    assert parts["skeleton_alpha"] == pytest.approx(1 / parts["skeleton_pd"], rel=0.05)  # alpha* = 1 / L_pd


# --------------------------------------------------------------------------------------------
# Training and decode
# --------------------------------------------------------------------------------------------


def test_registered_loss_with_skeleton_term_falls_on_a_synthetic_batch(trained):
    _, loss, _, history = trained
    first, last = history[0], history[-1]
    assert {"heatmap", "heatmap_aux", "offset", "seg", "skeleton", "skeleton_l2", "skeleton_pd", "total"} <= set(first)
    assert last["total"] < 0.5 * first["total"], (first, last)
    assert last["skeleton_l2"] < 0.5 * first["skeleton_l2"]
    assert last["skeleton_alpha"] != first["skeleton_alpha"]  # alpha is optimised with the network
    assert float(loss.skeleton.log_alpha.detach().exp()) == pytest.approx(last["skeleton_alpha"], rel=0.05)


def test_skeleton_loss_switched_off_leaves_the_stacked_heatmap_objective():
    cfg = HcaNetConfig(labels=TWO_LABELS, features=8, stacks=1, depth=2, skeleton_loss=False)
    batch = keypoint_batch()
    del batch["keypoints"]  # not needed without the skeleton term
    with torch.no_grad():
        _, parts = loss_for("hcanet", cfg)(HcaNet(cfg)(batch["image"]), batch)
    assert set(parts) == {"heatmap", "heatmap_aux", "offset", "seg", "seg_bce", "seg_dice", "total"}
    with pytest.raises(ValueError, match=r"batch\['keypoints'\]"):
        loss_for("hcanet", TINY_CONFIG)(HcaNet(TINY_CONFIG)(batch["image"]), batch)


def test_trained_outputs_decode_to_the_annotated_keypoints(trained):
    net, _, batch, _ = trained
    best = assert_decodes_to_the_annotated_keypoints(net, batch)
    assert best["L4-L5"].row - best["L4"].row == pytest.approx(LABEL_STEP_PX, abs=2.0)
