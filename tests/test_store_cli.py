"""``napari-ivd import``, ``export`` and ``store info|check|history`` as a lab runs them."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_ivd.cli import main
from napari_ivd.store import AnnotationStore

LUMBAR = ("lumbar/IVD/case-11", "lumbar/VB3/case-01")
DISCS = {"lumbar/IVD/case-11": "discs_sct_centroid.nii.gz", "lumbar/VB3/case-01": "discs_sct_vbmidpoint_DERIVED.nii.gz"}


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _import_two(shared: Path, store: Path, *extra: str) -> int:
    argv = ["import", *(str(shared / c / "image.nii.gz") for c in LUMBAR), "--store", str(store)]
    for c in LUMBAR:
        argv += ["--points", str(shared / c / DISCS[c]), "--mask", str(shared / c / "mask_tss.nii.gz")]
    return main([*argv, *extra])


def test_lab_imports_two_cases_checks_and_exports_them_voxel_exact(shared_data, tmp_path, capsys):
    store = tmp_path / "lab.zarr"
    assert _import_two(shared_data, store, "--status", "verified", "--author", "dr-x") == 0
    printed = capsys.readouterr().out
    assert "case case-11_image: verified, head r000001" in printed
    assert "case case-01_image: verified, head r000001" in printed

    assert main(["store", "info", str(store)]) == 0
    info = capsys.readouterr().out
    assert "format     version 1" in info and "case-11_image" in info and "verified" in info

    assert main(["store", "history", str(store), "case-11_image"]) == 0
    history = capsys.readouterr().out
    assert "r000001" in history and "dr-x" in history and "<- head" in history

    assert main(["store", "check", str(store)]) == 0
    assert "OK — checked 2 case(s), 2 revision(s)" in capsys.readouterr().out

    assert main(["export", "--store", str(store), "--out", str(tmp_path / "out")]) == 0
    for case, name in zip(LUMBAR, ("case-11_image", "case-01_image"), strict=True):
        for exported, original in (("discs.nii.gz", DISCS[case]), ("mask.nii.gz", "mask_tss.nii.gz")):
            a, b = nib.load(tmp_path / "out" / name / exported), nib.load(shared_data / case / original)
            np.testing.assert_array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
            np.testing.assert_array_equal(a.affine, nib.load(shared_data / case / "image.nii.gz").affine)
        summary = json.loads((tmp_path / "out" / name / "annotation.json").read_text())
        assert summary["revision"] == "r000001" and summary["status"] == "verified"


def test_export_of_one_case_and_an_old_revision(shared_data, tmp_path, capsys):
    store, case = tmp_path / "s.zarr", shared_data / "lumbar/IVD/case-11"
    image = str(case / "image.nii.gz")
    assert (
        main(["import", image, "--store", str(store), "--case", "c11", "--points", str(case / DISCS[LUMBAR[0]])]) == 0
    )
    assert main(["import", image, "--store", str(store), "--case", "c11", "--mask", str(case / "mask_tss.nii.gz")]) == 0
    out = tmp_path / "r1"
    assert main(["export", "--store", str(store), "--case", "c11", "--revision", "r000001", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["annotation.json", "discs.nii.gz", "levels.nii.gz", "points.csv"]
    assert main(["export", "--store", str(store), "--case", "c11", "--out", str(tmp_path / "head")]) == 0
    assert (tmp_path / "head" / "mask.nii.gz").is_file()
    capsys.readouterr()
    assert main(["export", "--store", str(store), "--revision", "r000001", "--out", str(out)]) == 2
    assert "give --case too" in capsys.readouterr().err


def test_check_exits_nonzero_with_a_readable_report_when_a_revision_is_damaged(shared_data, tmp_path, capsys):
    store = tmp_path / "s.zarr"
    assert _import_two(shared_data, store) == 0
    record = store / "cases" / "case-01_image" / "revisions" / "r000001" / "zarr.json"
    meta = json.loads(record.read_text())
    meta["attributes"]["author"] = "someone else"
    record.write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["store", "check", str(store)]) == 1
    report = capsys.readouterr().out
    assert "1 PROBLEM(S)" in report
    assert "problem: case case-01_image r000001: record does not match the sha256" in report
    assert main(["store", "check", str(store), "case-11_image"]) == 0


BAD_IMPORTS = {
    "mask of another case's grid": (lambda s: ["--mask", str(s / "lumbar/VB3/case-01/mask_tss.nii.gz")], "grid"),
    "unknown level in points.csv": (lambda s: ["--points", "{csv}"], "unknown level 'L7'"),
    "points file of another kind": (lambda s: ["--points", str(s / "lumbar/IVD/case-11/info.json")], "points.csv"),
    "one --mask for two images": (lambda s: ["--mask", "x", "--mask", "y"], "once per IMAGE"),
    "a level both pointed and absent": (
        lambda s: ["--points", str(s / "lumbar/IVD/case-11/discs_sct_centroid.nii.gz"), "--absent", "L4-L5,L5-S1"],
        "L4-L5, L5-S1 has a point and is marked absent",
    ),
    "TPTBox labels as a mask": (
        lambda s: ["--mask", str(s / "fixtures/TPTBox/TPTBox/tests/sample_mri/sub-mri_seg-vert_label-6_msk.nii.gz")],
        "no TotalSpineSeg values",
    ),
}


@pytest.mark.parametrize("name", list(BAD_IMPORTS))
def test_bad_import_exits_2_with_a_message_and_writes_nothing(shared_data, tmp_path, capsys, name):
    options, words = BAD_IMPORTS[name]
    csv = tmp_path / "points.csv"
    csv.write_text("kind,level,i,j,k,x_mm,y_mm,z_mm,score\nvertebra,L7,1,2,3,0,0,0,1\n")
    extra = [a.replace("{csv}", str(csv)) for a in options(shared_data)]
    image = "fixtures/TPTBox/TPTBox/tests/sample_mri/sub-mri_label-6_T2w.nii.gz" if "TPTBox" in name else None
    image = image or "lumbar/IVD/case-11/image.nii.gz"
    store = tmp_path / "s.zarr"
    assert main(["import", str(shared_data / image), "--store", str(store), *extra]) == 2
    assert words in capsys.readouterr().err
    assert not store.exists()  # not even an empty store

    assert main(["import", str(shared_data / "lumbar/VB3/case-02/image.nii.gz"), "--store", str(store)]) == 0
    before = _snapshot(store)
    assert main(["import", str(shared_data / image), "--store", str(store), *extra]) == 2
    assert _snapshot(store) == before


def test_import_refuses_another_image_under_a_taken_case_id(shared_data, tmp_path, capsys):
    store = tmp_path / "s.zarr"
    assert main(["import", str(shared_data / "lumbar/VB3/case-01/image.nii.gz"), "--store", str(store)]) == 0
    before = _snapshot(store)
    assert main(["import", str(shared_data / "lumbar/VB3/case-02/image.nii.gz"), "--store", str(store)]) == 2
    err = capsys.readouterr().err
    assert "holds another image" in err and "--case" in err
    assert _snapshot(store) == before


def test_import_refuses_a_scan_the_store_already_holds_under_another_case_id(shared_data, tmp_path, capsys):
    """VB3 ships case-18's scan again as case-19: imported once, the copy is refused with the case that holds it."""
    store, vb3 = tmp_path / "s.zarr", shared_data / "lumbar/VB3"
    assert main(["import", str(vb3 / "case-18/image.nii.gz"), "--store", str(store), "--case", "c18"]) == 0
    before = _snapshot(store)
    assert main(["import", str(vb3 / "case-19/image.nii.gz"), "--store", str(store), "--case", "c19"]) == 2
    assert "is already in the store as case c18" in capsys.readouterr().err
    assert _snapshot(store) == before
    both = [str(vb3 / c / "image.nii.gz") for c in ("case-18", "case-19")]
    assert main(["import", *both, "--store", str(tmp_path / "new.zarr")]) == 2
    assert "hold the same voxels: import the scan once" in capsys.readouterr().err
    assert not (tmp_path / "new.zarr").exists()


