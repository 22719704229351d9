"""A case whose levels may be counted wrong (a transitional vertebra) trains masks, never names, and judges nothing.

A lumbosacral transitional vertebra leaves the count open: the points sit on the right
structures, under names that may be one level off. The researcher marks the case once
(the annotator's check box, ``store names-unsure``, ``import --names-unsure``); the store
keeps the mark with the case, fine-tuning teaches its masks but no level heatmap, offset,
label or skeleton shape, and the case is never held out to validate nor used to compare a
new version's names.
"""

from __future__ import annotations

import dataclasses
import json
import uuid

import numpy as np
import pytest
import torch
from qtpy.QtCore import Qt

from _arch_contract import seeded_single_thread  # noqa: F401 (autouse fixture)
from napari_ivd.annotator import Annotator
from napari_ivd.cli import main
from napari_ivd.errors import StoreError, TrainingError
from napari_ivd.io import write_nifti
from napari_ivd.io.annotations import LabelledPoint
from napari_ivd.io.volume import Volume
from napari_ivd.models import build, registry
from napari_ivd.models.unet import UNetConfig
from napari_ivd.progress import run_steps
from napari_ivd.store import AnnotationStore
from napari_ivd.store import schema as store_schema
from napari_ivd.training.cases import labels_of
from napari_ivd.training.data import SampleConfig, SliceDataset
from napari_ivd.training.engine import fit_skeleton
from napari_ivd.training.store_cases import NAMES_UNSURE, labelled_case, plan_training
from phantom_support import phantom_bodies, phantom_case
from widget_support import CASE_ID, docked_annotator, make_store

LUMBAR = ("L2", "L3", "L4", "L5", "S1")
CFG = SampleConfig(labels=("L3", "L4", "L5", "L5-S1"), crop=(96, 64), caudal_context_mm=0.0)


def _store(n_cases: int = 1) -> AnnotationStore:
    """A memory store holding the phantom spine as ``spine`` (L2-L4 points, the mask of every body) and copies."""
    store = AnnotationStore.open(f"memory://unsure-{uuid.uuid4().hex}", create=True)
    case, _ = phantom_case(LUMBAR, set(LUMBAR))
    points = [LabelledPoint(name, tuple(phantom_bodies(LUMBAR)[name])) for name in ("L2", "L3", "L4")]
    for n in range(n_cases):  # other scans: the image flipped and shifted, so no two share voxels
        array = case.volume.array if n == 0 else np.roll(case.volume.array[::-1], n, axis=0).copy()
        case_id = "spine" if n == 0 else f"other-{n}"
        store.add_case(Volume(array, case.volume.geometry, case.volume.path), case_id)
        store.save_revision(case_id, points, case.mask_tss, author="dr-test")
    return store


# --- the store ------------------------------------------------------------------------------------


def test_the_mark_belongs_to_the_case_survives_saves_and_reopening_and_can_be_cleared(tmp_path):
    case, _ = phantom_case(LUMBAR, set(LUMBAR))
    store = AnnotationStore.open(tmp_path / "a.zarr", create=True)
    store.add_case(case.volume, "spine")
    assert store.case("spine").names_unsure is False
    assert store.set_names_unsure("spine").names_unsure is True
    store.save_revision("spine", [LabelledPoint("L3", tuple(phantom_bodies(LUMBAR)["L3"]))], None)
    reopened = AnnotationStore.open(tmp_path / "a.zarr")
    assert reopened.case("spine").names_unsure is True and reopened.case("spine").head == "r000001"
    assert reopened.info()["cases"][0]["names_unsure"] is True
    assert reopened.check().ok
    assert reopened.set_names_unsure("spine", False).names_unsure is False
    assert AnnotationStore.open(tmp_path / "a.zarr").case("spine").names_unsure is False


def test_a_head_without_the_mark_reads_as_sure_and_an_unknown_case_is_a_store_error():
    store = _store()
    head = json.loads(store.reader.keys.get(store_schema.case_key("spine", store_schema.HEAD)))
    assert "names_unsure" not in head  # byte for byte the HEAD an older napari-ivd wrote
    with pytest.raises(StoreError, match="nope"):
        store.set_names_unsure("nope")


