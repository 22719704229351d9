"""Every registered architecture meets the docs/pipeline.md model contract, checked the same way.

Inference, decoding, training and the model folders treat all networks alike; these tests
hold each one to that, at test size (:data:`_arch_contract.TINY`). What is particular to an
architecture is tested in its own file.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from _arch_contract import (
    INPUT_SPEC,
    TINY,
    TWO_LABELS,
    paper_on_meta,
    saved_tiny,
    seeded_single_thread,  # noqa: F401 (autouse fixture)
)
from napari_ivd.models import (
    CARD_NAME,
    WEIGHTS_NAME,
    available,
    build,
    config_class,
    count_parameters,
    load_checkpoint,
    to_device,
)
from napari_ivd.models.conventions import HEATMAP_INIT_BIAS
from napari_ivd.models.decode import decode

NAMES = available()


def test_every_registered_architecture_has_a_tiny_test_config():
    assert sorted(TINY) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("in_channels", "h", "w", "switch"), [(1, 32, 32, True), (3, 48, 32, False)])
def test_outputs_follow_the_contract_and_seg_only_gives_the_same_masks(
    name: str, in_channels: int, h: int, w: int, switch: bool
):
    tiny = TINY[name]
    config = dataclasses.replace(tiny.config, in_channels=in_channels, **({tiny.switch: switch} if tiny.switch else {}))
    net = build(name, config)
    x = torch.rand(2, in_channels, h, w)
    with torch.no_grad():
        # As training starts (batch statistics): the CenterNet-style prior says "almost surely no keypoint here".
        assert 0.005 < torch.sigmoid(net.train()(x)["heatmap"]).mean() < 0.05
        net.eval()
        out, only = net(x), net(x, seg_only=True)
    assert out["heatmap"].shape == (2, 2, h // 2, w // 2)
    assert out["offset"].shape == (2, 4, h // 2, w // 2)
    assert out["seg"].shape == (2, 2, h, w)
    assert not {"heatmap", "offset"} & set(only) and torch.equal(only["seg"], out["seg"])


@pytest.mark.parametrize("name", NAMES)
def test_forward_features_are_per_sample_maps_of_what_the_network_sees(name: str):
    """Active learning embeds a scan by pooling these maps (active/diversity.py), whatever the architecture."""
    size = 4 * TINY[name].multiple
    net = build(name, TINY[name].config).eval()
    x = torch.rand(2, 1, size, size)
    with torch.no_grad():
        maps, alone = net.forward_features(x), net.forward_features(x[1:])
    assert maps and all(f.ndim == 4 and f.shape[0] == 2 and torch.isfinite(f).all() for f in maps)
    assert all(torch.allclose(f[1:], g, atol=1e-3) for f, g in zip(maps, alone, strict=True))  # each sample's own
    assert any(not torch.allclose(f[0], f[1]) for f in maps)  # and they follow the input


@pytest.mark.parametrize("name", NAMES)
def test_input_of_the_wrong_size_or_channels_is_refused_with_the_fix(name: str):
    tiny = TINY[name]
    net = build(name, tiny.config)
    cls, m = type(net).__name__, tiny.multiple
    with pytest.raises(ValueError, match=rf"{cls} input rows and cols must be multiples of {m}, .*pad with zeros"):
        net(torch.zeros(1, 1, 4 * m, 4 * m + m // 2))
    with pytest.raises(ValueError, match=rf"{cls} expects input \(B, 1, H, W\)"):
        net(torch.zeros(1, 2, 4 * m, 4 * m))


@pytest.mark.parametrize("name", NAMES)
def test_untrained_output_decodes_into_candidates_on_the_input_grid(name: str):
    config = TINY[name].config
    with torch.no_grad():
        out = build(name, config).eval()(torch.rand(1, 1, 64, 64))
    # As if the heatmap bias were +3 instead of its starting value: every pixel votes, so
    # decoding sees the whole output grid.
    prob = torch.sigmoid(out["heatmap"][0] - HEATMAP_INIT_BIAS + 3.0).numpy()
    candidates = decode(prob, out["offset"][0].numpy(), list(config.labels), stride=2)
    assert candidates and {c.label for c in candidates} <= set(TWO_LABELS)
    rows, cols = np.array([c.row for c in candidates]), np.array([c.col for c in candidates])
    assert np.all((rows >= -0.5) & (rows <= 63.5) & (cols >= -0.5) & (cols <= 63.5))


@pytest.mark.parametrize("name", NAMES)
def test_saved_model_reloads_with_identical_outputs_and_a_complete_card(name: str, tmp_path: Path):
    folder, net = saved_tiny(name, tmp_path / name)
    loaded, card = load_checkpoint(folder)
    x = torch.rand(1, 1, 32, 48)
    to_device(net, "cpu").eval()  # the layout load_checkpoint gives, so outputs match bit for bit
    with torch.no_grad():
        expected, got = net(x), loaded(x)
    assert not loaded.training
    assert set(expected) == set(got)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert card["name"] == name and card["format_version"] == 1 and card["labels"] == list(TWO_LABELS)
    assert card["arch"] == f"{type(net).__module__}.{type(net).__qualname__}"
    assert card["input"] == {**INPUT_SPEC, "in_channels": 1}
    assert card["params"] == count_parameters(net)
    assert card["gflops"] > 0 and len(card["weights_sha256"]) == 64
    assert card["metrics"] == {"mre_mm": 2.5} and card["trained_on"] == ["case_001"]
    assert json.loads((folder / CARD_NAME).read_text())["config"] == TINY[name].config.to_dict()
    assert sorted(p.name for p in folder.iterdir()) == sorted([WEIGHTS_NAME, CARD_NAME])  # no temp files left


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_placement_changes_the_memory_layout_not_the_outputs(name: str):
    config = TINY[name].config
    plain = build(name, config).eval()
    placed = to_device(build(name, config), "cpu").eval()
    placed.load_state_dict(plain.state_dict())
    convs = [m.weight for m in placed.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    x = torch.rand(2, 1, 32, 48)
    with torch.no_grad():
        expected, got = plain(x), placed(x)
    for key in expected:  # summation order differs between layouts: equal up to float32 rounding
        scale = float(expected[key].abs().max()) + 1.0
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-4 * scale, msg=key)


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trips_through_json_and_refuses_unknown_keys_and_bad_labels(name: str):
    cls, switch = config_class(name), TINY[name].switch
    loose = cls(labels=["l4", "L4/L5"], **({switch: False} if switch else {}))
    assert loose.labels == TWO_LABELS
    for config in (loose, cls.paper(in_channels=3)):
        again = cls.from_dict(json.loads(json.dumps(config.to_dict())))
        assert again == config
        assert hash(again) == hash(config)  # tuples, not lists, after the trip
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'widht'.*valid keys are labels, in_channels"):
        cls.from_dict(cls().to_dict() | {"widht": 8})
    with pytest.raises(ValueError, match="cranio-caudal"):
        cls(labels=("L5", "L4"))
    with pytest.raises(ValueError, match=rf"{cls.__name__}.in_channels must be a positive int"):
        cls(in_channels=0)


@pytest.mark.parametrize("name", NAMES)
def test_default_preset_trains_on_a_cpu_and_paper_preset_keeps_the_contract(name: str):
    with torch.device("meta"):  # sizes only: no memory, no initialisation
        assert count_parameters(build(name)) < 500_000
    _, shapes = paper_on_meta(name)
    assert (shapes["heatmap"], shapes["offset"], shapes["seg"]) == ((1, 14, 16, 24), (1, 28, 16, 24), (1, 2, 32, 48))
