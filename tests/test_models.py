"""IvdNet, its losses and the model registry/checkpoint folders (docs/pipeline.md contract)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

from _arch_contract import (
    INPUT_SPEC,
    TINY,
    TWO_LABELS,
    blob_batch,
    saved_tiny,
    seeded_single_thread,  # noqa: F401 (autouse fixture)
    train,
)
from napari_ivd.errors import CheckpointError, IvdError
from napari_ivd.models import (
    CARD_NAME,
    WEIGHTS_NAME,
    IvdNet,
    IvdNetConfig,
    available,
    build,
    load_checkpoint,
    read_card,
    save_checkpoint,
    usable_cpus,
)
from napari_ivd.models.ivdnet import DEFAULT_LABELS, PositionAttention
from napari_ivd.models.losses import HeatmapFocalLoss, IvdLoss, MaskedSegLoss, OffsetL1Loss

TINY_CONFIG = TINY["ivdnet"].config


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------


def test_default_model_predicts_the_lumbar_labels_in_cranio_caudal_order():
    assert DEFAULT_LABELS == (
        "T11", "T11-T12", "T12", "T12-L1", "L1", "L1-L2", "L2", "L2-L3",
        "L3", "L3-L4", "L4", "L4-L5", "L5", "L5-S1",
    )  # fmt: skip
    assert IvdNetConfig().labels == DEFAULT_LABELS


def test_paper_preset_is_wider_and_has_gaos_five_aspp_rates():
    paper = IvdNetConfig.paper()
    assert paper.widths[-1] > IvdNetConfig().widths[-1] and paper.aspp_rates == (3, 6, 12, 18, 24)


def test_pooled_position_attention_keeps_odd_maps_and_starts_as_the_identity():
    attention = PositionAttention(16, pool=2)
    x = torch.randn(2, 16, 7, 5)  # odd sizes: the pooled keys cover the last row/column too
    assert torch.equal(attention(x), x)  # gamma starts at 0
    with torch.no_grad():
        attention.gamma.fill_(1.0)
    mixed = attention(x)
    assert mixed.shape == x.shape and not torch.allclose(mixed, x)


def test_subpixel_mask_logits_differ_within_each_stride_2_pixel():
    torch.manual_seed(0)
    net = IvdNet(TINY_CONFIG).eval()
    seg = net(torch.randn(1, 1, 32, 24))["seg"]
    assert seg.shape == (1, 2, 32, 24)
    # bilinear upsampling would tie the four sub-pixels to their neighbours; the pixel shuffle
    # gives each its own learned logit, so no 2x2 block is an interpolation of the others
    blocks = seg.unfold(2, 2, 2).unfold(3, 2, 2).flatten(-2)
    assert (blocks.std(-1) > 0).all()


def test_unknown_architecture_name_lists_the_valid_ones():
    assert "ivdnet" in available()
    with pytest.raises(ValueError, match=r"unknown architecture 'hourglass9'; available: .*ivdnet"):
        build("hourglass9")
    assert isinstance(build("ivdnet", TINY_CONFIG.to_dict()), IvdNet)


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def test_thirty_adam_steps_on_a_synthetic_blob_more_than_halve_the_loss():
    batch = blob_batch()
    net = IvdNet(IvdNetConfig(labels=TWO_LABELS, widths=(8, 16, 16, 16), aspp_rates=(2, 4, 8)))
    history = train(net, IvdLoss(), batch, steps=30)
    assert set(history[0]) == {"heatmap", "offset", "seg", "seg_bce", "seg_dice", "total"}
    assert history[-1]["total"] < 0.5 * history[0]["total"], (history[0], history[-1])
    assert history[-1]["heatmap"] < history[0]["heatmap"]


def test_heatmap_loss_ignores_labels_not_visible_in_the_sample():
    logits = torch.randn(2, 2, 16, 16, requires_grad=True)
    target = blob_batch(size=32)["heatmap"]
    visible = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    loss = HeatmapFocalLoss()
    base = loss(logits, target, visible)
    changed = target.clone()
    changed[0, 1] = torch.rand(16, 16)  # sample 0 does not annotate label 1
    assert torch.equal(loss(logits, changed, visible), base)
    base.backward()
    assert torch.all(logits.grad[0, 1] == 0)
    assert logits.grad[1, 1].abs().sum() > 0


def test_heatmap_loss_treats_a_sub_pixel_peak_as_the_positive():
    target = torch.zeros(1, 1, 8, 8)
    target[0, 0, 3, 4] = 0.9  # Gaussian centred between pixels: no exact 1
    confident = torch.full((1, 1, 8, 8), -6.0)
    confident[0, 0, 3, 4] = 6.0
    loss = HeatmapFocalLoss()
    assert loss(confident, target, torch.ones(1, 1)) < 0.01 < loss(-confident, target, torch.ones(1, 1))


def test_offset_loss_ignores_pixels_outside_the_keypoint_radius_even_nan():
    b = blob_batch(size=32)
    pred = torch.randn_like(b["offset"])
    loss = OffsetL1Loss()
    base = loss(pred, b["offset"], b["offset_mask"])
    changed = b["offset"].clone()
    outside = b["offset_mask"].repeat_interleave(2, dim=1) == 0
    changed[outside] = float("nan")
    assert torch.equal(loss(pred, changed, b["offset_mask"]), base)
    exact = b["offset"].clone()
    assert loss(exact, b["offset"], b["offset_mask"]) == 0


def test_combined_loss_ignores_offsets_of_invisible_labels():
    b = blob_batch(size=32)
    b["visible"][0, 1] = 0
    out = {
        "heatmap": torch.randn_like(b["heatmap"]),
        "offset": torch.randn_like(b["offset"]),
        "seg": torch.randn_like(b["seg"]),
    }
    total, _ = IvdLoss()(out, b)
    b["offset"][0, 2:4] += 100.0
    assert torch.equal(IvdLoss()(out, b)[0], total)


def test_seg_loss_ignores_invalid_pixels_and_a_channel_without_ground_truth():
    b = blob_batch(size=32)
    logits = torch.randn_like(b["seg"])
    valid = b["seg_valid"].clone()
    valid[:, :, :, 16:] = 0  # right half unknown
    valid[:, 1] = 0  # no disc masks at all
    loss = MaskedSegLoss()
    base, bce, dice = loss(logits, b["seg"], valid)
    changed = b["seg"].clone()
    changed[:, :, :, 16:] = 1 - changed[:, :, :, 16:]
    changed[:, 1] = 1.0
    assert torch.equal(loss(logits, changed, valid)[0], base)
    # The empty disc channel adds 0 and does not dilute the vertebra channel's loss.
    only_vertebra = loss(logits[:, :1], b["seg"][:, :1], valid[:, :1])[0]
    assert torch.allclose(base, only_vertebra)
    assert bce > 0 and dice > 0


def test_combined_loss_names_missing_batch_keys():
    b = blob_batch(size=32)
    del b["seg_valid"]
    out = {"heatmap": b["heatmap"], "offset": b["offset"], "seg": b["seg"]}
    with pytest.raises(ValueError, match="seg_valid"):
        IvdLoss()(out, b)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def _trained_tiny(tmp_path: Path, model: nn.Module | None = None) -> tuple[Path, IvdNet]:
    return saved_tiny("ivdnet", tmp_path / "tiny", model)


def _edit_card(folder: Path, **changes: object) -> None:
    card = json.loads((folder / CARD_NAME).read_text())
    card.update(changes)
    (folder / CARD_NAME).write_text(json.dumps(card))


def test_ddp_and_compile_prefixes_are_stripped_so_any_run_loads_plainly(tmp_path: Path):
    class Compiled(nn.Module):  # what torch.compile's wrapper looks like to state_dict()
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self._orig_mod = inner

    class Distributed(nn.Module):  # likewise DistributedDataParallel
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.module = inner

    inner = IvdNet(TINY_CONFIG)
    assert next(iter(Distributed(Compiled(inner)).state_dict())).startswith("module._orig_mod.")
    folder, _ = _trained_tiny(tmp_path, model=Distributed(Compiled(inner)))
    with safe_open(str(folder / WEIGHTS_NAME), framework="pt") as f:
        keys = list(f.keys())
    assert set(keys) == set(inner.state_dict())
    loaded, _ = load_checkpoint(folder)
    assert torch.equal(loaded.stem[0][0].weight, inner.stem[0][0].weight)


def test_a_card_written_before_a_config_field_existed_rebuilds_the_network_it_was_trained_as(tmp_path: Path):
    legacy = dataclasses.replace(TINY_CONFIG, attention_pool=1, subpixel_seg=False)
    net = IvdNet(legacy)
    folder = save_checkpoint(tmp_path / "old", net, "ivdnet", legacy, labels=legacy.labels, input_spec=INPUT_SPEC)
    card = json.loads((folder / CARD_NAME).read_text())
    _edit_card(folder, config={k: v for k, v in card["config"].items() if k not in ("attention_pool", "subpixel_seg")})
    loaded, _ = load_checkpoint(folder)  # strict: the bilinear mask head's weights fit only the old network
    assert (loaded.config.attention_pool, loaded.config.subpixel_seg) == (1, False)
    assert torch.equal(loaded.seg.weight, net.seg.weight)


def test_corrupted_weights_fail_the_sha256_check(tmp_path: Path):
    folder, _ = _trained_tiny(tmp_path)
    data = bytearray((folder / WEIGHTS_NAME).read_bytes())
    data[-1] ^= 0xFF
    (folder / WEIGHTS_NAME).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"tiny.*does not match its card: sha256.*copy the folder again"):
        load_checkpoint(folder)


def test_folder_without_card_is_reported_with_folder_and_fix(tmp_path: Path):
    folder, _ = _trained_tiny(tmp_path)
    (folder / CARD_NAME).unlink()
    with pytest.raises(CheckpointError, match=r"tiny has no card\.json.*copy the whole folder again"):
        load_checkpoint(folder)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")


def test_card_that_is_not_json_or_from_the_future_is_refused(tmp_path: Path):
    folder, _ = _trained_tiny(tmp_path)
    _edit_card(folder, format_version=2)
    with pytest.raises(CheckpointError, match=r"format_version 2 is not supported.*update napari-ivd"):
        load_checkpoint(folder)
    (folder / CARD_NAME).write_text("{not json")
    with pytest.raises(CheckpointError, match=r"card\.json is not readable JSON"):
        load_checkpoint(folder)


def test_a_card_whose_parent_names_no_model_is_refused_with_the_fix(tmp_path: Path):
    """A hand-written ``parent`` would crash the model list; the card is refused with what to do."""
    folder, _ = _trained_tiny(tmp_path)
    _edit_card(folder, parent="ivdnet-lumbar (bundled starter)")
    with pytest.raises(CheckpointError, match=r"'parent' must be an object naming the model.*remove or restore"):
        read_card(folder)
    _edit_card(folder, parent={"model": "ivdnet-lumbar", "stored": False})
    assert read_card(folder)["parent"]["model"] == "ivdnet-lumbar"


def test_weights_that_do_not_fit_the_card_config_are_refused_listing_the_shapes(tmp_path: Path):
    folder, _ = _trained_tiny(tmp_path)
    _edit_card(folder, config=TINY_CONFIG.to_dict() | {"widths": [8, 8, 8, 16]})
    with pytest.raises(CheckpointError, match=r"does not fit 'ivdnet'.*wrong shape.*re-export") as info:
        load_checkpoint(folder)
    assert isinstance(info.value, IvdError)  # the CLI and widgets show it as a message


def test_weights_file_that_is_not_safetensors_is_refused_without_unpickling(tmp_path: Path):
    folder, _ = _trained_tiny(tmp_path)
    fake = b"\x80\x04\x95pickled torch.save output"
    (folder / WEIGHTS_NAME).write_bytes(fake)
    _edit_card(folder, weights_sha256=hashlib.sha256(fake).hexdigest())
    with pytest.raises(CheckpointError, match=r"not a readable safetensors file.*never loads pickled"):
        load_checkpoint(folder)


def test_card_naming_an_unknown_architecture_lists_the_known_ones(tmp_path: Path):
    folder, _ = _trained_tiny(tmp_path)
    _edit_card(folder, name="hourglass9")
    with pytest.raises(CheckpointError, match=r"'hourglass9' is unknown.*available: .*ivdnet.*update napari-ivd"):
        load_checkpoint(folder)


def test_saving_a_model_with_the_wrong_config_is_refused_before_writing(tmp_path: Path):
    with pytest.raises(CheckpointError, match="does not match build"):
        save_checkpoint(
            tmp_path / "m", IvdNet(TINY_CONFIG), "ivdnet", IvdNetConfig(), labels=DEFAULT_LABELS, input_spec={}
        )
    assert not (tmp_path / "m").exists()


def test_usable_cpus_counts_the_cores_a_process_was_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """A benchmark pinned to one core (``taskset -c 1``) splits one core, not the machine's."""
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {1}, raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    assert usable_cpus() == 1
    monkeypatch.delattr("os.sched_getaffinity")
    assert usable_cpus() == 64
