"""The core stays free of Qt and napari, so it runs in scripts, CLIs and clusters."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CORE_MODULES = [
    "napari_ivd.active",
    "napari_ivd.anatomy",
    "napari_ivd.annotator",
    "napari_ivd.corrections",
    "napari_ivd.errors",
    "napari_ivd.io",
    "napari_ivd.layer_data",
    "napari_ivd.data",
    "napari_ivd.inference",
    "napari_ivd.metrics",
    "napari_ivd.model_versions",
    "napari_ivd.models",
    "napari_ivd.preprocess",
    "napari_ivd.progress",
    "napari_ivd.skeleton",
    "napari_ivd.store",
    "napari_ivd.training.engine",
    "napari_ivd.worklist",
]


def test_importing_core_modules_loads_neither_qt_nor_napari():
    probe = (
        f"import sys; import {', '.join(CORE_MODULES)}; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'vispy'}); "
        "print(','.join(bad))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_import_linter_contract_holds():
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if lint_imports is None:
        pytest.fail("import-linter is part of the testing extra; install it with .[testing]")
    result = subprocess.run([lint_imports], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
