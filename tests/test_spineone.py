"""SpineOne: disc/vertebra substreams with dual attention, and its objective association.

The contract every architecture shares is tested in ``test_model_contract.py``.
"""

from __future__ import annotations

import pytest
import torch

from _arch_contract import (
    TWO_LABELS,
    blob_batch,
    paper_on_meta,
    seeded_single_thread,  # noqa: F401 (autouse fixture)
    train_steps,
)
from napari_ivd.models import SpineOne, SpineOneConfig, build, registry
from napari_ivd.models.losses import IvdLoss
from napari_ivd.models.spineone import SpineOneLoss


def test_default_strides_by_16_and_paper_preset_is_deeplabv3plus_resnet50_with_attention_at_stride_4():
    assert build("spineone").input_multiple == 16
    paper, _ = paper_on_meta("spineone")
    assert paper.encoder.channels == [256, 512, 1024, 2048]  # bottleneck stages of ResNet-50
    assert [len(stage) for stage in paper.encoder.stages] == [3, 4, 6, 3]
    assert paper.encoder.stages[3][0].body[1][0].dilation == (2, 2)  # output stride 16: dilated, not strided
    assert paper.streams["disc"].attention.pam.value.in_channels == 64  # the paper's C = 64


def test_disc_and_vertebra_streams_fill_their_own_labels_channels_in_label_order():
    config = SpineOneConfig(labels=("L3", "L3-L4", "L4"), attention=False)
    net = SpineOne(config).eval()
    assert {kind: s.heatmap.out_channels for kind, s in net.streams.items()} == {"disc": 1, "vertebra": 2}
    with torch.no_grad():
        net.streams["disc"].heatmap.bias.fill_(5.0)
        net.streams["disc"].offset.bias.fill_(7.0)
        out = net(torch.rand(1, 1, 32, 32))
    channel_mean = torch.sigmoid(out["heatmap"]).mean(dim=(0, 2, 3))
    assert channel_mean[1] > 0.9 and channel_mean[0] < 0.1 and channel_mean[2] < 0.1
    offset_mean = out["offset"].mean(dim=(0, 2, 3))
    assert torch.allclose(offset_mean[2:4], torch.full((2,), 7.0), atol=0.5)
    assert offset_mean[[0, 1, 4, 5]].abs().max() < 0.5
    only_vertebrae = SpineOne(SpineOneConfig(labels=("L3", "L4")))
    assert list(only_vertebrae.streams) == ["vertebra"]


def test_twenty_steps_more_than_halve_the_loss_and_objective_association_starts_on_its_step():
    config = SpineOneConfig(labels=TWO_LABELS, oa_start_step=10)
    assert isinstance(registry.loss_for("spineone", config), SpineOneLoss)
    history = train_steps("spineone", config)
    assert [parts["oa"] for parts in history] == [0.0] * 10 + [1.0] * 10
    assert history[-1]["total"] < 0.5 * history[0]["total"], (history[0], history[-1])
    assert history[-1]["heatmap"] < history[0]["heatmap"]


def _outputs_like(batch: dict) -> dict:
    return {
        "heatmap": torch.randn_like(batch["heatmap"]),
        "offset": torch.randn_like(batch["offset"]),
        "seg": torch.randn_like(batch["seg"]),
    }


def test_before_its_start_step_the_loss_is_ivdloss_and_calls_without_gradient_do_not_count():
    batch = blob_batch()
    outputs = _outputs_like(batch)
    loss = SpineOneLoss(SpineOneConfig(labels=TWO_LABELS, oa_start_step=1))
    with torch.no_grad():  # a validation pass is not a training step
        loss(outputs, batch)
    total, parts = loss(outputs, batch)
    assert torch.equal(total, IvdLoss()(outputs, batch)[0]) and parts["oa"] == 0.0
    associated, parts = loss(outputs, batch)
    assert parts["oa"] == 1.0 and associated > total  # offset errors weighted by 1..2
    exact = {**outputs, "offset": batch["offset"].clone()}
    assert loss(exact, batch)[1]["offset"] == 0.0  # weighting both sides keeps the optimum at the target


def test_association_weights_offsets_most_where_the_heatmap_is_most_wrong():
    batch = blob_batch(n=1)
    target, visible = batch["heatmap"], batch["visible"].clone()
    logits = torch.where(target >= target.amax(dim=(2, 3), keepdim=True), 6.0, -6.0)  # confident and right
    row, col = 13, 12  # inside label 0's offset disk, next to its peak
    assert batch["offset_mask"][0, 0, row, col] == 1
    logits[0, 0, row, col] = 6.0  # confidently wrong here
    visible[0, 1] = 0.0
    weight = SpineOneLoss(SpineOneConfig(labels=TWO_LABELS)).association_weight(logits, target, visible)
    assert weight.shape == target.shape and weight.min() >= 1.0 and weight.max() <= 2.0
    assert weight[0, 0, row, col] == 2.0 and weight[0, 0].flatten().topk(2).values[1] < 1.5
    assert torch.all(weight[0, 1] == 1.0)  # an unannotated label has no gradient: plain L1


def test_optional_degeneration_head_needs_grades_and_learns_from_them():
    config = SpineOneConfig(labels=TWO_LABELS, degeneration=True, oa_start_step=0)
    net, loss = SpineOne(config), SpineOneLoss(config)
    batch = blob_batch()
    out = net(batch["image"])
    assert out["degeneration"].shape == out["heatmap"].shape
    with pytest.raises(ValueError, match=r"batch\['degenerative'\].*degeneration=False"):
        loss(out, batch)
    batch["degenerative"] = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    total, parts = loss(out, batch)
    total.backward()
    assert parts["degeneration"] > 0 and parts["oa"] == 1.0
    assert net.streams["vertebra"].degeneration.weight.grad.abs().sum() > 0


def test_spineone_config_refuses_a_decoder_stride_it_cannot_reach_and_a_negative_start_step():
    with pytest.raises(ValueError, match=r"strides \[4, 8, 16, 16\].*decoder_stride \(16\)"):
        SpineOneConfig(decoder_stride=16)
    with pytest.raises(ValueError, match="oa_start_step must be an int >= 0"):
        SpineOneConfig(oa_start_step=-1)
