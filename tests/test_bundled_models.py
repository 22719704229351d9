"""Every bundled model is a real, trained entry: it loads through safetensors, has its card, predicts.

The starter model is covered in depth by ``test_predict.py``; here every bundled model (the
seed architectures of docs/models.md included) goes through ``predict --model NAME`` on a
real scan and through the viewer's Model list.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_ivd.cli import main
from napari_ivd.models import (
    BUNDLED_MODELS_DIR,
    DEFAULT_MODEL,
    available,
    bundled_model_names,
    find_model_dir,
    load_checkpoint,
    read_card,
)
from napari_ivd.store import AnnotationStore
from widget_support import CASE_ID, copy_store, docked_annotator, make_store

SCAN = "lumbar/VB3/case-01/image.nii.gz"  # 224 x 224 x 77, vertebral bodies L1-L5
MAX_BUNDLED_MB = 20.0
SEED_MODELS = [name for name in bundled_model_names() if name != DEFAULT_MODEL]


def test_the_default_comes_first_and_the_bundle_stays_small():
    assert bundled_model_names()[0] == DEFAULT_MODEL
    assert SEED_MODELS  # the seed architectures of docs/models.md ship as trained entries too
    total = sum(f.stat().st_size for f in BUNDLED_MODELS_DIR.glob("*/*") if f.is_file())
    assert total <= MAX_BUNDLED_MB * 1e6


@pytest.mark.parametrize("name", bundled_model_names())
def test_bundled_model_has_its_card_and_predicts_on_a_real_scan(name, shared_data, tmp_path):
    folder = find_model_dir(name)
    card = read_card(folder)
    assert card["name"] in available()
    model_card = (folder / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert card["command"] in model_card and "GPL-3.0" in model_card  # how it was trained, on what licence
    load_checkpoint(folder)  # strict: every weight matches its architecture

    out = tmp_path / "out"
    image_path = shared_data / SCAN
    assert main(["predict", str(image_path), "--out", str(out), "--model", name, "--device", "cpu"]) == 0
    image = nib.load(image_path)
    for written in ("mask.nii.gz", "discs.nii.gz"):
        assert nib.load(out / written).shape == image.shape
        assert np.array_equal(nib.load(out / written).affine, image.affine)
    levels = json.loads((out / "prediction.json").read_text())["levels"]
    assert set(levels) <= set(card["labels"])


def test_a_seed_model_is_picked_in_the_viewer_and_its_proposal_names_it(
    make_napari_viewer, qtbot, shared_data, tmp_path_factory, tmp_path
):
    location = copy_store(make_store(tmp_path_factory.mktemp("seed"), shared_data, with_annotations=False), tmp_path)
    _viewer, widget = docked_annotator(make_napari_viewer)
    widget.auto_predict.setChecked(False)
    widget.open_store(location)
    with qtbot.waitSignal(widget.case_opened, timeout=30_000):
        widget.table.selectRow(0)
    entries = [widget.model_box.itemData(i) for i in range(widget.model_box.count())]
    assert entries[: len(bundled_model_names())] == bundled_model_names()
    seed = SEED_MODELS[0]
    widget.model_box.setCurrentIndex(entries.index(seed))
    with qtbot.waitSignal(widget.predicted, timeout=180_000):
        qtbot.mouseClick(widget.predict_button, Qt.MouseButton.LeftButton)
    [proposal] = AnnotationStore.open(location).proposals(CASE_ID)
    assert proposal.model == seed