def test_the_command_line_marks_clears_lists_and_imports_with_the_mark(tmp_path, capsys):
    case, _ = phantom_case(LUMBAR, set(LUMBAR))
    image = tmp_path / "spine.nii.gz"
    write_nifti(image, case.volume.array, case.volume.geometry)
    location = tmp_path / "a.zarr"
    assert main(["import", str(image), "--store", str(location), "--names-unsure"]) == 0
    assert AnnotationStore.open(location).case("spine").names_unsure is True
    capsys.readouterr()
    assert main(["store", "info", str(location)]) == 0
    assert "names unsure" in capsys.readouterr().out
    assert main(["store", "names-sure", str(location), "spine"]) == 0
    assert capsys.readouterr().out.startswith("case spine: new, head -")
    assert AnnotationStore.open(location).case("spine").names_unsure is False
    assert main(["store", "names-unsure", str(location), "spine"]) == 0
    assert "level names unsure (trains masks only)" in capsys.readouterr().out
    assert main(["store", "names-unsure", str(location)]) == 2  # which case? said, not a traceback
    assert "marks one case" in capsys.readouterr().err
    assert main(["export", "--store", str(location), "--case", "spine", "--out", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "annotation.json").read_text())["names_unsure"] is True


# --- training -------------------------------------------------------------------------------------


def _samples(case) -> list[dict[str, torch.Tensor]]:
    dataset = SliceDataset([case], CFG, samples_per_epoch=1)
    return [dataset.sample(0, s, np.random.default_rng(s)) for s in (5, 7, 9)]


def test_an_unsure_case_teaches_no_level_but_its_mask():
    case, _ = phantom_case(LUMBAR, set(LUMBAR))
    assert all(s["visible"].sum() > 0 for s in _samples(case))  # the same case, sure of its names, teaches them
    for sample in _samples(dataclasses.replace(case, names_unsure=True, absent=frozenset({"L5-S1"}))):
        assert not sample["visible"].any() and not sample["heatmap"].any() and not sample["offset_mask"].any()
        assert torch.isnan(sample["keypoints"]).all()
        seg, valid = sample["seg"], sample["seg_valid"]
        assert seg.sum() > 0 and torch.all(valid[seg > 0] == 1)  # the bodies, known
        assert ((valid > 0) & (seg == 0)).any()  # and background between them, known too


def test_through_a_real_networks_loss_an_unsure_case_moves_the_masks_and_no_heatmap():
    case, _ = phantom_case(LUMBAR, set(LUMBAR))
    unsure = dataclasses.replace(case, names_unsure=True)
    batch = torch.utils.data.default_collate(_samples(unsure)[:2])
    config = UNetConfig(labels=CFG.labels, base_channels=4, depth=2)
    net, loss_fn = build("unet", config).train(), registry.loss_for("unet", config).train()
    outputs = {k: v.detach().requires_grad_(True) for k, v in net(batch["image"]).items()}
    total, _ = loss_fn(outputs, batch)
    total.backward()
    assert torch.all(outputs["heatmap"].grad == 0), "no level may be learnt from an unsure case"
    assert outputs["seg"].grad.abs().sum() > 0, "its masks must be learnt"


def test_an_unsure_case_adds_no_label_and_shapes_no_skeleton():
    case, _ = phantom_case(LUMBAR, set(LUMBAR))
    one_down = {"L3": "L2", "L4": "L3", "L5": "L4", "S1": "L5"}  # the chain named one level too low
    shifted = dataclasses.replace(
        case, keypoints_vox={name: case.keypoints_vox[was] for name, was in one_down.items()}, names_unsure=True
    )
    higher = dataclasses.replace(shifted, keypoints_vox={"L1": case.keypoints_vox["L2"]})
    assert labels_of([case, shifted, higher]) == labels_of([case]) == LUMBAR  # no L1 from an unsure case
    sure = fit_skeleton([case, dataclasses.replace(shifted, names_unsure=False)], LUMBAR).to_dict()
    assert fit_skeleton([case, shifted], LUMBAR).to_dict() == fit_skeleton([case], LUMBAR).to_dict() != sure


