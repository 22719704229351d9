"""The annotator's work list without a viewer: scans found in a folder, case ids, the next case."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_ivd.errors import IvdError
from napari_ivd.store import AnnotationStore
from napari_ivd.worklist import case_ids_for, find_images, import_images, next_case, open_case_steps, run_steps


def _nifti(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).integers(0, 500, (8, 9, 6)).astype(np.int16)
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 3.0, 1.0])), path)
    return path


@pytest.fixture
def bids(tmp_path: Path) -> Path:
    """A BIDS-like dataset: scans under sub-*/anat, labels next to them and under derivatives."""
    root = tmp_path / "dataset"
    _nifti(root / "sub-01/anat/sub-01_T2w.nii.gz", 1)
    _nifti(root / "sub-02/anat/sub-02_T2w.nii", 2)
    _nifti(root / "sub-02/anat/sub-02_T2w_label-discs.nii.gz", 3)
    _nifti(root / "derivatives/labels/sub-01/anat/sub-01_T2w_seg.nii.gz", 4)
    _nifti(root / "VB2/case-07/image.nii.gz", 5)
    _nifti(root / "VB2/case-07/mask_tss.nii.gz", 6)
    _nifti(root / "VB2/case-12/image.nii.gz", 7)
    (root / "README").write_text("not a scan")
    return root


def test_scans_are_found_and_masks_labels_derivatives_skipped(bids: Path):
    found = [p.relative_to(bids).as_posix() for p in find_images(bids)]
    assert found == [
        "VB2/case-07/image.nii.gz",
        "VB2/case-12/image.nii.gz",
        "sub-01/anat/sub-01_T2w.nii.gz",
        "sub-02/anat/sub-02_T2w.nii",
    ]
    with pytest.raises(IvdError, match="not a folder"):
        find_images(bids / "README")


def test_case_ids_are_file_names_made_unique_by_their_folders(bids: Path):
    ids = case_ids_for(find_images(bids), bids)
    assert sorted(ids.values()) == ["case-07_image", "case-12_image", "sub-01_T2w", "sub-02_T2w"]


def test_importing_a_folder_twice_adds_nothing_new_and_reports_bad_files(bids: Path, tmp_path: Path):
    broken = bids / "sub-03/anat/sub-03_T2w.nii.gz"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"\x1f\x8b truncated")
    store = AnnotationStore.open(tmp_path / "a.zarr", create=True, fsync=False)
    report = run_steps(import_images(store, find_images(bids), bids))
    assert sorted(report.added) == ["case-07_image", "case-12_image", "sub-01_T2w", "sub-02_T2w"]
    assert [p.name for p, _ in report.failed] == ["sub-03_T2w.nii.gz"]
    again = run_steps(import_images(store, find_images(bids), bids))
    assert sorted(again.added) == sorted(report.added) and store.case_ids() == sorted(report.added)
    opened = run_steps(open_case_steps(store, "sub-01_T2w"))
    assert opened.revision is None and opened.origin is None and opened.points == ()
    assert opened.volume.geometry.shape == (8, 9, 6)


def test_next_case_skips_verified_ones_and_wraps_around():
    ids = ["a", "b", "c", "d"]
    statuses = {"a": "new", "b": "verified", "c": "proposed", "d": "verified"}
    assert next_case(ids, statuses, None) == "a"
    assert next_case(ids, statuses, "a") == "c"
    assert next_case(ids, statuses, "c") == "a"
    assert next_case(ids, dict.fromkeys(ids, "verified"), "a") is None
    assert next_case([], {}, None) is None
