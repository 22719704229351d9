"""A radiologist opens a DICOM series folder and sees the same sagittal picture, in the same place, as its NIfTI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLSLossless

from _dicom_factory import write_dicom_series
from napari_ivd.errors import DicomSeriesError, GeometryError, UnreadableFileError, UnsupportedScanError
from napari_ivd.io.dicom import looks_like_dicom_folder, read_dicom_series
from napari_ivd.io.geometry import SagittalView, VolumeGeometry
from napari_ivd.io.volume import Volume

# Real scans stored in different axis orders (the axcodes nibabel reports for each).
REAL_SCANS = {
    "PSR": "fixtures/sct_testing_data/t2/t2.nii.gz",
    "RAS": "fixtures/sct_testing_data/t1/t1w.nii.gz",
    "PIR": "fixtures/TPTBox/TPTBox/tests/sample_mri/sub-mri_label-6_T2w.nii.gz",
    "IPR": "lumbar/IVD/case-11/image.nii.gz",
    "LAS-2mm": "fixtures/sct_testing_data/template/template/PAM50_small_t2.nii.gz",
}
T2 = REAL_SCANS["PSR"]
#: (source array, source RAS affine, volume read back from its DICOM export)
Exported = tuple[np.ndarray, np.ndarray, Volume]


def _load(shared_data: Path, rel: str) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(shared_data / rel)
    return np.asanyarray(img.dataobj), np.asarray(img.affine, dtype=np.float64)


@pytest.fixture(scope="module")
def exported(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Exported]:
    """Write a real scan as a shuffled DICOM series and read it back, once per module and orientation."""
    cache: dict[str, Exported] = {}

    def get(orientation: str) -> Exported:
        if orientation not in cache:
            array, affine = _load(shared_data, REAL_SCANS[orientation])
            folder = tmp_path_factory.mktemp(f"dicom-{orientation}")
            write_dicom_series(array, affine, folder)
            cache[orientation] = (array, affine, read_dicom_series(folder))
        return cache[orientation]

    return get


@pytest.fixture
def t2_series(shared_data: Path, tmp_path: Path) -> tuple[np.ndarray, np.ndarray, Path]:
    """The real PSR T2w crop written as a DICOM series; returns (array, affine, folder)."""
    array, affine = _load(shared_data, T2)
    folder = tmp_path / "t2_series"
    write_dicom_series(array, affine, folder)
    return array, affine, folder


def _write_t2(shared_data: Path, folder: Path, **kwargs: object) -> list[Path]:
    array, affine = _load(shared_data, T2)
    return write_dicom_series(array, affine, folder, **kwargs)  # type: ignore[arg-type]


# --- the same picture in the same place --------------------------------------------------------------------


@pytest.mark.parametrize("orientation", list(REAL_SCANS))
def test_dicom_export_of_a_real_scan_shows_the_same_sagittal_picture_in_the_same_place(
    orientation: str, exported: Callable[[str], Exported]
) -> None:
    array, affine, volume = exported(orientation)

    source_view = SagittalView(VolumeGeometry(affine, array.shape))
    assert volume.array.dtype == array.dtype
    np.testing.assert_array_equal(volume.view.to_display(volume.array), source_view.to_display(array))
    np.testing.assert_allclose(volume.view.display.affine, source_view.display.affine, atol=1e-3)
    assert volume.view.display.shape == source_view.display.shape
    # A few voxels (corners, centre) lie at the same scanner mm and hold the same intensity.
    last = np.array(array.shape) - 1
    voxels = np.array([[0, 0, 0], last, last // 2, [last[0], 0, last[2] // 3]])
    points_mm = VolumeGeometry(affine, array.shape).vox_to_mm(voxels)
    back = volume.geometry.mm_to_vox(points_mm)
    np.testing.assert_allclose(back, np.round(back), atol=1e-3)
    ijk = np.round(back).astype(int)
    np.testing.assert_array_equal(volume.array[tuple(ijk.T)], array[tuple(voxels.T)])


def test_right_handed_scan_comes_back_voxel_for_voxel_on_the_documented_axes(
    exported: Callable[[str], Exported],
) -> None:
    # RAS: the normal of the DICOM slice plane (row x column cosine) points the same way as the third axis.
    array, affine, volume = exported("RAS")

    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.geometry.affine, affine, atol=1e-4)
    assert volume.geometry.spacing_mm == pytest.approx((1.0, 1.0, 1.0))


def test_left_handed_scan_comes_back_with_slices_in_normal_order(exported: Callable[[str], Exported]) -> None:
    # PAM50 (LAS, 2 mm): its slice axis runs against the DICOM normal, so slices come back reversed
    # and the affine's slice column is negated, with 2 mm measured from the positions.
    array, affine, volume = exported("LAS-2mm")

    np.testing.assert_array_equal(volume.array, array[:, :, ::-1])
    assert volume.geometry.axcodes == ("L", "A", "I")
    assert volume.geometry.spacing_mm == pytest.approx((1.0, 1.0, 2.0), abs=1e-6)
    last_slice_origin = VolumeGeometry(affine, array.shape).vox_to_mm([0, 0, array.shape[2] - 1])
    np.testing.assert_allclose(volume.geometry.vox_to_mm([0, 0, 0]), last_slice_origin, atol=1e-4)


def test_scanner_rescale_slope_and_intercept_give_real_valued_intensities(shared_data: Path, tmp_path: Path) -> None:
    array, affine = _load(shared_data, T2)
    real = array.astype(np.float64) * 0.5 - 100.0
    write_dicom_series(real, affine, tmp_path / "rescaled", rescale=(0.5, -100.0))

    volume = read_dicom_series(tmp_path / "rescaled")

    assert volume.array.dtype == np.float32
    source_view = SagittalView(VolumeGeometry(affine, array.shape))
    np.testing.assert_allclose(volume.view.to_display(volume.array), source_view.to_display(real), atol=1e-3)


def test_shuffled_file_names_and_instance_numbers_still_sort_slices_by_position(
    exported: Callable[[str], Exported],
) -> None:
    array, _, volume = exported("PSR")
    folder = volume.path
    names = sorted(p.name for p in folder.iterdir())
    by_name = [pydicom.dcmread(folder / n, stop_before_pixels=True) for n in names]
    normal = np.cross(
        np.array(by_name[0].ImageOrientationPatient[:3], float), np.array(by_name[0].ImageOrientationPatient[3:], float)
    )
    along = [float(np.array(ds.ImagePositionPatient, float) @ normal) for ds in by_name]
    assert along != sorted(along) and along != sorted(along, reverse=True)  # the names really lie
    numbers = [int(ds.InstanceNumber) for ds in by_name]
    assert numbers == sorted(numbers)  # and InstanceNumber lies the same way

    np.testing.assert_array_equal(volume.array, array[:, :, ::-1])  # PSR is left-handed: reversed, not scrambled
    gaps = np.diff(volume.geometry.vox_to_mm([[0, 0, k] for k in range(array.shape[2])]), axis=0)
    np.testing.assert_allclose(np.linalg.norm(gaps, axis=1), 1.0, atol=1e-4)


def test_a_readme_next_to_the_slices_is_ignored(t2_series: tuple[np.ndarray, np.ndarray, Path]) -> None:
    array, _, folder = t2_series
    (folder / "README.txt").write_text("exported from PACS by Dr. X\n")
    (folder / ".DS_Store").write_bytes(b"\0" * 300)

    volume = read_dicom_series(folder)

    np.testing.assert_array_equal(volume.array, array[:, :, ::-1])
    assert volume.path == folder
    assert volume.name == "t2_series"


def test_slice_files_without_suffix_are_found_by_their_dicom_signature(shared_data: Path, tmp_path: Path) -> None:
    _write_t2(shared_data, tmp_path / "bare", suffix="")

    assert looks_like_dicom_folder(tmp_path / "bare")
    assert read_dicom_series(tmp_path / "bare").array.shape == (60, 55, 52)


# --- clear refusals ------------------------------------------------------------------------------------------


def test_empty_folder_is_refused_with_a_message_naming_it(tmp_path: Path) -> None:
    with pytest.raises(DicomSeriesError, match="no DICOM images") as err:
        read_dicom_series(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_folder_with_only_a_text_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")

    with pytest.raises(DicomSeriesError, match="no DICOM images") as err:
        read_dicom_series(tmp_path)
    assert str(tmp_path) in str(err.value) and "1 file(s) checked" in str(err.value)


def test_study_folder_with_series_subfolders_points_to_the_subfolders(shared_data: Path, tmp_path: Path) -> None:
    _write_t2(shared_data, tmp_path / "SE0003")

    with pytest.raises(DicomSeriesError, match="SE0003") as err:
        read_dicom_series(tmp_path)
    assert "subfolder" in str(err.value)


def test_two_series_in_one_folder_are_listed_and_the_user_is_told_to_open_one(
    shared_data: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "mixed"
    t1, t1_affine = _load(shared_data, REAL_SCANS["RAS"])
    write_dicom_series(t1, t1_affine, folder, series_description="T1 SAG", series_number=4, prefix="a_")
    _write_t2(shared_data, folder, series_description="T2 SAG", series_number=3, prefix="b_")

    with pytest.raises(DicomSeriesError) as err:
        read_dicom_series(folder)
    message = str(err.value)
    assert str(folder) in message and "2 DICOM series" in message
    assert "series 3 'T2 SAG' (52 slices" in message
    assert "series 4 'T1 SAG' (77 slices" in message
    assert "own folder" in message
    assert message.index("T2 SAG") < message.index("T1 SAG")  # listed by series number


def test_two_slices_at_the_same_position_are_refused(shared_data: Path, tmp_path: Path) -> None:
    positions: dict[int, object] = {}

    def duplicate(ds: FileDataset, k: int) -> None:
        positions[k] = ds.ImagePositionPatient
        if k == 10:
            ds.ImagePositionPatient = positions[9]

    _write_t2(shared_data, tmp_path / "dup", edit=duplicate, shuffle_names=False)

    with pytest.raises(DicomSeriesError, match="same position") as err:
        read_dicom_series(tmp_path / "dup")
    message = str(err.value)
    assert str(tmp_path / "dup") in message
    assert "slice0010.dcm" in message and "slice0011.dcm" in message
    assert "echo" in message


def test_uneven_slice_spacing_is_refused_with_the_smallest_and_largest_gap(shared_data: Path, tmp_path: Path) -> None:
    array, affine = _load(shared_data, T2)
    slice_step_lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, 2]

    def drop_gap(ds: FileDataset, k: int) -> None:
        if k >= 30:  # every slice from 30 on moves one more step out: one 2 mm gap among 1 mm gaps
            ds.ImagePositionPatient = [float(v) for v in np.array(ds.ImagePositionPatient, float) + slice_step_lps]

    write_dicom_series(array, affine, tmp_path / "gap", edit=drop_gap)

    with pytest.raises(DicomSeriesError, match="not uniform") as err:
        read_dicom_series(tmp_path / "gap")
    message = str(err.value)
    assert str(tmp_path / "gap") in message
    assert "1.000 to 2.000 mm" in message


def test_missing_slice_position_is_refused(shared_data: Path, tmp_path: Path) -> None:
    def strip(ds: FileDataset, k: int) -> None:
        if k == 5:
            del ds.ImagePositionPatient

    _write_t2(shared_data, tmp_path / "noipp", edit=strip)

    with pytest.raises(DicomSeriesError, match="1 of 52 DICOM files lack ImagePositionPatient") as err:
        read_dicom_series(tmp_path / "noipp")
    assert str(tmp_path / "noipp") in str(err.value)


def test_slices_in_different_planes_are_refused(shared_data: Path, tmp_path: Path) -> None:
    def tilt(ds: FileDataset, k: int) -> None:
        if k == 0:
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]

    _write_t2(shared_data, tmp_path / "localizer", edit=tilt)

    with pytest.raises(DicomSeriesError, match="different orientations") as err:
        read_dicom_series(tmp_path / "localizer")
    assert str(tmp_path / "localizer") in str(err.value)


def test_slices_with_different_pixel_grids_are_refused(shared_data: Path, tmp_path: Path) -> None:
    def resize(ds: FileDataset, k: int) -> None:
        if k == 3:
            ds.PixelSpacing = [0.5, 0.5]

    _write_t2(shared_data, tmp_path / "grids", edit=resize)

    with pytest.raises(DicomSeriesError, match="different pixel grids") as err:
        read_dicom_series(tmp_path / "grids")
    assert "55x60 px at 1x1 mm" in str(err.value) and "at 0.5x0.5 mm" in str(err.value)


def test_a_single_slice_is_not_a_volume(shared_data: Path, tmp_path: Path) -> None:
    array, affine = _load(shared_data, T2)
    write_dicom_series(array[:, :, 20:21], affine, tmp_path / "one")

    with pytest.raises(UnsupportedScanError, match="single slice") as err:
        read_dicom_series(tmp_path / "one")
    assert str(tmp_path / "one") in str(err.value)


def test_zero_pixel_spacing_is_a_geometry_error(shared_data: Path, tmp_path: Path) -> None:
    def zero(ds: FileDataset, k: int) -> None:
        ds.PixelSpacing = [0, 0]

    _write_t2(shared_data, tmp_path / "zero", edit=zero)

    with pytest.raises(GeometryError, match="PixelSpacing") as err:
        read_dicom_series(tmp_path / "zero")
    message = str(err.value)
    assert str(tmp_path / "zero") in message and "positive" in message


def test_compressed_pixels_without_a_decoder_name_the_file_and_the_package_to_install(
    shared_data: Path, tmp_path: Path
) -> None:
    def compress(ds: FileDataset, k: int) -> None:
        # A JPEG-LS transfer syntax; no JPEG-LS decoder is installed in the test environment.
        ds.file_meta.TransferSyntaxUID = JPEGLSLossless
        ds.PixelData = encapsulate([b"\xff\xd8" + b"\0" * 64 + b"\xff\xd9"])

    paths = _write_t2(shared_data, tmp_path / "jpegls", edit=compress, shuffle_names=False)

    with pytest.raises(UnreadableFileError, match="pip install pylibjpeg") as err:
        read_dicom_series(tmp_path / "jpegls")
    assert str(paths[0].parent) in str(err.value) and "JPEG-LS" in str(err.value)


def test_a_file_instead_of_a_folder_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "scan.dcm"
    file.write_bytes(b"\0" * 10)

    with pytest.raises(UnreadableFileError, match="not a folder"):
        read_dicom_series(file)


# --- the reader hook's cheap check ----------------------------------------------------------------------------


def test_reader_hook_claims_series_folders_and_empty_folders(
    t2_series: tuple[np.ndarray, np.ndarray, Path], tmp_path: Path
) -> None:
    _, _, folder = t2_series
    (tmp_path / "empty").mkdir()

    assert looks_like_dicom_folder(folder)
    assert looks_like_dicom_folder(tmp_path / "empty")


def test_reader_hook_ignores_text_folders_files_and_missing_paths(
    t2_series: tuple[np.ndarray, np.ndarray, Path], tmp_path: Path
) -> None:
    _, _, folder = t2_series
    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(12):
        (texts / f"note{i}.txt").write_text("x" * 200)

    assert not looks_like_dicom_folder(texts)
    assert not looks_like_dicom_folder(next(folder.iterdir()))  # a DICOM file itself is not a folder
    assert not looks_like_dicom_folder(tmp_path / "missing")
