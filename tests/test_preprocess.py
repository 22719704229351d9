"""The model input a card states (ModelInput) and the slice preparation that inference, training and active share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_ivd.errors import CheckpointError
from napari_ivd.inference import _SliceRunner
from napari_ivd.io import Volume, VolumeGeometry
from napari_ivd.models import bundled_model_names, find_model_dir, read_card
from napari_ivd.preprocess import (
    OUTPUT_STRIDE,
    PAD_MULTIPLE,
    PERCENTILE_NORM,
    ModelInput,
    channel_picks,
    network_input,
    pad_to_multiple,
)


def test_a_card_stating_only_the_spacing_takes_the_defaults_from_one_place():
    assert ModelInput.from_card({"input": {"spacing_mm": 0.8}}) == ModelInput(
        spacing_mm=0.8, in_channels=1, output_stride=OUTPUT_STRIDE, multiple=PAD_MULTIPLE, norm=PERCENTILE_NORM
    )


def test_to_dict_is_the_card_block_from_card_reads():
    spec = ModelInput(spacing_mm=1.2, in_channels=3, output_stride=4, multiple=16)
    assert ModelInput.from_card({"input": spec.to_dict()}) == spec
    assert spec.to_dict() == {
        "spacing_mm": 1.2,
        "in_channels": 3,
        "output_stride": 4,
        "multiple": 16,
        "norm": PERCENTILE_NORM,
    }


@pytest.mark.parametrize("name", bundled_model_names())
def test_every_bundled_card_states_an_input_it_reads_as_written(name: str):
    card = read_card(find_model_dir(name))
    spec = ModelInput.from_card(card)
    assert {k: spec.to_dict()[k] for k in card["input"]} == card["input"]


@pytest.mark.parametrize(
    ("block", "match"),
    [
        (None, "states no input spacing"),
        ({"in_channels": 1}, "states no input spacing"),
        ({"spacing_mm": 1.0, "strides": 2}, r"input keys \['strides'\] this napari-ivd does not know"),
        ({"spacing_mm": 1.0, "norm": "zscore"}, "unknown intensity normalisation 'zscore'"),
        ({"spacing_mm": 1.0, "in_channels": 2}, "in_channels must be odd"),
        ({"spacing_mm": 0.0}, "spacing_mm must be positive"),
        ({"spacing_mm": 1.0, "multiple": "eight"}, "bad input block"),
    ],
)
def test_a_bad_input_block_is_refused_naming_the_model(block, match):
    card = {"name": "my-model"} | ({} if block is None else {"input": block})
    with pytest.raises(CheckpointError, match=rf"my-model.*{match}|{match}.*my-model|card of my-model .*{match}"):
        ModelInput.from_card(card)


def test_channel_picks_centre_on_the_slice_and_clamp_at_the_edges():
    assert channel_picks(0, 5, 3).tolist() == [0, 0, 1]
    assert channel_picks(2, 5, 3).tolist() == [1, 2, 3]
    assert channel_picks(4, 5, 5).tolist() == [2, 3, 4, 4, 4]
    assert channel_picks(3, 5, 1).tolist() == [3]


def test_pad_to_multiple_pads_bottom_right_with_zeros():
    x = np.ones((2, 5, 8), np.float32)
    padded = pad_to_multiple(x, 4)
    assert padded.shape == (2, 8, 8) and padded[:, :5].all() and not padded[:, 5:].any()


def test_network_input_of_chosen_slices_equals_those_of_the_whole_stack():
    rng = np.random.default_rng(0)
    volume = Volume(
        rng.normal(size=(6, 9, 7)).astype(np.float32),
        VolumeGeometry(np.diag([0.8, 1.3, 2.0, 1.0]), (6, 9, 7)),
        Path("phantom.nii.gz"),
    )
    spec = ModelInput(spacing_mm=1.0)
    whole = network_input(volume, spec)
    n_slices = volume.view.display.shape[0]
    picks = channel_picks(1, n_slices, 3)
    assert np.array_equal(network_input(volume, spec, picks), whole[picks])


class _Stride4(torch.nn.Module):
    """Keypoint outputs at a quarter of the input size, heatmap 1 everywhere it was run."""

    def forward(self, x: torch.Tensor, seg_only: bool = False) -> dict[str, torch.Tensor]:
        b, _, h, w = x.shape
        out = {"seg": torch.zeros(b, 2, h, w)}
        if not seg_only:
            out |= {"heatmap": torch.full((b, 3, h // 4, w // 4), 10.0), "offset": torch.zeros(b, 6, h // 4, w // 4)}
        return out


def test_the_slice_runner_places_outputs_by_the_cards_output_stride():
    spec = ModelInput(spacing_mm=1.0, output_stride=4, multiple=8)
    runner = _SliceRunner(_Stride4(), np.zeros((3, 40, 40), np.float32), spec, torch.device("cpu"))
    runner.run([1], window=(8, 32, 0, 40))  # input rows 8..32 are output rows 2..8
    heat = runner.heatmap[1]
    assert heat.shape == (3, 10, 10)
    assert (heat[:, 2:8] > 0.99).all() and not heat[:, :2].any() and not heat[:, 8:].any()
