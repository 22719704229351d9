"""Import -> export of real annotations equals the input files voxel for voxel, in every orientation.

The real cases of ``../shared/data``: lumbar IVD/VB2/VB3 (IPR) with SCT disc labels and
TotalSpineSeg masks, SCT testing/example data (PSR) with vertebral-level labels and a cord
mask, SCT t1 (RAS) with a cord mask, and the TPTBox cut-out (PIR) with its mask converted
to TotalSpineSeg values and a ``points.csv``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_ivd import anatomy
from napari_ivd.io import read_volume, write_nifti
from napari_ivd.io.annotations import LabelledPoint, points_from_tss_mask, read_sct_levels, write_points_csv
from napari_ivd.store import AnnotationStore, export_revision, import_case

# case -> image, {import option: annotation file}; files are relative to ../shared/data
REAL_CASES: dict[str, tuple[str, dict[str, str]]] = {
    "IVD_case-11": (
        "lumbar/IVD/case-11/image.nii.gz",
        {"points": "lumbar/IVD/case-11/discs_sct_centroid.nii.gz", "mask": "lumbar/IVD/case-11/mask_tss.nii.gz"},
    ),
    "VB2_case-07": (
        "lumbar/VB2/case-07/image.nii.gz",
        {
            "points": "lumbar/VB2/case-07/discs_sct_vbmidpoint_DERIVED.nii.gz",
            "mask": "lumbar/VB2/case-07/mask_tss.nii.gz",
        },
    ),
    "VB3_case-01": (
        "lumbar/VB3/case-01/image.nii.gz",
        {
            "points": "lumbar/VB3/case-01/discs_sct_vbmidpoint_DERIVED.nii.gz",
            "mask": "lumbar/VB3/case-01/mask_tss.nii.gz",
        },
    ),
    "sct_t2_PSR": (
        "fixtures/sct_testing_data/t2/t2.nii.gz",
        {
            "levels": "fixtures/sct_testing_data/t2/labels.nii.gz",
            "mask": "fixtures/sct_testing_data/t2/t2_seg-manual.nii.gz",
        },
    ),
    "sct_t2_centres_PSR": (
        "fixtures/sct_testing_data/t2/t2.nii.gz",
        {"levels": "fixtures/sct_testing_data/t2/t2_labeled_center_manual.nii.gz"},
    ),
    "sct_example_PSR": (
        "fixtures/sct_example_data/t2/t2.nii.gz",
        {"levels": "fixtures/sct_example_data/t2/labels.nii.gz"},
    ),
    "sct_t1_RAS": (
        "fixtures/sct_testing_data/t1/t1w.nii.gz",
        {"mask": "fixtures/sct_testing_data/t1/t1w_seg-manual.nii.gz"},
    ),
}
EXPORTED = {"points": "discs.nii.gz", "levels": "levels.nii.gz", "mask": "mask.nii.gz"}
TPTBOX = "fixtures/TPTBox/TPTBox/tests/sample_mri"


def assert_same_voxels(exported: Path, original: Path, image: Path) -> None:
    """Same values on the same grid; the header's affine is the image's, to the bit."""
    a, b = nib.load(exported), nib.load(original)
    np.testing.assert_array_equal(np.asanyarray(a.dataobj).astype(np.int64), np.asanyarray(b.dataobj).astype(np.int64))
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-6)
    np.testing.assert_array_equal(a.affine, nib.load(image).affine)


@pytest.mark.parametrize("case_id", list(REAL_CASES))
def test_import_then_export_gives_back_the_input_files(shared_data, tmp_path, case_id):
    image, annotations = REAL_CASES[case_id]
    files = {option: shared_data / name for option, name in annotations.items()}
    store = AnnotationStore.open(tmp_path / "s.zarr", create=True)
    info = import_case(store, shared_data / image, case_id=case_id, status="verified", **files)
    assert info.status == "verified" and info.head == "r000001"
    out = export_revision(store, case_id, tmp_path / "out")
    for option, original in files.items():
        assert_same_voxels(out[option if option != "points" else "discs"], original, shared_data / image)
        assert (tmp_path / "out" / EXPORTED[option]).is_file()
    assert store.check().ok


def test_vertebral_levels_name_the_sct_bodies(shared_data):
    labels = shared_data / "fixtures/sct_testing_data/t2/t2_labeled_center_manual.nii.gz"
    points = read_sct_levels(labels, read_volume(shared_data / "fixtures/sct_testing_data/t2/t2.nii.gz").geometry)
    assert [p.level for p in points] == ["C3", "C4", "C5"]  # values 3, 4, 5


def _tptbox_to_tss(mask: np.ndarray) -> np.ndarray:
    """TPTBox labels (vertebra N = C1..; 100+N disc below N; 200+N endplates) in TotalSpineSeg values."""
    out = np.zeros_like(mask, dtype=np.uint8)
    for value in np.unique(mask[mask > 0]):
        vertebra = anatomy.VERTEBRAE[int(value) % 100 - 1]
        disc_below = 100 <= value < 200
        out[mask == value] = anatomy.STRUCTURES[vertebra.order + 1].tss_value if disc_below else vertebra.tss_value
    return out


def test_tptbox_pir_points_csv_and_mask_round_trip(shared_data, tmp_path):
    image = shared_data / TPTBOX / "sub-mri_label-6_T2w.nii.gz"
    volume = read_volume(image)
    assert "".join(volume.geometry.axcodes) == "PIR"
    mask = _tptbox_to_tss(np.asanyarray(nib.load(shared_data / TPTBOX / "sub-mri_seg-vert_label-6_msk.nii.gz").dataobj))
    mask_file = write_nifti(tmp_path / "mask_tss.nii.gz", mask, volume.geometry, like=image)
    centres = points_from_tss_mask(mask, kinds=("vertebra", "disc"))
    assert sorted(p.level for p in centres) == ["C5", "C5-C6", "C6", "C6-C7", "C7"]
    points = [LabelledPoint(p.level, tuple(round(v, 3) for v in p.ijk_vox)) for p in centres]
    csv = write_points_csv(tmp_path / "points.csv", points, volume.geometry)

    store = AnnotationStore.open(tmp_path / "s.zarr", create=True)
    import_case(store, image, case_id="tptbox", points=csv, mask=mask_file)
    out = export_revision(store, "tptbox", tmp_path / "out")
    assert out["points"].read_text() == csv.read_text()
    assert_same_voxels(out["mask"], mask_file, image)
    assert {"discs", "levels"} <= set(out)


def test_export_without_the_source_image_uses_the_stored_affine(shared_data, tmp_path):
    source = shared_data / "fixtures/sct_testing_data/t2"
    image = shutil.copy(source / "t2.nii.gz", tmp_path / "t2.nii.gz")
    store = AnnotationStore.open(tmp_path / "s.zarr", create=True)
    import_case(store, Path(image), levels=source / "labels.nii.gz", mask=source / "t2_seg-manual.nii.gz")
    Path(image).unlink()  # moved away after import
    out = export_revision(store, "t2", tmp_path / "out")
    for name, original in (("levels", "labels.nii.gz"), ("mask", "t2_seg-manual.nii.gz")):
        a, b = nib.load(out[name]), nib.load(source / original)
        np.testing.assert_array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj).astype(np.uint8))
        np.testing.assert_allclose(a.affine, b.affine, atol=1e-4)  # NIfTI stores the sform as float32
    assert "stored affine" in out["summary"].read_text()


def test_reimporting_only_a_mask_keeps_the_points_of_the_head(shared_data, tmp_path):
    case = shared_data / "lumbar/IVD/case-11"
    store = AnnotationStore.open(tmp_path / "s.zarr", create=True)
    import_case(store, case / "image.nii.gz", case_id="c11", points=case / "discs_sct_centroid.nii.gz")
    info = import_case(store, case / "image.nii.gz", case_id="c11", mask=case / "mask_tss.nii.gz")
    assert info.n_revisions == 2
    head = store.load("c11")
    assert [p.level for p in head.points] == ["L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"]
    assert head.mask_tss is not None and store.diff("c11", "r000001").voxels_changed == int(
        np.count_nonzero(head.mask_tss)
    )
