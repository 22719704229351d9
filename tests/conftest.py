"""Shared fixtures: the real scans in ../shared/data and an isolated napari config."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# napari writes its settings to the home folder unless told otherwise; keep tests hermetic.
os.environ.setdefault("NAPARI_CONFIG", os.path.join(tempfile.mkdtemp(prefix="napari-ivd-test-"), "settings.yaml"))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NAPARI_IVD_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real, labelled spine MRI (``../shared/data``); skips when absent."""
    if not (SHARED_DATA / "MANIFEST.md").is_file():
        pytest.skip(f"real spine MRI not found at {SHARED_DATA} (set NAPARI_IVD_SHARED_DATA)")
    return SHARED_DATA
