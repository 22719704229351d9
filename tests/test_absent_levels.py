"""A level a researcher marks absent (not present in this scan) is known background, unlike one left unannotated.

A sacralised L5 has no L5-S1 disc: the researcher says so once (the ranking's *Delete
missing*, :meth:`Annotator.mark_absent`), the revision keeps it (``absent``), fine-tuning
teaches the level as background, and the ranking stops calling it missing
(``test_active.py``). Every level nobody marked stays unknown (``test_unknown_not_absent.py``).
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from _arch_contract import seeded_single_thread  # noqa: F401 (autouse fixture)
from napari_ivd.annotator import Annotator, Saved
from napari_ivd.cli import main
from napari_ivd.errors import CorrectionError, StoreError, TrainingError
from napari_ivd.io import write_nifti
from napari_ivd.io.annotations import LabelledPoint
from napari_ivd.io.volume import Volume
from napari_ivd.models import build, registry
from napari_ivd.models.unet import UNetConfig
from napari_ivd.store import AnnotationStore, export_revision, import_case
from napari_ivd.store import schema as store_schema
from napari_ivd.store import store as store_module
from napari_ivd.training.data import SampleConfig, SliceDataset
from napari_ivd.training.store_cases import labelled_case, plan_training
from phantom_support import PHANTOM_CFG, phantom_bodies, phantom_case

LUMBAR = ("L2", "L3", "L4", "L5", "S1")


def _memory_store() -> AnnotationStore:
    return AnnotationStore.open(f"memory://absent-{uuid.uuid4().hex}", create=True)


def _phantom_store(tmp_path: Path | None = None) -> tuple[AnnotationStore, list[LabelledPoint]]:
    """A store holding the phantom spine L2-S1 as case ``spine``, and its L2-L4 points (no revision yet)."""
    case, _ = phantom_case(LUMBAR, set(LUMBAR))
    store = _memory_store() if tmp_path is None else AnnotationStore.open(tmp_path / "a.zarr", create=True)
    store.add_case(case.volume, "spine")
    points = [LabelledPoint(name, tuple(phantom_bodies(LUMBAR)[name])) for name in ("L2", "L3", "L4")]
    return store, points


# --- the store ------------------------------------------------------------------------------------


def test_absent_levels_are_kept_by_a_revision_canonical_and_read_back_after_reopening(tmp_path):
    store, points = _phantom_store(tmp_path)
    saved = store.save_revision("spine", points, None, absent=["l5s1", "L5 - S1"])
    assert saved.absent == ("L5-S1",)
    reopened = AnnotationStore.open(tmp_path / "a.zarr")
    assert reopened.load("spine").absent == ("L5-S1",) and reopened.revision("spine").absent == ("L5-S1",)
    assert reopened.check().ok

    # a later revision without absent levels has none: each revision says what it knows
    reopened.save_revision("spine", points, None)
    assert reopened.load("spine").absent == () and reopened.load("spine", 1).absent == ("L5-S1",)
    # restoring the older revision brings its absent levels back
    assert reopened.restore("spine", 1).absent == ("L5-S1",)


def test_a_revision_written_without_the_field_reads_as_nothing_absent():
    """Stores written before absent levels existed: their records have no ``absent`` key (as ours without any)."""
    store, points = _phantom_store()
    store.save_revision("spine", points, None)
    record = store.reader.record("spine", store_schema.REVISIONS, "r000001")
    assert "absent" not in record  # byte for byte the record an older napari-ivd wrote
    assert store.revision("spine").absent == () and store.load("spine").absent == ()
    assert store.check().ok


def test_a_level_both_pointed_and_absent_is_refused_and_nothing_is_saved():
    store, points = _phantom_store()
    with pytest.raises(StoreError, match=r"spine: L3 has a point and is marked absent"):
        store.save_revision("spine", points, None, absent=["L3"])
    assert store.case("spine").head is None


def test_store_check_reports_a_committed_revision_whose_absent_level_has_a_point(monkeypatch):
    """Written by a writer without the rule (an older or foreign one): committed, digests whole, content wrong."""
    store, points = _phantom_store()
    monkeypatch.setattr(store_module, "check_absent", lambda absent, points, where: tuple(absent))
    store.save_revision("spine", points, None, absent=["L3"])
    report = store.check()
    assert report.problems == [
        "absent levels: case spine r000001: L3 has a point and is marked absent; a level is "
        "either annotated or absent: delete the point or unmark the level"
    ]


def test_diff_names_the_levels_marked_absent_and_no_longer_absent_also_on_the_command_line(tmp_path, capsys):
    store, points = _phantom_store(tmp_path)
    store.save_revision("spine", points, None)
    store.save_revision("spine", points, None, absent=["L5-S1", "L5"])
    store.save_revision("spine", points, None, absent=["L5"])  # L5-S1 found after all: the mark taken back
    marked = store.diff("spine", "r000001", "r000002")
    assert (marked.now_absent, marked.no_longer_absent) == (("L5", "L5-S1"), ())
    assert "L5       marked absent\n  L5-S1    marked absent" in marked.format()
    taken_back = store.diff("spine", "r000002")  # to the head
    assert (taken_back.now_absent, taken_back.no_longer_absent) == ((), ("L5-S1",))

    location = str(tmp_path / "a.zarr")
    assert main(["store", "diff", location, "spine"]) == 0  # the head's parent to the head
    printed = capsys.readouterr().out
    assert "case spine: r000002 -> r000003" in printed and "L5-S1    no longer absent" in printed
    assert "marked absent" not in printed  # L5 stays absent: no change to report
    assert main(["store", "diff", location, "spine", "r000001", "r000002"]) == 0
    assert "L5-S1    marked absent" in capsys.readouterr().out
    assert main(["store", "diff", location]) == 2
    assert "store diff STORE CASE [A [B]]" in capsys.readouterr().err


def test_export_writes_the_absent_levels_and_import_reads_them_back(tmp_path):
    store, points = _phantom_store()
    store.save_revision("spine", points, None, absent=["L5-S1"])
    files = export_revision(store, "spine", tmp_path / "out")
    summary = json.loads(files["summary"].read_text())
    assert summary["absent"] == ["L5-S1"] and summary["revision_info"]["absent"] == ["L5-S1"]

    volume = store.read_image("spine")
    image = write_nifti(tmp_path / "spine.nii.gz", volume.array, volume.geometry)
    other = _memory_store()
    info = import_case(other, image, case_id="again", points=files["points"], absent=summary["absent"])
    assert other.load(info.case_id).absent == ("L5-S1",)
    assert [p.level for p in other.load("again").points] == [p.level for p in points]
    # importing only a mask later keeps the head's absent levels
    mask = np.zeros(volume.geometry.shape, np.uint8)
    mask_file = write_nifti(tmp_path / "mask.nii.gz", mask, volume.geometry)
    import_case(other, image, case_id="again", mask=mask_file)
    assert other.load("again").absent == ("L5-S1",)


# --- training -------------------------------------------------------------------------------------

#: L5-S1 is marked absent, L1 is merely not annotated (and not in the phantom at all).
TWO = SampleConfig(labels=("L1", "L5-S1"), crop=(64, 64), caudal_context_mm=0.0)


def _absent_case(absent: frozenset[str]):
    case, _ = phantom_case(LUMBAR, {"L2", "L3", "L4", "L5"})
    return dataclasses.replace(case, absent=absent)


def test_an_absent_levels_heatmap_is_known_negative_on_every_slice_an_unannotated_one_unknown():
    dataset = SliceDataset([_absent_case(frozenset({"L5-S1"}))], TWO, samples_per_epoch=1)
    for slice_index in (0, 7, 14):  # the midline and the outermost slices
        sample = dataset.sample(0, slice_index, np.random.default_rng(slice_index))
        assert sample["visible"].tolist() == [0.0, 1.0], slice_index
        assert not sample["heatmap"][1].any() and not sample["offset_mask"][1].any()
        assert torch.isnan(sample["keypoints"]).all()


def test_the_loss_learns_an_absent_levels_channel_and_nothing_of_an_unannotated_one():
    """Through a real network's loss: the absent channel gets gradient, the unannotated one none."""
    dataset = SliceDataset([_absent_case(frozenset({"L5-S1"}))], TWO, samples_per_epoch=1)
    batch = torch.utils.data.default_collate([dataset.sample(0, 7, np.random.default_rng(n)) for n in range(2)])
    config = UNetConfig(labels=TWO.labels, base_channels=4, depth=2)
    net, loss_fn = build("unet", config).train(), registry.loss_for("unet", config).train()
    outputs = {k: v.detach().requires_grad_(True) for k, v in net(batch["image"]).items()}
    total, _ = loss_fn(outputs, batch)
    total.backward()
    heatmap = outputs["heatmap"].grad
    assert torch.all(heatmap[:, 0] == 0), "L1 is unknown: nothing may be learnt of it"
    assert heatmap[:, 1].abs().sum() > 0, "L5-S1 is absent: its all-zero heatmap must be learnt"


