"""``predict`` and ``store export`` write one bundle: the same files, in the same formats, read back the same.

A real case's reference points and mask are saved as a prediction, imported into a store
and exported again; both folders must hold every file of the bundle, byte-compatible
NIfTI headers and the same points and mask.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_ivd import anatomy
from napari_ivd.inference import PredictedStructure, Prediction, save_prediction
from napari_ivd.io import read_volume
from napari_ivd.io.annotations import find_annotations, read_points_csv, read_sct_discs, read_sct_levels, read_tss_mask
from napari_ivd.io.bundle import BUNDLE_FILES, SUMMARY_FILES
from napari_ivd.store import AnnotationStore, export_revision, import_case

CASE = "lumbar/VB3/case-01"  # discs (derived SCT labels), vertebrae (mask centroids) and a mask


def _prediction(points, mask: np.ndarray, geometry) -> Prediction:
    """The reference annotation dressed as a model's prediction."""
    structures = tuple(
        PredictedStructure(
            p.level,
            p.kind,
            0.9,
            np.asarray(p.ijk_vox),
            geometry.vox_to_mm(np.asarray(p.ijk_vox)[None])[0],
        )
        for p in sorted(points, key=lambda p: anatomy.structure(p.level).order)
    )
    return Prediction(structures, mask, model="reference", mid_sagittal_mm=0.0)


@pytest.fixture(scope="module")
def bundles(shared_data, tmp_path_factory) -> tuple[Path, Path]:
    """(predicted folder, exported folder) of the same annotation."""
    tmp = tmp_path_factory.mktemp("bundle")
    image = shared_data / CASE / "image.nii.gz"
    volume = read_volume(image)
    points, mask = find_annotations(shared_data / CASE, volume.geometry)
    predicted = tmp / "predicted"
    save_prediction(_prediction(points, mask, volume.geometry), volume, predicted)
    store = AnnotationStore.open(tmp / "s.zarr", create=True)
    import_case(
        store, image, case_id="c", points=predicted / "points.csv", mask=predicted / "mask.nii.gz", status="verified"
    )
    exported = tmp / "exported"
    export_revision(store, "c", exported)
    return predicted, exported


def test_predict_and_export_write_every_file_of_the_bundle(bundles):
    predicted, exported = bundles
    data_files = set(BUNDLE_FILES.values())
    assert {p.name for p in predicted.iterdir()} == data_files | {SUMMARY_FILES["prediction"]}
    assert {p.name for p in exported.iterdir()} == data_files | {SUMMARY_FILES["annotation"]}


@pytest.mark.parametrize("name", [n for n in BUNDLE_FILES.values() if n.endswith(".nii.gz")])
def test_both_write_each_image_in_the_same_format_and_content(bundles, shared_data, name):
    predicted, exported = bundles
    a, b = nib.load(predicted / name), nib.load(exported / name)
    source = nib.load(shared_data / CASE / "image.nii.gz")
    assert a.shape == b.shape == source.shape
    assert a.get_data_dtype() == b.get_data_dtype()
    np.testing.assert_array_equal(a.affine, b.affine)
    np.testing.assert_array_equal(a.affine, source.affine)
    assert (int(a.header["sform_code"]), int(a.header["qform_code"])) == (
        int(b.header["sform_code"]),
        int(b.header["qform_code"]),
    )
    np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))


def test_both_read_back_as_the_same_points_and_mask(bundles, shared_data):
    predicted, exported = bundles
    geometry = read_volume(shared_data / CASE / "image.nii.gz").geometry
    with (predicted / "points.csv").open() as fa, (exported / "points.csv").open() as fb:
        assert next(csv.reader(fa)) == next(csv.reader(fb))
    points = read_points_csv(predicted / "points.csv")
    assert {p.kind for p in points} == {"disc", "vertebra"}
    assert read_points_csv(exported / "points.csv") == points
    for name, read in (("discs.nii.gz", read_sct_discs), ("levels.nii.gz", read_sct_levels)):
        labelled = read(predicted / name, geometry)
        assert labelled and labelled == read(exported / name, geometry)
    np.testing.assert_array_equal(
        read_tss_mask(predicted / "mask.nii.gz", geometry), read_tss_mask(exported / "mask.nii.gz", geometry)
    )
    ours = json.loads((predicted / SUMMARY_FILES["prediction"]).read_text())
    theirs = json.loads((exported / SUMMARY_FILES["annotation"]).read_text())
    assert ours["levels"] == theirs["levels"] == [p.level for p in points]
    assert Path(ours["source"]).resolve() == Path(theirs["source"]).resolve()


def test_a_prediction_that_names_nothing_still_writes_every_point_file_empty(shared_data, tmp_path):
    volume = read_volume(shared_data / CASE / "image.nii.gz")
    empty = Prediction((), np.zeros(volume.geometry.shape, np.uint8), model="reference", mid_sagittal_mm=0.0)
    save_prediction(empty, volume, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == set(BUNDLE_FILES.values()) | {SUMMARY_FILES["prediction"]}
    assert read_points_csv(tmp_path / "points.csv") == []
    assert read_sct_discs(tmp_path / "discs.nii.gz", volume.geometry) == []
    assert read_sct_levels(tmp_path / "levels.nii.gz", volume.geometry) == []