def test_store_commands_refuse_newer_and_missing_stores(shared_data, tmp_path, capsys):
    store = tmp_path / "s.zarr"
    assert main(["import", str(shared_data / "lumbar/VB3/case-01/image.nii.gz"), "--store", str(store)]) == 0
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["napari_ivd"]["format_version"] = 99
    (store / "zarr.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["store", "check", str(store)]) == 2
    assert "format_version 99" in capsys.readouterr().err
    assert main(["store", "info", str(tmp_path / "none.zarr")]) == 2
    assert "no annotation store here" in capsys.readouterr().err


def test_cli_works_on_a_memory_url(shared_data, capsys):
    url = f"memory://napari-ivd-cli-{uuid.uuid4().hex}/s.zarr"
    case = shared_data / "fixtures/sct_testing_data/t2"
    argv = ["import", str(case / "t2.nii.gz"), "--store", url, "--levels", str(case / "labels.nii.gz")]
    assert main(argv) == 0
    assert main(["store", "history", url]) == 0
    assert "2 points" in capsys.readouterr().out
    assert AnnotationStore.open(url).load("t2").points[0].level == "C3"


def test_absent_levels_go_out_in_annotation_json_and_come_back_with_import_absent(shared_data, tmp_path, capsys):
    """VB3/case-01 labels no L5-S1; say it is not there (as for a sacralised L5) and carry that through files."""
    case = shared_data / "lumbar/VB3/case-01"
    store, again = tmp_path / "s.zarr", tmp_path / "again.zarr"
    argv = ["import", str(case / "image.nii.gz"), "--case", "c01", "--points", str(case / DISCS[LUMBAR[1]])]
    assert main([*argv, "--store", str(store), "--absent", "l5-s1"]) == 0
    assert main(["export", "--store", str(store), "--case", "c01", "--out", str(tmp_path / "out")]) == 0
    absent = json.loads((tmp_path / "out" / "annotation.json").read_text())["absent"]
    assert absent == ["L5-S1"]
    assert main([*argv, "--store", str(again), "--absent", ",".join(absent)]) == 0
    assert AnnotationStore.open(again).load("c01").absent == ("L5-S1",)
    capsys.readouterr()
    assert main(["store", "history", str(again), "c01"]) == 0
    assert "4 points, no mask, absent L5-S1" in capsys.readouterr().out
