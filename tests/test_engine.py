"""The training engine on real cases: progress, a saved model version, and a usable card."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from napari_ivd import anatomy
from napari_ivd.inference import predict
from napari_ivd.models import find_model_dir, load_checkpoint
from napari_ivd.progress import run_steps
from napari_ivd.training.cases import load_lumbar_case
from napari_ivd.training.data import SampleConfig
from napari_ivd.training.engine import TrainConfig, evaluate_cases, evaluate_groups, fit, trained_on


@pytest.mark.slow
def test_a_short_training_run_yields_progress_and_saves_a_loadable_model(shared_data, tmp_path):
    root = shared_data / "lumbar"
    train = [load_lumbar_case(root / "VB3/case-01"), load_lumbar_case(root / "VB2/case-07")]
    dev = [load_lumbar_case(root / "VB3/case-02")]
    cfg = TrainConfig(minutes=0.05, samples_per_epoch=4, batch_size=2, device="cpu", validate_every_min=0.0)
    sample_cfg = SampleConfig(crop=(128, 128))
    reports = []
    card = run_steps(
        fit(cfg, sample_cfg, train, dev, tmp_path / "model", card_extra={"command": "test"}), reports.append
    )
    progress = [r.detail for r in reports]  # each epoch's figures
    assert progress and progress[-1].step == len(progress) * 2
    assert [r.fraction for r in reports] == sorted(r.fraction for r in reports) and reports[-1].total == 1
    assert progress[-1].validation is not None and progress[0].improved
    assert card["trained_on"] == ["VB3/case-01", "VB2/case-07"] and card["command"] == "test"
    model, loaded = load_checkpoint(tmp_path / "model")
    assert loaded["metrics"]["validation"]["cases"] == ["VB3/case-02"]
    assert json.loads((tmp_path / "model" / "card.json").read_text())["skeleton"]["labels"][0] == "T11"
    prediction = predict(dev[0].volume, model, loaded)  # the saved card drives inference as is
    assert prediction.mask_tss.shape == dev[0].volume.geometry.shape


@pytest.mark.slow
def test_out_of_memory_halves_the_batch_and_training_goes_on(shared_data, tmp_path, monkeypatch):
    from napari_ivd.models.ivdnet import IvdNet

    real_forward = IvdNet.forward
    failures = []

    def forward_short_of_memory(self, x, *args, **kwargs):
        if self.training and x.shape[0] > 2:
            failures.append(x.shape[0])
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(self, x, *args, **kwargs)

    monkeypatch.setattr(IvdNet, "forward", forward_short_of_memory)
    case = load_lumbar_case(shared_data / "lumbar/VB3/case-01")
    cfg = TrainConfig(batch_size=4, samples_per_epoch=4, max_epochs=2, device="cpu", minutes=5)
    reports = [r.detail for r in fit(cfg, SampleConfig(crop=(128, 128)), [case], [], tmp_path / "model")]
    assert failures == [4]
    assert [r.batch_size for r in reports] == [2, 2] and reports[-1].step == 2  # no step lost but the failed one


def test_evaluation_judges_every_annotated_level_even_one_the_model_cannot_name(shared_data):
    case = load_lumbar_case(shared_data / "lumbar/VB1/case-02")  # T1w, named T10...S1
    model, card = load_checkpoint(find_model_dir("scarnet-lumbar"))  # a seed model: it knows T11...L5-S1
    assert {"T10", "S1"} <= set(case.keypoints_vox) and not {"T10", "S1"} & set(card["labels"])
    seen = []
    report = evaluate_cases(model, card, [case], torch.device("cpu"), on_prediction=lambda c, p: seen.append((c, p)))
    judged = sum(report["keypoints"][kind]["n_annotated"] for kind in ("disc", "vertebra"))
    assert judged == len(case.keypoints_vox)  # T10, T10-T11 and S1 count as missed, not as absent
    assert len(seen) == 1 and seen[0][0] is case
    named = report["keypoints"]["vertebra"]["n_predicted"] + report["keypoints"]["disc"]["n_predicted"]
    assert named == len([s for s in seen[0][1].structures if s.name in case.keypoints_vox])  # the judged prediction


def test_groups_that_share_cases_predict_each_case_once_and_judge_each_group_on_its_own(shared_data, monkeypatch):
    from napari_ivd.training import engine

    a, b = (load_lumbar_case(shared_data / f"lumbar/{name}") for name in ("VB3/case-01", "IVD/case-11"))
    model, card = load_checkpoint(find_model_dir())
    predicted = []
    real_predict = engine.predict
    monkeypatch.setattr(engine, "predict", lambda vol, *args: predicted.append(vol) or real_predict(vol, *args))
    reports = evaluate_groups(model, card, {"all": [a, b], "VB3": [a], "IVD": [b]}, torch.device("cpu"))
    assert len(predicted) == 2
    assert [r["cases"] for r in reports.values()] == [[a.name, b.name], [a.name], [b.name]]
    for kind in ("disc", "vertebra"):
        annotated = [reports[g]["keypoints"][kind]["n_annotated"] for g in ("all", "VB3", "IVD")]
        assert annotated[0] == annotated[1] + annotated[2]
    vertebrae = sum(anatomy.structure(n).kind == "vertebra" for n in a.keypoints_vox)
    assert reports["VB3"]["keypoints"]["vertebra"]["n_annotated"] == vertebrae > 0


@pytest.mark.parametrize("keep", ["best", "last"])
def test_keep_last_validates_once_where_training_ends_and_keeps_those_weights(shared_data, tmp_path, monkeypatch, keep):
    """``keep="last"``: the dev cases only report, so they must not pick the checkpoint."""
    from napari_ivd.training import engine

    errors = iter([1.0, 2.0, 3.0])  # every validation worse than the one before

    def evaluate_worse_each_time(model, card, cases, device):
        return {"error_mm": next(errors), "dice": {}, "cases": [c.name for c in cases]}

    monkeypatch.setattr(engine, "evaluate_cases", evaluate_worse_each_time)
    case = load_lumbar_case(shared_data / "lumbar/VB3/case-01")
    cfg = TrainConfig(
        batch_size=1, samples_per_epoch=1, max_epochs=3, validate_every_epochs=1, patience=10, device="cpu", keep=keep
    )
    reports = [r.detail for r in fit(cfg, SampleConfig(crop=(64, 64)), [case], [case], tmp_path / "model")]
    validated = [r.validation["error_mm"] if r.validation else None for r in reports]
    _, saved = load_checkpoint(tmp_path / "model")
    if keep == "last":
        assert validated == [None, None, 1.0] and saved["steps"] == 3
    else:
        assert validated == [1.0, 2.0, 3.0] and saved["steps"] == 1  # the best one, picked by the dev case
    assert saved["metrics"]["validation"]["error_mm"] == 1.0


@pytest.mark.parametrize(("errors", "validated"), [([20.0] * 6, 6), ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3)])
def test_early_stopping_counts_worse_validations_not_ties(shared_data, tmp_path, monkeypatch, errors, validated):
    """A held-out case stuck at the cap (the same figures every time) lets the run go on and keeps the latest model.

    With patience 2, validations that only get worse stop the run after the third.
    """
    from napari_ivd.training import engine

    figures = iter(errors)

    def evaluate(model, card, cases, device):
        return {"error_mm": next(figures), "dice": {}, "cases": [c.name for c in cases]}

    monkeypatch.setattr(engine, "evaluate_cases", evaluate)
    case = load_lumbar_case(shared_data / "lumbar/VB3/case-01")
    cfg = TrainConfig(
        batch_size=1, samples_per_epoch=1, max_epochs=6, validate_every_epochs=1, patience=2, device="cpu"
    )
    reports = [r.detail for r in fit(cfg, SampleConfig(crop=(64, 64)), [case], [case], tmp_path / "model")]
    assert sum(r.validation is not None for r in reports) == validated
    _, saved = load_checkpoint(tmp_path / "model")
    assert saved["steps"] == (6 if errors[0] == errors[1] else 1)


def test_a_child_model_lists_what_its_parent_trained_on_before_its_own_cases():
    cases = [SimpleNamespace(name=n) for n in ("VB3/case-02", "VB1/case-15")]
    assert trained_on({"trained_on": ["VB1/case-15", "VB2/case-07"]}, cases) == [
        "VB1/case-15",
        "VB2/case-07",
        "VB3/case-02",
    ]
    assert trained_on(None, cases) == ["VB3/case-02", "VB1/case-15"]  # from scratch: this run's cases
