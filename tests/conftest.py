"""Shared fixtures: the real scans in ../shared/data and an isolated napari config."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest


def _scratch_folder(prefix: str) -> str:
    """A temporary folder for this test run, removed when the run ends."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


# napari writes its settings to the home folder unless told otherwise; keep tests hermetic.
os.environ.setdefault("NAPARI_CONFIG", os.path.join(_scratch_folder("napari-ivd-test-"), "settings.yaml"))
# stored model versions and converted .pt files are exported to a cache folder; keep it per test run.
os.environ.setdefault("NAPARI_IVD_MODEL_CACHE", _scratch_folder("napari-ivd-models-"))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NAPARI_IVD_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real, labelled spine MRI (``../shared/data``); skips when absent."""
    if not (SHARED_DATA / "MANIFEST.md").is_file():
        pytest.skip(f"real spine MRI not found at {SHARED_DATA} (set NAPARI_IVD_SHARED_DATA)")
    return SHARED_DATA


#: Water cases with reference vertebrae, disc points and masks: small (224x224x77), quick to train on.
TRAINING_CASES = ("VB3/case-01", "VB3/case-02", "VB3/case-03")


@pytest.fixture(scope="session")
def training_store_template(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of three real water cases whose reference annotations are manual revisions (read-only: copy it)."""
    from napari_ivd.io import read_volume
    from napari_ivd.io.annotations import find_annotations
    from napari_ivd.store import AnnotationStore

    location = tmp_path_factory.mktemp("training-store") / "annotations.zarr"
    store = AnnotationStore.open(location, create=True, fsync=False)
    for name in TRAINING_CASES:
        case_dir = shared_data / "lumbar" / name
        volume = read_volume(case_dir / "image.nii.gz")
        points, mask = find_annotations(case_dir, volume.geometry)
        store.add_case(volume, name.replace("/", "-"), points=points, mask=mask, author="reference")
    return location


@pytest.fixture
def child_better_but_renaming(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fine-tuning where the new version validates better (its parent scored 99 mm) and names one level off.

    On every case the run compares (:mod:`napari_ivd.training.promotion`), the new version (the
    model whose card names a parent) calls each structure by the name of the one below it,
    at its parent's places: the chain a single held-out case cannot see.
    """
    from dataclasses import replace

    from napari_ivd import anatomy
    from napari_ivd.training import finetune, promotion

    real_evaluate, real_predict = finetune.evaluate_cases, promotion.predict

    def parent_scored(*args, **kwargs):
        return {**real_evaluate(*args, **kwargs), "error_mm": 99.0}

    def predict_renaming(volume, model, card, device):
        prediction = real_predict(volume, model, card, device)
        if not card.get("parent"):
            return prediction
        kept = [s for s in prediction.structures if s.name not in ("L5", "L5-S1", "S1")]
        return replace(prediction, structures=tuple(replace(s, name=anatomy.shift(s.name, 1).name) for s in kept))

    monkeypatch.setattr(finetune, "evaluate_cases", parent_scored)
    monkeypatch.setattr(promotion, "predict", predict_renaming)