def test_fine_tuning_reads_the_mark_trains_on_the_case_and_never_judges_or_compares_on_it():
    store = _store(n_cases=3)
    store.set_names_unsure("spine")
    spine = store.read_image("spine")
    store.add_case(Volume(spine.array[:, ::-1].copy(), spine.geometry, spine.path), "waiting")
    store.set_names_unsure("waiting")  # unsure and uncorrected: not compared on either
    plan = plan_training(store, validation_fraction=0.5)
    assert "spine" in {c.case_id for c in plan.train} and "spine" not in {c.case_id for c in plan.validation}
    assert [c.case_id for c in plan.validation] and dict(plan.train_only)["spine"] == NAMES_UNSURE
    assert plan.compared == ()
    assert f"train only ({NAMES_UNSURE}): spine" in plan.describe()
    learnt = labelled_case(store, next(c for c in plan.train if c.case_id == "spine"))
    assert learnt.names_unsure and learnt.mask_tss is not None

    store.set_names_unsure("waiting", False)
    assert plan_training(store, validation_fraction=0.5).compared == ("waiting",)


def test_an_unsure_case_with_points_but_no_mask_teaches_nothing_and_the_plan_says_why():
    store = _store()
    store.save_revision("spine", [LabelledPoint("L3", tuple(phantom_bodies(LUMBAR)["L3"]))], None)
    store.set_names_unsure("spine")
    with pytest.raises(TrainingError, match="spine: level names unsure and no vertebra or disc in its mask"):
        plan_training(store)


# --- the annotator --------------------------------------------------------------------------------


def test_the_core_annotator_opens_the_mark_and_stores_it():
    store = _store()
    annotator = Annotator(store)
    annotator.open("spine")
    assert annotator.names_unsure is False
    assert run_steps(annotator.names_unsure_steps(True)).names_unsure is True
    assert annotator.names_unsure is True and store.case("spine").names_unsure is True
    annotator.open("spine")
    assert annotator.names_unsure is True


@pytest.mark.slow
def test_ticking_the_box_marks_the_open_case_and_the_train_plan_says_it_trains_masks_only(
    make_napari_viewer, qtbot, shared_data, tmp_path
):
    location = make_store(tmp_path, shared_data, with_annotations=True)
    _viewer, widget = docked_annotator(make_napari_viewer)
    widget.auto_predict.setChecked(False)
    assert not widget.names_unsure_box.isEnabled()  # no case open
    with qtbot.waitSignal(widget.case_opened, timeout=30_000):
        widget.open_store(location)
        widget.after_job(lambda: widget.open_case(CASE_ID))
    assert widget.names_unsure_box.isEnabled() and not widget.names_unsure_box.isChecked()

    with qtbot.waitSignal(widget.job_done, timeout=30_000):
        qtbot.mouseClick(widget.names_unsure_box, Qt.MouseButton.LeftButton)
    assert widget.names_unsure_box.isChecked()
    assert AnnotationStore.open(location).case(CASE_ID).names_unsure is True
    assert f"train only ({NAMES_UNSURE}): {CASE_ID}" in widget.train_panel.plan_label.text()
    assert not widget.annotator.has_unsaved_changes()  # a case mark, not an edit to save
    row = widget.table.case_ids().index(CASE_ID)
    assert widget.table.item(row, 1).text() == "in progress · names unsure"
    assert widget.table.statuses()[CASE_ID] == "in progress"  # Next case still reads the status

    widget.use_store(AnnotationStore.open(location))  # opened again: the box shows the stored mark
    assert not widget.names_unsure_box.isChecked()
    with qtbot.waitSignal(widget.case_opened, timeout=30_000):
        widget.open_case(CASE_ID)
    assert widget.names_unsure_box.isChecked()

    with qtbot.waitSignal(widget.job_done, timeout=30_000):
        qtbot.mouseClick(widget.names_unsure_box, Qt.MouseButton.LeftButton)
    assert not widget.names_unsure_box.isChecked() and widget.table.item(row, 1).text() == "in progress"
    assert AnnotationStore.open(location).case(CASE_ID).names_unsure is False


def test_a_store_write_that_fails_leaves_the_box_as_the_store_has_it(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    store = _store()
    _viewer, widget = docked_annotator(make_napari_viewer)
    widget.auto_predict.setChecked(False)
    with qtbot.waitSignal(widget.case_opened, timeout=30_000):
        widget.use_store(store)
        widget.open_case("spine")

    def refused(*_args, **_kwargs):
        raise StoreError("the store is locked by someone else")

    monkeypatch.setattr(store, "set_names_unsure", refused)
    with qtbot.waitSignal(widget.job_done, timeout=30_000):
        qtbot.mouseClick(widget.names_unsure_box, Qt.MouseButton.LeftButton)
    assert not widget.names_unsure_box.isChecked() and store.case("spine").names_unsure is False
