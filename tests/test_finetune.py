"""Fine-tuning from a store: which cases, the new model version, when it becomes active, failures.

Case planning runs on small synthetic volumes; runs that train use three real water cases
(``training_store_template``) with a few steps, so they check plumbing, not accuracy
(``benchmarks/bench_finetune.py`` measures the gain).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_ivd.cli import main
from napari_ivd.errors import CheckpointError, StoreError, TrainingError
from napari_ivd.io.annotations import LabelledPoint
from napari_ivd.io.geometry import VolumeGeometry
from napari_ivd.io.volume import Volume
from napari_ivd.model_versions import active_choice, model_choices, model_folder
from napari_ivd.models import load_checkpoint
from napari_ivd.store import AnnotationStore
from napari_ivd.training import engine, finetune
from napari_ivd.training.finetune import FineTuneConfig, finetune_steps
from napari_ivd.training.store_cases import can_judge, load_planned_cases, plan_training
from napari_ivd.worklist import predict_case_steps, run_steps

TINY = FineTuneConfig(epochs=1, samples_per_epoch=4, batch_size=2, validate_every_epochs=1, device="cpu")
POINTS = [LabelledPoint("L3", (10.0, 12.0, 8.0)), LabelledPoint("L3-L4", (12.0, 20.0, 8.0))]


def _volume(seed: int) -> Volume:
    geometry = VolumeGeometry(np.diag([1.0, 1.0, 1.0, 1.0]), (20, 32, 16), "phantom")
    return Volume(np.random.default_rng(seed).random((20, 32, 16), dtype=np.float32), geometry, Path("p.nii.gz"))


def _planning_store() -> AnnotationStore:
    """Cases in every state: verified, corrected by hand, an unchanged proposal, nothing saved, empty."""
    store = AnnotationStore.open("memory://plan-" + str(np.random.default_rng().integers(1 << 30)), create=True)
    for i, case_id in enumerate(["verified-a", "manual-b", "manual-c", "proposal-d", "new-e", "empty-f"]):
        store.add_case(_volume(i), case_id)
    store.save_revision("verified-a", POINTS, None, status="verified")
    store.save_revision("manual-b", POINTS, None)
    store.save_revision("manual-c", POINTS, None)
    store.save_revision("proposal-d", POINTS, None, source="model:ivdnet")
    store.save_revision("empty-f", [], None)
    return store


def _copy(template: Path, tmp_path: Path) -> AnnotationStore:
    return AnnotationStore.open(shutil.copytree(template, tmp_path / template.name), fsync=False)


def test_plan_uses_verified_and_hand_corrected_cases_and_holds_out_a_verified_one():
    store = _planning_store()
    plan = plan_training(store, validation_fraction=0.2)
    assert {c.case_id for c in plan.train} | {c.case_id for c in plan.validation} == {
        "verified-a",
        "manual-b",
        "manual-c",
    }
    assert [c.case_id for c in plan.validation] == ["verified-a"]  # verified cases are the yardstick first
    skipped = dict(plan.skipped)
    assert "uncorrected proposal" in skipped["proposal-d"]
    assert skipped["new-e"] == "no saved revision" and "empty" in skipped["empty-f"]
    assert plan.revisions()["train"] == {"manual-b": "r000001", "manual-c": "r000001"}
    assert "validates on 1: verified-a" in plan.describe()
    assert plan_training(store) == plan  # deterministic


def test_plan_names_the_cases_a_new_version_is_compared_on_unverified_first():
    """Those the run neither trains nor validates on; a verified one last (the next proposals are for the rest)."""
    store = _planning_store()
    store.add_case(_volume(9), "verified-empty")
    store.save_revision("verified-empty", [], None, status="verified")  # nothing to learn: not trained on
    plan = plan_training(store)
    assert set(plan.compared) == {"proposal-d", "new-e", "empty-f", "verified-empty"}
    assert plan.compared[-1] == "verified-empty"
    assert f"its names are compared with its parent's on 4 other cases: {', '.join(plan.compared)}" in plan.describe()

    lone = AnnotationStore.open(
        "memory://plan-nothing-else-" + str(np.random.default_rng().integers(1 << 30)), create=True
    )
    for i, case_id in enumerate(["manual-x", "manual-y"]):
        lone.add_case(_volume(i), case_id)
        lone.save_revision(case_id, POINTS, None)
    assert plan_training(lone).compared == ()
    assert "no other case to compare its names with its parent's on" in plan_training(lone).describe()


def test_only_annotations_no_model_made_can_judge():
    assert can_judge("manual")
    assert not can_judge("model:ivdnet-lumbar") and not can_judge("model:ivdnet@3f2a")


def test_a_case_accepted_unchanged_from_a_proposal_trains_but_never_judges():
    store = _planning_store()
    store.add_case(_volume(9), "accepted-g")
    store.save_revision("accepted-g", POINTS, None, source="model:ivdnet-lumbar", status="verified")
    for fraction in (0.2, 0.5, 1.0):  # however many are held out, verified first
        plan = plan_training(store, fraction)
        assert "accepted-g" in {c.case_id for c in plan.train}
        assert "accepted-g" not in {c.case_id for c in plan.validation} and plan.validation
    assert {c.case_id for c in plan.validation} == {"verified-a", "manual-b", "manual-c"}  # fraction 1.0
    reason = "accepted unchanged from ivdnet-lumbar's proposal: trains, cannot judge it"
    assert dict(plan.train_only) == {"accepted-g": reason}
    assert f"1 case(s) train only ({reason}): accepted-g" in plan.describe()


def test_when_only_accepted_proposals_are_verified_nothing_judges_and_the_plan_says_what_to_do():
    store = AnnotationStore.open("memory://plan-accepted-only", create=True)
    for i, case_id in enumerate(["accepted-1", "accepted-2", "proposal-3"]):
        store.add_case(_volume(i), case_id)
        store.save_revision(case_id, POINTS, None, source="model:ivdnet-lumbar", status="verified")
    store.save_revision("proposal-3", POINTS, None, source="model:ivdnet-lumbar")  # not verified: unused
    plan = plan_training(store)
    assert [c.case_id for c in plan.train] == ["accepted-1", "accepted-2"]
    assert plan.validation == () and not plan.judged
    text = plan.describe()
    assert text.startswith("learns from 2 corrected cases; no independent case to validate on")
    assert "stored un-judged and not made active" in text
    assert "correct or import a reference for at least one more case" in text


@pytest.mark.parametrize("n_manual, n_train, n_validation", [(1, 1, 0), (2, 1, 1), (6, 5, 1), (10, 8, 2)])
def test_hand_corrected_cases_split_into_train_and_validation_and_a_single_one_only_trains(
    n_manual, n_train, n_validation
):
    store = AnnotationStore.open(f"memory://plan-manual-{n_manual}", create=True)
    for i in range(n_manual):
        store.add_case(_volume(i), f"manual-{i}")
        store.save_revision(f"manual-{i}", POINTS, None)
    plan = plan_training(store)
    assert (len(plan.train), len(plan.validation), plan.judged) == (n_train, n_validation, n_validation > 0)


def test_one_image_under_two_case_ids_is_held_out_whole_so_no_copy_trains():
    store = AnnotationStore.open("memory://plan-same-image", create=True)
    for i, case_id in enumerate(["scan-a", "scan-b", "scan-c", "scan-d"]):
        store.add_case(_volume(i), case_id)
        store.save_revision(case_id, POINTS, None, status="verified")
    for case_id, source in (("scan-a-again", "manual"), ("scan-a-accepted", "model:ivdnet-lumbar")):
        store.add_case(_volume(0), case_id, allow_copy=True)  # scan-a's image under another id (an older store)
        store.save_revision(case_id, POINTS, None, source=source, status="verified")
    for fraction in (0.2, 0.5, 0.8):
        plan = plan_training(store, fraction)
        train = {c.case_id for c in plan.train}
        validation = {c.case_id for c in plan.validation}
        copies = {"scan-a", "scan-a-again", "scan-a-accepted"}
        assert not (copies & train and copies & validation), f"fraction {fraction}: a copy trains, one judges"
        assert plan.validation and plan.train
    plan = plan_training(store, 0.8)  # 4 held out of 6: scan-a and its copies among them
    assert {"scan-a", "scan-a-again"} <= {c.case_id for c in plan.validation}
    assert "scan-a-accepted" not in {c.case_id for c in plan.train + plan.validation}
    reason = "same image as held-out scan-a, scan-a-again: neither trains nor judges this run"
    assert dict(plan.skipped)["scan-a-accepted"] == reason
    assert f"not learnt from: scan-a-accepted: {reason}" in plan.describe()


def test_plan_never_holds_out_every_copy_of_the_only_image():
    store = AnnotationStore.open("memory://plan-one-image", create=True)
    for case_id in ("scan", "scan-again"):
        store.add_case(_volume(0), case_id, allow_copy=True)
        store.save_revision(case_id, POINTS, None)
    plan = plan_training(store)
    assert len(plan.train) == 2 and plan.validation == () and not plan.judged


def test_plan_needs_one_corrected_case_and_says_so():
    store = AnnotationStore.open("memory://plan-too-few", create=True)
    store.add_case(_volume(0), "only")
    store.save_revision("only", POINTS, None, source="model:ivdnet-lumbar")  # an unchecked proposal
    with pytest.raises(TrainingError, match=r"at least 1 corrected or verified case.*has none"):
        plan_training(store)


def test_planned_cases_carry_the_planned_revision_not_a_later_one():
    store = _planning_store()
    plan = plan_training(store)
    store.save_revision("manual-b", [LabelledPoint("L4", (5.0, 5.0, 5.0))], None)  # after planning
    train, _ = run_steps(load_planned_cases(store, plan))
    case_b = next(c for c in train if c.name == "manual-b")
    assert sorted(case_b.keypoints_vox) == ["L3", "L3-L4"] and case_b.contrast == "unknown"


@pytest.mark.slow
def test_a_run_stores_a_version_whose_card_names_parent_revisions_and_both_validations(
    training_store_template, tmp_path
):
    store = _copy(training_store_template, tmp_path)
    reports = []
    result = run_steps(finetune_steps(store, TINY, author="tester"), reports.append)
    phases = [r.detail.name for r in reports]
    assert phases[0] == "reading" and "baseline" in phases and "training" in phases and phases[-1] == "saving"
    fractions = [r.fraction for r in reports]
    assert fractions == sorted(fractions) and fractions[-1] < 1.0
    assert [m.model_id for m in store.list_models()] == [result.model.model_id]
    card = result.model.card
    assert card["parent"]["model"] == "ivdnet-lumbar" and card["parent"]["stored"] is False
    revisions = card["case_revisions"]
    assert set(revisions["train"]) | set(revisions["validation"]) == {"VB3-case-01", "VB3-case-02", "VB3-case-03"}
    assert card["metrics_before"]["validation"]["cases"] == list(revisions["validation"])
    assert card["metrics"]["validation"]["error_mm"] is not None and card["author"] == "tester"
    assert card["hyperparameters"]["epochs"] == 1 and card["device"] == "cpu"
    _, loaded = load_checkpoint(model_folder(store, result.model.model_id))  # the same safetensors path
    assert loaded["weights_sha256"] == result.model.weights_sha256
    assert result.activated == (store.active_model() is not None)


@pytest.mark.slow
@pytest.mark.parametrize("parent_error_mm, activated", [(99.0, True), (0.0, False)])
def test_the_new_version_becomes_active_only_when_it_validates_better(
    training_store_template, tmp_path, monkeypatch, parent_error_mm, activated
):
    real_evaluate = finetune.evaluate_cases

    def parent_scored(*args, **kwargs):
        return {**real_evaluate(*args, **kwargs), "error_mm": parent_error_mm}

    monkeypatch.setattr(finetune, "evaluate_cases", parent_scored)
    store = _copy(training_store_template, tmp_path)
    result = run_steps(finetune_steps(store, TINY))
    assert result.activated is activated
    chosen = active_choice(store)
    if activated:
        assert (chosen.key, chosen.stored) == (result.model.model_id, True)
        assert "validates better than its parent ivdnet-lumbar" in store.active_model().reason
        again = run_steps(finetune_steps(store, TINY))  # the next run starts from the active version
        assert again.parent == result.model.model_id
        assert [c.key for c in model_choices(store)][-2:] == sorted(
            [result.model.model_id, again.model.model_id], key=lambda k: store_added(store, k)
        )
    else:
        assert (chosen.key, chosen.stored) == ("ivdnet-lumbar", False) and store.active_model() is None
        assert result.reason.startswith("kept ivdnet-lumbar active")


@pytest.mark.slow
@pytest.mark.parametrize("child_renames", [False, True])
def test_a_better_version_that_renames_levels_on_a_case_it_never_saw_is_stored_not_activated(
    training_store_template, shared_data, tmp_path, request, child_renames
):
    """One held-out case cannot see a chain named one level off elsewhere; the store's other cases can.

    The child validates better; on a fourth case, an image nobody annotated, it either names
    what its parent names or every structure one level caudal of where its parent does.
    """
    from napari_ivd.io import read_volume

    real_evaluate = finetune.evaluate_cases
    if child_renames:
        request.getfixturevalue("child_better_but_renaming")
    else:
        request.getfixturevalue("monkeypatch").setattr(
            finetune, "evaluate_cases", lambda *a, **k: {**real_evaluate(*a, **k), "error_mm": 99.0}
        )
    store = _copy(training_store_template, tmp_path)
    store.add_case(read_volume(shared_data / "lumbar/VB3/case-04/image.nii.gz"), "unseen")
    reports = []
    result = run_steps(finetune_steps(store, TINY), reports.append)

    assert "comparing" in [r.detail.name for r in reports]
    assert [m.model_id for m in store.list_models()] == [result.model.model_id]  # stored either way
    assert result.activated is not child_renames
    assert (active_choice(store).key == result.model.model_id) is not child_renames
    if child_renames:
        assert result.reason.startswith("kept ivdnet-lumbar active: the new version validates better on 1 held-out")
        assert "names 1 of 1 other cases differently from ivdnet-lumbar" in result.reason
        assert re.search(r"unseen: \S+ was \S+, ", result.reason) and "L4-L5 was L3-L4" in result.reason
    else:
        assert result.reason.startswith("validates better than its parent ivdnet-lumbar")


def test_a_case_whose_image_cannot_be_read_is_left_out_of_the_naming_comparison(monkeypatch, caplog):
    """The comparison guards a promotion; a damaged case must not fail the run that trained."""
    from napari_ivd.training.promotion import compare_versions

    store = _planning_store()

    def unreadable(case_id):
        raise StoreError(f"{case_id}: image chunks missing")

    monkeypatch.setattr(store, "read_image", unreadable)
    bundled = model_folder(None, "ivdnet-lumbar")
    reports = []
    assert run_steps(compare_versions(store, ["new-e"], bundled, bundled, torch.device("cpu")), reports.append) == []
    assert len(reports) == 1 and "new-e" in reports[0].message
    assert "left new-e out of the naming comparison: new-e: image chunks missing" in caplog.text


@pytest.mark.slow
def test_parent_and_child_are_judged_on_the_same_independent_cases_and_a_better_child_becomes_active(
    training_store_template, tmp_path, monkeypatch, capsys
):
    store = _copy(training_store_template, tmp_path)
    # the parent's own proposal, verified unchanged: the only verified case of the store
    volume = store.read_image("VB3-case-01")
    _, proposal = run_steps(predict_case_steps(store, "VB3-case-01", volume, device="cpu"))
    accepted = store.load_proposal("VB3-case-01")
    source = f"model:{proposal.model}"
    store.save_revision("VB3-case-01", accepted.points, accepted.mask_tss, source=source, status="verified")
    assert source == "model:ivdnet-lumbar" and store.case("VB3-case-01").status == "verified"

    scored: dict[str, list[list[str]]] = {"parent": [], "child": []}
    real_evaluate = engine.evaluate_cases

    def parent_scored(model, card, cases, device):  # the parent made 99 mm worse: the child must win
        scored["parent"].append([c.name for c in cases])
        figures = real_evaluate(model, card, cases, device)
        return {**figures, "error_mm": figures["error_mm"] + 99.0}

    def child_scored(model, card, cases, device):
        scored["child"].append([c.name for c in cases])
        return real_evaluate(model, card, cases, device)

    monkeypatch.setattr(finetune, "evaluate_cases", parent_scored)
    monkeypatch.setattr(engine, "evaluate_cases", child_scored)
    result = run_steps(finetune_steps(store, TINY))

    card = result.model.card
    (held_out,) = scored["parent"]
    assert "VB3-case-01" not in held_out and "VB3-case-01" in card["trained_on"]
    assert held_out and scored["child"] == [held_out]  # one validation (one epoch), on the same cases
    assert card["held_out"] == {"cases": held_out, "count": 1}
    assert card["metrics_before"]["validation"]["cases"] == card["metrics"]["validation"]["cases"] == held_out
    assert card["train_only"] == {
        "VB3-case-01": "accepted unchanged from ivdnet-lumbar's proposal: trains, cannot judge it"
    }
    assert result.activated and active_choice(store).key == result.model.model_id
    assert store.active_model().reason.startswith("validates better than its parent ivdnet-lumbar on 1 held-out case:")

    after, before = result.after["error_mm"], result.before["error_mm"]
    shown = f"fine-tuned from ivdnet-lumbar: {after:.2f} mm vs parent {before:.2f} mm on 1 held-out case"
    assert active_choice(store).label(active=True) == f"★ {result.model.model_id} ({shown})"
    bundled = next(c for c in model_choices(store) if c.key == "ivdnet-lumbar")
    assert re.fullmatch(
        r"ivdnet-lumbar \(bundled; \d+\.\d\d mm on its card's dev set, not this store's\)", bundled.label()
    )
    assert main(["store", "info", store.location]) == 0
    info = capsys.readouterr().out
    assert f"  active: {result.model.model_id} ({shown})" in info and f"  ★ {result.model.model_id} ({shown})" in info


def store_added(store: AnnotationStore, model_id: str) -> str:
    return next(m.added_utc for m in store.list_models() if m.model_id == model_id)


@pytest.mark.slow
def test_a_diverging_loss_stops_with_a_clear_message_and_writes_nothing(training_store_template, tmp_path, monkeypatch):
    from napari_ivd.models.losses import IvdLoss

    real_forward = IvdLoss.forward

    def nan_loss(self, output, batch):
        total, parts = real_forward(self, output, batch)
        return total * float("nan"), parts

    monkeypatch.setattr(IvdLoss, "forward", nan_loss)
    store = _copy(training_store_template, tmp_path)
    with pytest.raises(TrainingError, match=r"loss became nan.*nothing more was saved.*learning rate"):
        run_steps(finetune_steps(store, TINY))
    assert store.list_models() == [] and store.active_model() is None


@pytest.mark.slow
def test_cancelling_a_run_writes_nothing(training_store_template, tmp_path):
    store = _copy(training_store_template, tmp_path)
    steps = iter(finetune_steps(store, FineTuneConfig(epochs=5, samples_per_epoch=4, batch_size=2, device="cpu")))
    for report in steps:
        if report.detail.name == "training":
            break
    steps.close()  # what a worker's cancel amounts to
    assert store.list_models() == [] and store.active_model() is None


def test_a_damaged_stored_parent_is_refused_clearly(training_store_template, tmp_path):
    store = _copy(training_store_template, tmp_path)
    bundled = model_folder(None, None)
    info = store.add_model(bundled, model_id="copy-of-starter")
    weights = Path(store.location) / "models" / info.model_id / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(StoreError, match="do not match their sha256"):
        run_steps(finetune_steps(store, TINY, parent="copy-of-starter"))
    with pytest.raises(TrainingError, match="no model 'nope'"):
        run_steps(finetune_steps(store, TINY, parent="nope"))


def test_pt_weights_load_without_unpickling_and_misfits_are_named(tmp_path):
    model, _ = load_checkpoint(model_folder(None, None))
    good = tmp_path / "finetuned.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, good)
    folder = model_folder(None, good)
    loaded, card = load_checkpoint(folder)
    assert card["imported_from"] == str(good.resolve()) and card["skeleton"]
    pairs = zip(loaded.state_dict().values(), model.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    misfit = tmp_path / "other.pt"
    torch.save({"head.weight": torch.zeros(3)}, misfit)
    with pytest.raises(CheckpointError, match=r"does not fit the 'ivdnet' model.*unexpected: head.weight"):
        model_folder(None, misfit)

    class Payload:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    hostile = tmp_path / "hostile.pt"
    torch.save({"x": Payload()}, hostile)
    with pytest.raises(CheckpointError, match="never pickled objects"):
        model_folder(None, hostile)
    text = tmp_path / "notes.pt"
    text.write_text("not weights")
    with pytest.raises(CheckpointError, match="not a PyTorch weights file"):
        model_folder(None, text)


def test_card_json_of_a_stored_version_is_plain_json(training_store_template, tmp_path):
    store = _copy(training_store_template, tmp_path)
    info = store.add_model(model_folder(None, None), model_id="starter-copy")
    exported = model_folder(store, "starter-copy")
    assert json.loads((exported / "card.json").read_text())["name"] == "ivdnet"
    assert exported == model_folder(store, "starter-copy")  # exported once, reused
    assert info.model_id in [c.key for c in model_choices(store)]