def test_the_mask_background_spans_an_absent_vertebra_between_its_neighbours():
    """Four lumbar vertebrae (L5 absent): L4 and S1 are neighbours, the room between them known background."""
    levels = ("L2", "L3", "L4", "S1")  # S1 right below L4
    case, _ = phantom_case(levels, set(levels))
    cfg = dataclasses.replace(PHANTOM_CFG, labels=("L4", "S1"))
    rows = {}
    for absent in (frozenset(), frozenset({"L5"})):
        marked = dataclasses.replace(case, absent=absent)
        sample = SliceDataset([marked], cfg, samples_per_epoch=1).sample(0, 7, np.random.default_rng(0))
        seg, valid = sample["seg"][0].numpy(), sample["seg_valid"][0].numpy()
        l4, s1 = sample["keypoints"].numpy()[:, 0]  # rows of L4 and S1
        rows[absent] = ((valid > 0) & (seg == 0))[round((l4 + s1) / 2)].any()
    assert rows == {frozenset(): False, frozenset({"L5"}): True}


def test_fine_tuning_reads_a_revisions_absent_levels_into_its_training_case():
    store, points = _phantom_store()
    store.save_revision("spine", points, None, absent=["L5-S1"])
    [planned] = plan_training(store).train
    learnt = labelled_case(store, planned)
    assert learnt.absent == frozenset({"L5-S1"})
    assert sorted(learnt.keypoints_vox) == ["L2", "L3", "L4"]


