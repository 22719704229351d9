"""``napari-ivd train``: fine-tuning from a store (headless, under torchrun too) and training from a folder."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from napari_ivd.cli import build_parser, main
from napari_ivd.model_versions import model_folder
from napari_ivd.models import find_model_dir, load_checkpoint, read_card
from napari_ivd.store import AnnotationStore
from napari_ivd.training.data import AUGMENTATIONS, ROBUST_AUGMENTATION


@pytest.mark.slow
def test_train_from_a_store_adds_a_model_version_and_says_whether_it_is_active(
    training_store_template, tmp_path, capsys
):
    location = shutil.copytree(training_store_template, tmp_path / "annotations.zarr")
    assert main(["train", "--store", str(location), "--epochs", "1", "--device", "cpu", "--author", "cli"]) == 0
    out = capsys.readouterr().out
    store = AnnotationStore.open(location)
    [version] = store.list_models()
    assert f"new model version {version.model_id} (parent ivdnet-lumbar)" in out
    assert ("ACTIVE: " in out) == (store.active_model() is not None)
    assert "[training] epoch 1 of 1" in out and version.card["author"] == "cli"


def test_train_from_a_store_without_corrected_cases_fails_clearly(tmp_path, capsys):
    location = tmp_path / "empty.zarr"
    AnnotationStore.open(location, create=True)
    assert main(["train", "--store", str(location), "--epochs", "1"]) != 0
    err = capsys.readouterr().err
    assert "at least 1 corrected or verified case" in err and "Traceback" not in err


@pytest.mark.slow
def test_train_from_a_store_with_one_corrected_case_stores_an_unjudged_version_not_active(
    training_store_template, tmp_path, capsys
):
    location = shutil.copytree(training_store_template, tmp_path / "annotations.zarr")
    store = AnnotationStore.open(location)
    for case_id in ("VB3-case-02", "VB3-case-03"):  # their references become unchecked proposals
        head = store.load(case_id)
        store.save_revision(case_id, head.points, head.mask_tss, source="model:ivdnet-lumbar")
    args = ["train", "--store", str(location), "--epochs", "1", "--device", "cpu"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "[reading] learns from 1 corrected case; no independent case to validate on" in out
    assert "[baseline]" not in out  # nothing to score the parent on
    [version] = AnnotationStore.open(location).list_models()
    assert "not active: no independent held-out case: not judged; Make active by hand if you trust it" in out
    assert AnnotationStore.open(location).active_model() is None
    card = version.card
    parent_seen = read_card(find_model_dir("ivdnet-lumbar"))["trained_on"]
    assert card["trained_on"] == [*parent_seen, "VB3-case-01"]  # what the parent saw, then the correction
    assert card["held_out"] == {"cases": [], "count": 0}
    assert card["metrics"]["validation"] is None and card["metrics_before"]["validation"] is None
    load_checkpoint(model_folder(store, version.model_id))  # a whole model, weights matching the card
    assert main(["store", "info", str(location)]) == 0
    info = capsys.readouterr().out
    assert f"  {version.model_id} (fine-tuned from ivdnet-lumbar: not judged, no independent held-out case)" in info
    assert re.search(r"  active: ivdnet-lumbar \(bundled; \d+\.\d\d mm on its card's dev set, not this store's\)", info)


def test_train_needs_one_source_and_one_budget(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--epochs", "1"])
    with pytest.raises(SystemExit):
        main(["train", "--store", "s.zarr", "--epochs", "1", "--minutes", "2"])
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize("recipe", sorted(AUGMENTATIONS))
def test_train_offers_every_augmentation_recipe(recipe):
    assert (
        build_parser().parse_args(["train", "--data", "d", "--out", "o", "--augmentation", recipe]).augmentation
        == recipe
    )


@pytest.mark.slow
def test_torchrun_two_cpu_processes_write_one_valid_model_version(training_store_template, tmp_path):
    location = shutil.copytree(training_store_template, tmp_path / "annotations.zarr")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        "-m",
        "napari_ivd.cli",
        "train",
        "--store",
        str(location),
        "--epochs",
        "1",
        "--device",
        "cpu",
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sum(line.startswith("new model version") for line in done.stdout.splitlines()) == 1  # rank 0 only
    store = AnnotationStore.open(location)
    [version] = store.list_models()
    assert version.card["processes"] == 2 and version.card["device"] == "cpu"
    load_checkpoint(model_folder(store, version.model_id))  # weights and card agree, through safetensors
    assert store.check().ok


@pytest.fixture
def small_lumbar(shared_data: Path, tmp_path: Path) -> Path:
    """Four T2w cases in the lumbar layout: three to train on, one held out."""
    root = tmp_path / "lumbar"
    for name in ("IVD/case-20", "VB2/case-07", "VB2/case-12", "VB2/case-14"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(shared_data / "lumbar" / name)
    return root


@pytest.mark.slow
def test_train_from_a_folder_on_stacked_slices_and_continue_from_it(small_lumbar, tmp_path):
    """--in-channels 3 trains a 2.5D model; --init continues it with the slices its weights expect."""
    first, second = tmp_path / "first", tmp_path / "second"
    common = ["--lumbar", str(small_lumbar), "--epochs", "1", "--device", "cpu", "--dev-fraction", "0.25"]
    assert main(["train", *common, "--in-channels", "3", "--out", str(first)]) == 0
    robust = ["--augmentation", "robust"]
    assert main(["train", *common, "--init", str(first), "--out", str(second), "--lr", "1e-4", *robust]) == 0
    for folder in (first, second):
        card = read_card(folder)
        assert card["config"]["in_channels"] == card["input"]["in_channels"] == 3
        assert card["sample_config"]["in_channels"] == 3
    assert "init_from" not in read_card(first)
    # the recipe asked for is the one trained with (and recorded), not the parent's
    assert read_card(first)["sample_config"]["remap_probability"] == 0.0
    assert read_card(second)["sample_config"]["remap_probability"] == ROBUST_AUGMENTATION["remap_probability"]
    assert read_card(second)["init_from"] == {"folder": "first", "weights_sha256": read_card(first)["weights_sha256"]}
    model, _ = load_checkpoint(second)
    assert next(model.parameters()).shape[1] == 3  # the stem's first convolution takes three slices


def test_train_from_a_parent_that_saw_every_dev_case_is_refused_before_training(small_lumbar, tmp_path, capsys):
    """The starter trained on all four cases: none can judge its child, so nothing trains."""
    out = tmp_path / "child"
    args = ["--lumbar", str(small_lumbar), "--init", "ivdnet-lumbar", "--out", str(out), "--dev-fraction", "0.25"]
    assert main(["train", *args, "--epochs", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "every dev case of this split is one ivdnet-lumbar trained on" in err and "another --seed" in err
    assert not out.exists()


def test_train_from_a_folder_rejects_even_or_conflicting_slice_stacks(small_lumbar, tmp_path, capsys):
    out = ["--lumbar", str(small_lumbar), "--epochs", "1", "--out", str(tmp_path / "m")]
    assert main(["train", *out, "--in-channels", "2"]) == 2
    assert main(["train", *out, "--in-channels", "3", "--init", str(tmp_path / "parent")]) == 2
    err = capsys.readouterr().err
    assert "--in-channels: in_channels must be odd (centred on the slice of interest), not 2" in err
    assert "keeps the parent's" in err
