"""Shared fixtures: the real scans in ../shared/data and an isolated napari config."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# napari writes its settings to the home folder unless told otherwise; keep tests hermetic.
os.environ.setdefault("NAPARI_CONFIG", os.path.join(tempfile.mkdtemp(prefix="napari-ivd-test-"), "settings.yaml"))
# stored model versions and converted .pt files are exported to a cache folder; keep it per test run.
os.environ.setdefault("NAPARI_IVD_MODEL_CACHE", tempfile.mkdtemp(prefix="napari-ivd-models-"))

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
