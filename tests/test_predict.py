"""Prediction on real MRI with the starter model: files on the input's grid, named levels, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_ivd import anatomy, inference
from napari_ivd._cli_predict import unique_names
from napari_ivd.cli import main
from napari_ivd.errors import CheckpointError
from napari_ivd.io import read_volume
from napari_ivd.models import BUNDLED_MODELS_DIR, find_model_dir, load_checkpoint, read_card

CASE = "lumbar/VB2/case-07"  # stored I, P, R; 381 x 381 x 77; vertebrae T11-L5 annotated
UNSEEN_OFF_BY_ONE = "lumbar/VB3/case-49"  # the starter never saw it and names it one level off


@pytest.fixture(scope="module")
def predicted(shared_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("predict") / "case-07"
    assert main(["predict", str(shared_data / CASE / "image.nii.gz"), "--out", str(out), "--device", "cpu"]) == 0
    return out


def test_predict_cli_writes_files_on_the_input_grid(predicted, shared_data):
    image = nib.load(shared_data / CASE / "image.nii.gz")
    for name in ("discs.nii.gz", "mask.nii.gz"):
        written = nib.load(predicted / name)
        assert written.shape == image.shape
        assert np.array_equal(written.affine, image.affine)
    rows = list(csv.DictReader((predicted / "points.csv").open()))
    assert list(rows[0]) == ["kind", "level", "i", "j", "k", "x_mm", "y_mm", "z_mm", "score"]
    for row in rows:
        ijk = np.array([float(row[c]) for c in "ijk"])
        assert np.all(ijk >= -0.5) and np.all(ijk <= np.array(image.shape) - 0.5)
        xyz = image.affine @ np.append(ijk, 1.0)
        assert np.allclose(xyz[:3], [float(row["x_mm"]), float(row["y_mm"]), float(row["z_mm"])], atol=2e-3)
        assert row["kind"] == anatomy.structure(row["level"]).kind


def test_predicted_levels_are_known_ordered_and_consistent_with_files(predicted):
    rows = list(csv.DictReader((predicted / "points.csv").open()))
    labels = read_card(find_model_dir())["labels"]
    levels = [r["level"] for r in rows]
    assert levels and set(levels) <= set(labels)
    # image axis 0 runs superior -> inferior: cranio-caudal order means increasing i
    i_by_order = [float(r["i"]) for r in sorted(rows, key=lambda r: anatomy.structure(r["level"]).order)]
    assert i_by_order == sorted(i_by_order)
    discs = np.asarray(nib.load(predicted / "discs.nii.gz").dataobj)
    assert sorted(int(v) for v in np.unique(discs) if v) == sorted(
        anatomy.structure(r["level"]).sct_value for r in rows if r["kind"] == "disc"
    )
    mask = np.asarray(nib.load(predicted / "mask.nii.gz").dataobj)
    mask_levels = {anatomy.from_tss(int(v)).name for v in np.unique(mask) if v}
    assert mask_levels <= set(levels)
    summary = json.loads((predicted / "prediction.json").read_text())
    assert summary["levels"] == levels
    assert summary["named_from_sacrum"] is False  # the starter has no S1 label


def test_each_structure_sits_left_right_at_the_centre_of_its_own_mask(predicted):
    rows = list(csv.DictReader((predicted / "points.csv").open()))
    mask = np.asarray(nib.load(predicted / "mask.nii.gz").dataobj)
    checked = 0
    for row in rows:
        voxels = np.argwhere(mask == anatomy.structure(row["level"]).tss_value)
        if len(voxels):  # case-07 is stored I, P, R: the third index runs left-right
            assert abs(float(row["k"]) - voxels[:, 2].mean()) < 0.1
            checked += 1
    assert checked >= len(rows) // 2


def test_evaluate_cli_reports_the_papers_metrics(predicted, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    assert main(["evaluate", "--pred", str(predicted), "--json", str(report_path)]) == 0
    table = capsys.readouterr().out
    assert "DTT mm" in table and "vertebra" in table
    report = json.loads(report_path.read_text())
    vertebra = report["keypoints"]["vertebra"]
    assert vertebra["n_annotated"] == 7  # T11..L5 in this case
    assert 0.0 <= vertebra["identification"] <= 1.0
    assert report["dice"]["vertebra"]["per_kind"] is not None


def test_predict_cli_says_what_to_check_first(shared_data, tmp_path, capsys):
    # a scan the starter never saw and names one level off: its chain stops short of the top
    scan = shared_data / UNSEEN_OFF_BY_ONE / "image.nii.gz"
    assert main(["predict", str(scan), "--out", str(tmp_path), "--device", "cpu"]) == 0
    checks = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  check: ")]
    # the three levels missing above are said once, with their cause
    assert len(checks) == 1 and checks[0].startswith("  check: L1, T12-L1 and T12 missing: the chain stops")
    assert checks[0].endswith("below the top of the scan")
    # and nothing to check where it names the whole chain
    assert main(["predict", str(shared_data / CASE / "image.nii.gz"), "--out", str(tmp_path), "--device", "cpu"]) == 0
    assert "check:" not in capsys.readouterr().out


def test_predict_on_a_bad_file_exits_2_with_the_reason(tmp_path, capsys):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not really a scan")
    assert main(["predict", str(bad), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 2
    assert "broken.nii.gz" in capsys.readouterr().err
    assert not (tmp_path / "out" / "points.csv").exists()


def test_unknown_model_lists_the_bundled_ones(tmp_path):
    with pytest.raises(CheckpointError, match=r"bundled: .*ivdnet-lumbar"):
        find_model_dir("no-such-model")


def test_several_inputs_get_distinct_short_folder_names():
    paths = [Path("/d/lumbar/VB2/case-07/image.nii.gz"), Path("/d/lumbar/VB3/case-07/image.nii.gz")]
    assert unique_names(paths) == ["VB2_case-07_image", "VB3_case-07_image"]
    assert unique_names([Path("/x/a.nii.gz"), Path("/x/b.nii")]) == ["a", "b"]


@pytest.mark.parametrize(
    "scan",
    ["fixtures/TPTBox/TPTBox/tests/sample_mri/sub-mri_label-6_T2w.nii.gz", "fixtures/sct_testing_data/t2/t2.nii.gz"],
)
def test_cervical_scans_get_no_lumbar_names_from_the_lumbar_model(scan, shared_data, tmp_path):
    assert main(["predict", str(shared_data / scan), "--out", str(tmp_path), "--device", "cpu"]) == 0
    assert list(csv.DictReader((tmp_path / "points.csv").open())) == []
    assert not np.asarray(nib.load(tmp_path / "mask.nii.gz").dataobj).any()


def test_default_model_is_the_bundled_one_even_beside_a_folder_of_that_name(tmp_path, monkeypatch):
    (tmp_path / "ivdnet-lumbar").mkdir()
    (tmp_path / "ivdnet-lumbar" / "card.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert find_model_dir() == BUNDLED_MODELS_DIR / "ivdnet-lumbar"
    assert find_model_dir("ivdnet-lumbar") == Path("ivdnet-lumbar")  # an explicit path wins


class _ResponseProfile:
    """Stands in for the slice runner: slice i's heatmap peaks at ``response[i]``; records what ran."""

    def __init__(self, response: dict[int, float]):
        self.response, self.heatmap, self.ran = response, {}, []

    def run(self, indices: list[int], **_: object) -> None:
        for i in indices:
            if i not in self.heatmap:
                self.heatmap[i] = np.full((1, 2, 2), self.response[i], np.float32)
                self.ran.append(i)


