"""IvdNet, its losses and the model registry/checkpoint folders (docs/pipeline.md contract)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

from napari_ivd.errors import CheckpointError, IvdError
from napari_ivd.models import (
    CARD_NAME,
    WEIGHTS_NAME,
    IvdNet,
    IvdNetConfig,
    available,
    build,
    load_checkpoint,
    save_checkpoint,
)
from napari_ivd.models.ivdnet import DEFAULT_LABELS
from napari_ivd.models.losses import HeatmapFocalLoss, IvdLoss, MaskedSegLoss, OffsetL1Loss

TWO_LABELS = ("L4", "L4-L5")
TINY = IvdNetConfig(labels=TWO_LABELS, widths=(8, 8, 8, 8), aspp_rates=(2, 4))
INPUT_SPEC = {"spacing_mm": 1.0, "norm": "percentile_0.5_99.5"}


@pytest.fixture(autouse=True)
def _seeded_single_thread():
    """Reproducible and fast on a shared CPU: several intra-op threads compete with other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def _blob_batch(n: int = 2, size: int = 64, k: int = 2, sigma: float = 1.5, radius: float = 3.0) -> dict:
    """Bright disks on noise; label j's keypoint sits at the disk centre shifted by 6 j pixels."""
    h = size // 2
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    hy, hx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(h, dtype=torch.float32), indexing="ij")
    batch = {
        "image": 0.1 * torch.rand(n, 1, size, size),
        "heatmap": torch.zeros(n, k, h, h),
        "visible": torch.ones(n, k),
        "offset": torch.zeros(n, 2 * k, h, h),
        "offset_mask": torch.zeros(n, k, h, h),
        "seg": torch.zeros(n, 2, size, size),
        "seg_valid": torch.ones(n, 2, size, size),
    }
    for i in range(n):
        cy, cx = 20.0 + 16 * i, 24.0 + 8 * i
        disk = ((yy - cy) ** 2 + (xx - cx) ** 2) <= 8**2
        batch["image"][i, 0][disk] += 0.8
        batch["seg"][i, 0] = disk.float()
        batch["seg"][i, 1] = (((yy - cy - 10) ** 2) / 4 + (xx - cx) ** 2 <= 16).float()
        for j in range(k):
            ky, kx = (cy + 6 * j) / 2, cx / 2  # keypoint in output pixels
            dist2 = (hy - ky) ** 2 + (hx - kx) ** 2
            batch["heatmap"][i, j] = torch.exp(-dist2 / (2 * sigma**2))
            batch["offset"][i, 2 * j], batch["offset"][i, 2 * j + 1] = ky - hy, kx - hx
            batch["offset_mask"][i, j] = (dist2 <= radius**2).float()
    return batch


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_channels", "h", "w", "attention"), [(1, 64, 64, True), (1, 96, 64, False), (3, 48, 120, True)]
)
def test_network_outputs_follow_the_pipeline_contract_for_any_padded_size(
    in_channels: int, h: int, w: int, attention: bool
):
    cfg = IvdNetConfig(in_channels=in_channels, attention=attention)
    net = IvdNet(cfg).eval()
    with torch.no_grad():
        out = net(torch.rand(2, in_channels, h, w))
    k = len(DEFAULT_LABELS)
    assert set(out) == {"heatmap", "offset", "seg"}
    assert out["heatmap"].shape == (2, k, h // 2, w // 2)
    assert out["offset"].shape == (2, 2 * k, h // 2, w // 2)
    assert out["seg"].shape == (2, 2, h, w)
    # CenterNet-style prior: the untrained heatmap says "almost surely no keypoint here".
    assert 0.005 < torch.sigmoid(out["heatmap"]).mean() < 0.05


def test_default_model_predicts_the_lumbar_labels_in_cranio_caudal_order():
    assert DEFAULT_LABELS == (
        "T11", "T11-T12", "T12", "T12-L1", "L1", "L1-L2", "L2", "L2-L3",
        "L3", "L3-L4", "L4", "L4-L5", "L5", "L5-S1",
    )  # fmt: skip
    assert IvdNetConfig().labels == DEFAULT_LABELS


@pytest.mark.parametrize("shape", [(1, 1, 60, 64), (1, 1, 64, 36)])
def test_input_not_padded_to_a_multiple_of_8_is_refused_with_the_fix(shape: tuple[int, ...]):
    net = IvdNet(TINY).eval()
    with pytest.raises(ValueError, match=r"multiples of 8.*pad"):
        net(torch.zeros(shape))


def test_config_round_trips_through_json_including_the_paper_preset():
    for cfg in (IvdNetConfig(labels=["l4", "L4/L5"], dropout=0.0), IvdNetConfig.paper(in_channels=3)):
        again = IvdNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert again == cfg
        assert hash(again) == hash(cfg)  # tuples, not lists, after the trip
    assert IvdNetConfig(labels=["l4", "L4/L5"]).labels == TWO_LABELS
    assert IvdNetConfig.paper().widths[-1] > IvdNetConfig().widths[-1]


def test_config_with_unknown_key_is_rejected_naming_the_key_and_the_valid_ones():
    d = IvdNetConfig().to_dict() | {"widht": [8, 8, 8, 8]}
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'widht'.*valid keys are labels, in_channels, widths"):
        IvdNetConfig.from_dict(d)


def test_config_refuses_labels_out_of_cranio_caudal_order():
    with pytest.raises(ValueError, match="cranio-caudal"):
        IvdNetConfig(labels=("L5", "L4"))


def test_unknown_architecture_name_lists_the_valid_ones():
    assert "ivdnet" in available()
    with pytest.raises(ValueError, match=r"unknown architecture 'hourglass9'; available: .*ivdnet"):
        build("hourglass9")
    assert isinstance(build("ivdnet", TINY.to_dict()), IvdNet)


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def test_thirty_adam_steps_on_a_synthetic_blob_more_than_halve_the_loss():
    batch = _blob_batch()
    net = IvdNet(IvdNetConfig(labels=TWO_LABELS, widths=(8, 16, 16, 16), aspp_rates=(2, 4, 8))).train()
    criterion = IvdLoss()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    history = []
    for _ in range(30):
        total, parts = criterion(net(batch["image"]), batch)
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append(parts)
    assert set(history[0]) == {"heatmap", "offset", "seg", "seg_bce", "seg_dice", "total"}
    assert history[-1]["total"] < 0.5 * history[0]["total"], (history[0], history[-1])
    assert history[-1]["heatmap"] < history[0]["heatmap"]


def test_heatmap_loss_ignores_labels_not_visible_in_the_sample():
    logits = torch.randn(2, 2, 16, 16, requires_grad=True)
    target = _blob_batch(size=32)["heatmap"]
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
    b = _blob_batch(size=32)
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
    b = _blob_batch(size=32)
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
    b = _blob_batch(size=32)
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
    b = _blob_batch(size=32)
    del b["seg_valid"]
    out = {"heatmap": b["heatmap"], "offset": b["offset"], "seg": b["seg"]}
    with pytest.raises(ValueError, match="seg_valid"):
        IvdLoss()(out, b)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def _trained_tiny(tmp_path: Path, model: nn.Module | None = None) -> tuple[Path, IvdNet]:
    net = IvdNet(TINY)
    with torch.no_grad():  # make the weights differ from a fresh init
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    folder = save_checkpoint(
        tmp_path / "tiny",
        model if model is not None else net,
        "ivdnet",
        TINY,
        labels=TINY.labels,
        input_spec=INPUT_SPEC,
        extra={"trained_on": ["case_001"], "metrics": {"mre_mm": 2.5}},
    )
    return folder, net


def _edit_card(folder: Path, **changes: object) -> None:
    card = json.loads((folder / CARD_NAME).read_text())
    card.update(changes)
    (folder / CARD_NAME).write_text(json.dumps(card))


def test_saved_model_reloads_with_identical_outputs_and_a_complete_card(tmp_path: Path):
    folder, net = _trained_tiny(tmp_path)
    loaded, card = load_checkpoint(folder)
    x = torch.rand(1, 1, 64, 48)
    net.eval()
    with torch.no_grad():
        expected, got = net(x), loaded(x)
    assert not loaded.training
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert card["name"] == "ivdnet" and card["format_version"] == 1
    assert card["labels"] == list(TWO_LABELS)
    assert card["input"] == {**INPUT_SPEC, "in_channels": 1}
    assert card["params"] == sum(p.numel() for p in net.parameters())
    assert card["gflops"] > 0 and len(card["weights_sha256"]) == 64
    assert card["metrics"] == {"mre_mm": 2.5} and card["trained_on"] == ["case_001"]
    assert sorted(p.name for p in folder.iterdir()) == sorted([WEIGHTS_NAME, CARD_NAME])  # no temp files left


def test_ddp_and_compile_prefixes_are_stripped_so_any_run_loads_plainly(tmp_path: Path):
    class Compiled(nn.Module):  # what torch.compile's wrapper looks like to state_dict()
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self._orig_mod = inner

    class Distributed(nn.Module):  # likewise DistributedDataParallel
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.module = inner

    inner = IvdNet(TINY)
    assert next(iter(Distributed(Compiled(inner)).state_dict())).startswith("module._orig_mod.")
    folder, _ = _trained_tiny(tmp_path, model=Distributed(Compiled(inner)))
    with safe_open(str(folder / WEIGHTS_NAME), framework="pt") as f:
        keys = list(f.keys())
    assert set(keys) == set(inner.state_dict())
    loaded, _ = load_checkpoint(folder)
    assert torch.equal(loaded.stem[0][0].weight, inner.stem[0][0].weight)


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


def test_weights_that_do_not_fit_the_card_config_are_refused_listing_the_shapes(tmp_path: Path):
    folder, _ = _trained_tiny(tmp_path)
    _edit_card(folder, config=TINY.to_dict() | {"widths": [8, 8, 8, 16]})
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
        save_checkpoint(tmp_path / "m", IvdNet(TINY), "ivdnet", IvdNetConfig(), labels=DEFAULT_LABELS, input_spec={})
    assert not (tmp_path / "m").exists()
