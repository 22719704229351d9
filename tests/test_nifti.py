"""NIfTI reading and writing on real scans: every orientation, voxel-exact, and bad files."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bad_inputs import BAD_INPUTS, BadInput
from napari_ivd.errors import GeometryError, IvdWarning
from napari_ivd.io import read_volume
from napari_ivd.io.nifti import read_nifti
from napari_ivd.layer_data import image_layer_data, volume_from_display, write_display_labels

# Every image volume in ../shared/data (masks and point files are on the same grids).
REAL_VOLUMES = [
    "fixtures/sct_testing_data/t2/t2.nii.gz",
    "fixtures/sct_testing_data/t1/t1w.nii.gz",
    "fixtures/sct_example_data/t2/t2.nii.gz",
    "fixtures/sct_tutorial_data/single_subject/data/t2_lumbar/t2_lumbar.nii.gz",
    "fixtures/sct_testing_data/template/template/PAM50_small_t2.nii.gz",
    "fixtures/TPTBox/TPTBox/tests/sample_mri/sub-mri_label-6_T2w.nii.gz",
]


def _lumbar_images(shared: Path) -> list[Path]:
    return sorted(shared.glob("lumbar/*/case-*/image.nii.gz"))


def _all_real_volumes(shared: Path) -> list[Path]:
    return [shared / p for p in REAL_VOLUMES] + _lumbar_images(shared)


def test_real_volumes_cover_the_orientations_we_claim(shared_data):
    codes = {"".join(read_nifti(p).geometry.axcodes) for p in _all_real_volumes(shared_data)}
    assert {"RAS", "PSR", "LAS", "PIR", "IPR"} <= codes


def test_label_drawn_on_any_real_volume_lands_on_the_same_file_voxel(shared_data, tmp_path):
    """read -> draw a label in the display -> write back -> same voxel, same affine."""
    volumes = _all_real_volumes(shared_data)
    assert len(volumes) >= 30
    for path in volumes:
        volume = read_nifti(path)
        shown, kwargs, _ = image_layer_data(volume)
        target_vox = tuple(int(n) for n in np.array(volume.geometry.shape) // 3 + 1)
        ijk_display = volume.view.vox_to_display([target_vox])[0].astype(int)
        labels = np.zeros(shown.shape, np.uint8)
        labels[tuple(ijk_display)] = 7
        out = write_display_labels(tmp_path / f"{volume.name}_labels.nii.gz", labels, kwargs["metadata"])
        written = nib.load(out)
        source = nib.load(path)
        assert np.array_equal(written.affine, source.affine), path
        assert written.shape == source.shape[:3], path
        assert [tuple(v) for v in np.argwhere(np.asarray(written.dataobj) == 7)] == [target_vox], path


def test_an_image_layer_gives_back_its_scan_voxel_for_voxel(shared_data):
    """volume -> Image layer data -> volume: same array, geometry and source, in every orientation."""
    for path in (shared_data / p for p in REAL_VOLUMES):
        volume = read_nifti(path)
        shown, kwargs, _ = image_layer_data(volume)
        back = volume_from_display(shown, kwargs["metadata"], kwargs["name"])
        assert np.array_equal(back.array, volume.array), path
        assert np.allclose(back.geometry.affine, volume.geometry.affine), path
        assert back.path == volume.path, path
    with pytest.raises(GeometryError, match="drawn"):
        volume_from_display(shown, {}, "drawn")


def test_display_puts_superior_up_and_anterior_left(shared_data):
    # The sample lumbar T2w is stored RAS; on screen rows must run S->I and columns A->P.
    volume = read_nifti(shared_data / REAL_VOLUMES[3])
    shown, kwargs, layer_type = image_layer_data(volume)
    display = volume.view.display
    top, bottom = display.vox_to_mm([(0, 0, 0), (0, shown.shape[1] - 1, 0)])
    left, right = display.vox_to_mm([(0, 0, 0), (0, 0, shown.shape[2] - 1)])
    assert top[2] > bottom[2]  # superior (RAS z) at the top row
    assert left[1] > right[1]  # anterior (RAS y) in the left column
    assert layer_type == "image" and kwargs["scale"] == pytest.approx(volume.view.spacing_mm)


def test_writing_without_the_source_file_keeps_the_affine(shared_data, tmp_path):
    volume = read_nifti(shared_data / REAL_VOLUMES[0])
    _, kwargs, _ = image_layer_data(volume)
    kwargs["metadata"]["napari_ivd"]["source"] = str(tmp_path / "moved-away.nii.gz")
    labels = np.zeros(volume.view.display.shape, np.uint8)
    out = write_display_labels(tmp_path / "labels.nii.gz", labels, kwargs["metadata"])
    assert np.allclose(nib.load(out).affine, volume.geometry.affine, atol=1e-5)


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=lambda b: b.id)
def test_bad_input_raises_a_typed_error_naming_file_and_reason(bad: BadInput, shared_data, tmp_path, monkeypatch):
    for name, value in bad.env.items():
        monkeypatch.setenv(name, value)
    path = bad.make(tmp_path, shared_data)
    with pytest.raises(bad.error) as info:
        read_volume(path)
    message = str(info.value)
    assert path.name in message
    for word in bad.words:
        assert word in message


def test_some_nan_voxels_load_as_zero_with_a_warning(tmp_path):
    data = np.ones((6, 7, 8), np.float32)
    data[1, 2, 3] = np.nan
    data[2, 2, 2] = np.inf
    path = tmp_path / "holes.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    with pytest.warns(IvdWarning, match=r"holes.nii.gz: 2 voxel\(s\) are NaN or Inf"):
        volume = read_volume(path)
    assert np.isfinite(volume.array).all() and volume.array[1, 2, 3] == 0