def test_spine_search_refines_around_the_two_strongest_sparse_slices():
    # the bundled sample's response: its edge slice (2) outscores the sparse slices on either
    # side of the spine's centre (14), which only the dense pass samples
    response = {2: 2.35, 6: 1.2, 10: 2.04, 14: 2.78, 18: 0.75, 22: 0.1, 26: 0.1, 30: 0.08, 34: 0.1}
    runner = _ResponseProfile(response)
    sampled, dense = inference._find_spine(runner, sorted(response))
    assert max(runner.ran[:5], key=response.get) == 2  # the sparse pass alone would refine at the edge
    assert inference._spine_centre(runner, dense) == pytest.approx(13.07, abs=0.01)  # parabola through 10, 14, 18
    assert len(sampled) == len(runner.ran) == 7  # 22..34 between the sparse ones never ran


def _without_sacrum_step(chosen, candidates, labels):
    return dict(chosen), False


def test_a_model_without_S1_predicts_bit_for_bit_as_without_the_sacrum_step(shared_data, monkeypatch):
    model, card = load_checkpoint(find_model_dir("scarnet-lumbar"))  # a seed model: T11 ... L5-S1
    volume = read_volume(shared_data / CASE / "image.nii.gz")
    assert "S1" not in card["labels"]
    anchored = inference.predict(volume, model, card, "cpu")
    monkeypatch.setattr(inference, "anchor_on_sacrum", _without_sacrum_step)
    plain = inference.predict(volume, model, card, "cpu")

    assert not anchored.named_from_sacrum and anchored.structures
    assert anchored.skeleton is not None and anchored.skeleton.to_dict() == card["skeleton"]  # what checks it
    assert [(s.name, s.kind, s.score) for s in anchored.structures] == [
        (s.name, s.kind, s.score) for s in plain.structures
    ]
    for a, b in zip(anchored.structures, plain.structures, strict=True):
        assert np.array_equal(a.ijk_vox, b.ijk_vox) and np.array_equal(a.xyz_mm, b.xyz_mm)
    assert np.array_equal(anchored.mask_tss, plain.mask_tss) and anchored.mid_sagittal_mm == plain.mid_sagittal_mm


def test_a_chain_named_from_the_sacrum_is_flagged_in_the_summary_and_the_cli_line(
    shared_data, monkeypatch, tmp_path, capsys
):
    monkeypatch.setattr(inference, "anchor_on_sacrum", lambda chosen, candidates, labels: (dict(chosen), True))

    assert main(["predict", str(shared_data / CASE / "image.nii.gz"), "--out", str(tmp_path), "--device", "cpu"]) == 0

    assert "(named from the sacrum)" in capsys.readouterr().out
    assert json.loads((tmp_path / "prediction.json").read_text())["named_from_sacrum"] is True
