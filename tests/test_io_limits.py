"""How large an image the readers agree to load, and how they keep a valid large one from multiplying."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bad_inputs import write_header_only
from napari_ivd.errors import ImageTooLargeError, IvdError
from napari_ivd.io import read_volume, volume
from napari_ivd.io.limits import MAX_IMAGE_GB_ENV, max_image_bytes, total_memory_bytes


def test_default_limit_is_a_quarter_of_the_machines_memory_and_says_so(monkeypatch):
    monkeypatch.delenv(MAX_IMAGE_GB_ENV, raising=False)
    limit, origin = max_image_bytes()
    assert limit == pytest.approx(total_memory_bytes() / 4)
    assert total_memory_bytes() > 1e9  # read from the OS, not the 8 GB fallback guess
    assert "quarter" in origin and f"{total_memory_bytes() / 1e9:.1f} GB" in origin


def test_option_wins_over_environment_which_wins_over_default(monkeypatch, tmp_path):
    path = write_header_only(tmp_path / "header.nii.gz", (1000, 1000, 100), np.uint8)  # 0.1 GB declared
    monkeypatch.setenv(MAX_IMAGE_GB_ENV, "0.05")
    with pytest.raises(ImageTooLargeError, match=f"{MAX_IMAGE_GB_ENV}=0.05"):
        read_volume(path)
    with pytest.raises(ImageTooLargeError, match="max_image_gb option"):
        read_volume(path, max_image_gb=0.01)
    # a limit large enough lets the header through: the missing voxels are found next
    with pytest.raises(IvdError, match="truncated"):
        read_volume(path, max_image_gb=1)


@pytest.mark.parametrize("value", ["lots", "0", "-2", "nan"])
def test_a_bad_limit_in_the_environment_is_a_clear_error(monkeypatch, tmp_path, value):
    path = write_header_only(tmp_path / "header.nii.gz", (10, 10, 10))
    monkeypatch.setenv(MAX_IMAGE_GB_ENV, value)
    with pytest.raises(IvdError, match=f"{MAX_IMAGE_GB_ENV} must be a"):
        read_volume(path)


def test_scaled_nifti_reads_as_float32_with_nibabels_values(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_slope_inter(0.5, -3.0)
    path = tmp_path / "scaled.nii.gz"
    nib.save(img, path)
    read = read_volume(path)
    assert read.array.dtype == np.float32
    np.testing.assert_allclose(read.array, nib.load(path).get_fdata(), rtol=1e-6)


def test_unscaled_nifti_keeps_its_voxel_type(tmp_path):
    path = tmp_path / "plain.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6), np.uint8), np.eye(4)), path)
    assert read_volume(path).array.dtype == np.uint8


def test_nan_voxels_are_found_and_zeroed_across_chunk_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(volume, "_CHUNK_VOXELS", 7 * 8 * 2)  # two slices per chunk, the last one short
    data = np.ones((7, 8, 9), np.float32)
    holes = [(0, 0, 0), (6, 7, 1), (3, 3, 2), (1, 2, 8)]
    for ijk in holes:
        data[ijk] = np.nan
    data[2, 2, 5] = -np.inf
    path = tmp_path / "holes.nii"  # uncompressed: nibabel hands over a (copy-on-write) memory map
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    with pytest.warns(UserWarning, match="5 voxel"):
        read = read_volume(path)
    assert np.isfinite(read.array).all()
    assert [tuple(v) for v in np.argwhere(read.array == 0)] == sorted([*holes, (2, 2, 5)])
    assert np.isnan(np.asarray(nib.load(path).dataobj)[0, 0, 0])  # the file is not changed


def test_real_scans_read_voxel_for_voxel_as_nibabel_reads_them(shared_data):
    from test_nifti import REAL_VOLUMES

    for relative in REAL_VOLUMES:
        path = shared_data / relative
        expected = np.asanyarray(nib.load(path).dataobj)
        read = read_volume(path).array
        assert read.shape == expected.shape[:3], path
        np.testing.assert_allclose(read, expected.reshape(read.shape), rtol=1e-6, err_msg=str(path))


def test_a_truncated_gzip_is_refused_naming_the_missing_bytes(tmp_path):
    path = write_header_only(tmp_path / "header.nii.gz", (100, 100, 10), np.uint8)  # 100 kB declared, none stored
    with pytest.raises(IvdError, match=r"truncated \(0 of the 100000 bytes"):
        read_volume(path)


def test_network_input_is_the_whole_volume_normalised_then_resampled_slice_by_slice(shared_data):
    from napari_ivd.preprocess import ModelInput, network_input, normalize_volume, resample_slice

    scan = read_volume(shared_data / "lumbar/VB2/case-07/image.nii.gz")
    view = scan.view
    whole = view.to_display(normalize_volume(scan.array))  # a float copy of everything: what it avoids
    expected = np.stack([resample_slice(s, view.spacing_mm[1:], 1.3) for s in whole])
    assert np.array_equal(network_input(scan, ModelInput(spacing_mm=1.3)), expected)
