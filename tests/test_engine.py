"""The training engine on real cases: progress, a saved model version, and a usable card."""

from __future__ import annotations

import json

import pytest

from napari_ivd.inference import predict
from napari_ivd.models import load_checkpoint
from napari_ivd.training.cases import load_lumbar_case
from napari_ivd.training.data import SampleConfig
from napari_ivd.training.engine import TrainConfig, fit


@pytest.mark.slow
def test_a_short_training_run_yields_progress_and_saves_a_loadable_model(shared_data, tmp_path):
    root = shared_data / "lumbar"
    train = [load_lumbar_case(root / "VB3/case-01"), load_lumbar_case(root / "VB2/case-07")]
    dev = [load_lumbar_case(root / "VB3/case-02")]
    cfg = TrainConfig(minutes=0.05, samples_per_epoch=4, batch_size=2, device="cpu", validate_every_min=0.0)
    sample_cfg = SampleConfig(crop=(128, 128))
    steps = fit(cfg, sample_cfg, train, dev, tmp_path / "model", card_extra={"command": "test"})
    progress = []
    while True:
        try:
            progress.append(next(steps))
        except StopIteration as done:
            card = done.value
            break
    assert progress and progress[-1].step == len(progress) * 2
    assert progress[-1].validation is not None and progress[0].improved
    assert card["trained_on"] == ["VB3/case-01", "VB2/case-07"] and card["command"] == "test"
    model, loaded = load_checkpoint(tmp_path / "model")
    assert loaded["metrics"]["validation"]["cases"] == ["VB3/case-02"]
    assert json.loads((tmp_path / "model" / "card.json").read_text())["skeleton"]["labels"][0] == "T11"
    prediction = predict(dev[0].volume, model, loaded)  # the saved card drives inference as is
    assert prediction.mask_tss.shape == dev[0].volume.geometry.shape
