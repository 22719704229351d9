"""Gao 2018's DenseASPP network: its paper preset, its spine-region focus and its own loss.

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
from napari_ivd.models import registry
from napari_ivd.models.denseaspp import DenseAsppConfig, DenseAsppLoss, DenseAsppNet

TINY_CONFIG = TINY["denseaspp"].config


def test_paper_preset_keeps_gaos_five_dilation_rates_at_paper_width():
    assert DenseAsppConfig.paper().aspp_rates == DenseAsppConfig().aspp_rates == (3, 6, 12, 18, 24)
    paper, shapes = paper_on_meta("denseaspp")
    assert registry.count_parameters(paper) > 500_000
    assert shapes["spine_region"] == (1, 1, 8, 12)


def test_region_gate_blanks_masks_where_the_spine_region_branch_says_no_spine():
    net = DenseAsppNet(TINY_CONFIG).eval()
    with torch.no_grad():
        net.region[-1].bias.fill_(-30.0)  # "no spine anywhere"
        out = net(torch.rand(1, 1, 32, 32))
    assert torch.sigmoid(out["seg_fine"]).max() > 0.1
    assert torch.sigmoid(out["seg"]).max() < 1e-6


def test_twenty_steps_of_gaos_objective_more_than_halve_it():
    assert isinstance(registry.loss_for("denseaspp", TINY_CONFIG), DenseAsppLoss)
    history = train_steps("denseaspp", DenseAsppConfig(labels=TWO_LABELS, widths=(8, 16, 16), aspp_width=16))
    assert {"heatmap", "offset", "seg_focus", "seg_paths", "spine_region", "total"} <= set(history[0])
    assert history[-1]["total"] < 0.5 * history[0]["total"], (history[0], history[-1])
    assert history[-1]["heatmap"] < history[0]["heatmap"]
    assert history[-1]["spine_region"] < history[0]["spine_region"]


def test_mask_loss_ignores_pixels_outside_the_dilated_spine_region_only_with_the_focus():
    batch = blob_batch(k=2)
    out = {key: value.detach() for key, value in DenseAsppNet(TINY_CONFIG)(batch["image"]).items()}
    far = torch.zeros(1, 1, 64, 64, dtype=torch.bool)
    far[..., 50:] = True  # every blob and its 4-pixel margin lies left of column 44
    changed = {**out, **{key: torch.where(far, out[key] + 5.0, out[key]) for key in ("seg_fine", "seg_paths")}}
    focused = DenseAsppLoss(TINY_CONFIG, region_margin_px=4)
    for key in ("seg_focus", "seg_paths"):
        assert focused(changed, batch)[1][key] == pytest.approx(focused(out, batch)[1][key])
    plain = DenseAsppLoss(DenseAsppConfig(labels=TWO_LABELS, spine_region=False))
    assert plain(changed, batch)[1]["seg_focus"] > plain(out, batch)[1]["seg_focus"]


def test_loss_names_outputs_it_misses():
    batch = blob_batch(k=2)
    out = DenseAsppNet(TINY_CONFIG)(batch["image"])
    del out["spine_region"]
    with pytest.raises(ValueError, match="spine_region"):
        DenseAsppLoss(TINY_CONFIG)(out, batch)


def test_denseaspp_config_refuses_a_wrong_number_of_paths_no_rates_and_a_non_bool_switch():
    with pytest.raises(ValueError, match="widths must be 3 positive ints"):
        DenseAsppConfig(widths=(8, 16))
    with pytest.raises(ValueError, match="aspp_rates must be a positive int"):
        DenseAsppConfig(aspp_rates=())
    with pytest.raises(ValueError, match="spine_region must be true or false"):
        DenseAsppConfig(spine_region=1)