def test_a_training_case_refuses_a_level_both_annotated_and_marked_absent():
    case, _ = phantom_case(LUMBAR, {"L2", "L3", "L4", "L5"})
    with pytest.raises(ValueError, match=r"phantom/case: \['L3'\] both annotated and marked absent"):
        dataclasses.replace(case, absent=frozenset({"l3", "L5-S1"}))  # any spelling of the name
    assert dataclasses.replace(case, absent=frozenset({"l5s1"})).absent == {"L5-S1"}


def test_a_level_marked_absent_but_painted_in_the_mask_is_taught_as_annotated_with_a_warning(caplog):
    """The store keeps points and absent levels apart, not mask labels: the paint wins, and the log says so."""
    store, points = _phantom_store()
    painted, _ = phantom_case(LUMBAR, set(LUMBAR))  # its mask paints every body, L5 too
    store.save_revision("spine", points, painted.mask_tss, absent=["L5", "L5-S1"])
    [planned] = plan_training(store).train
    with caplog.at_level("WARNING", logger="napari_ivd.training.store_cases"):
        learnt = labelled_case(store, planned)
    assert "spine: L5 marked absent but painted in the mask; taught as annotated" in caplog.messages
    assert learnt.absent == {"L5-S1"} and "L5" in learnt.keypoints_vox


def test_a_revision_with_only_absent_levels_is_left_out_and_the_plan_says_why():
    """No point, no mask: nothing to place a training crop on, said in words wherever the plan is shown."""
    store, points = _phantom_store()
    spine = store.read_image("spine")
    store.add_case(Volume(spine.array[::-1].copy(), spine.geometry, spine.path), "VB9_case-1")  # another scan
    store.save_revision("VB9_case-1", [], None, absent=["L5-S1"])
    why = "only absent levels, nothing to place a crop on (L5-S1 marked absent; add a point or a mask"
    with pytest.raises(TrainingError, match=r"not learnt from: VB9_case-1: only absent levels"):
        plan_training(store)  # the only corrected case: the refusal says why it does not count

    store.save_revision("spine", points, None)
    plan = plan_training(store)
    assert [c.case_id for c in plan.train] == ["spine"]
    assert dict(plan.skipped)["VB9_case-1"].startswith(why)
    assert f"1 corrected case(s) not learnt from: VB9_case-1: {why}" in plan.describe()


# --- the annotator --------------------------------------------------------------------------------


def test_delete_missing_marks_the_level_absent_undoably_and_the_save_keeps_it():
    store, points = _phantom_store()
    store.save_revision("spine", points, None)
    annotator = Annotator(store, author="dr-absent")
    annotator.open("spine")

    assert annotator.mark_absent(["l5-s1"]) == frozenset({"L5-S1"})
    assert annotator.absent == {"L5-S1"} and annotator.has_unsaved_changes()
    assert annotator.undo() and annotator.absent == frozenset() and not annotator.has_unsaved_changes()
    assert annotator.redo() and annotator.absent == {"L5-S1"}
    with pytest.raises(CorrectionError, match="L3 has a point"):
        annotator.mark_absent(["L3"])

    outcome = annotator.save()
    assert isinstance(outcome, Saved) and outcome.revision.absent == ("L5-S1",)
    assert not annotator.has_unsaved_changes()
    reloaded = Annotator(store)
    reloaded.open("spine")
    assert reloaded.absent == {"L5-S1"} and not reloaded.has_unsaved_changes()

    # a point given the level says it is there after all: the mark goes, and comes back with undo
    disc = LabelledPoint("L5-S1", tuple(phantom_bodies(LUMBAR)["S1"] - [11.5, 0.0, 0.0]))
    reloaded.edit_points((*reloaded.points, disc))
    assert reloaded.absent == frozenset() and reloaded.save_request().absent == ()
    reloaded.undo()
    assert reloaded.absent == {"L5-S1"}
