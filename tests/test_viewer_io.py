"""What a user sees when opening scans in a real napari viewer (run under xvfb)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from napari.utils.notifications import notification_manager

from bad_inputs import BAD_INPUTS, BadInput
from napari_ivd._reader import get_reader
from napari_ivd.layer_data import view_from_metadata

SAMPLE_IN_SHARED = "fixtures/sct_tutorial_data/single_subject/data/t2_lumbar/t2_lumbar.nii.gz"


@pytest.fixture
def notifications():
    """Notifications emitted during the test, newest last."""
    start = len(notification_manager.records)
    return lambda: [str(n.message) for n in notification_manager.records[start:]]


def test_sample_data_shows_a_sagittal_lumbar_spine(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-ivd", "lumbar_t2w")
    (layer,) = viewer.layers
    assert layer.name == "t2_lumbar"
    assert layer.data.shape == (38, 201, 257)  # slider L-R, rows S->I, columns A->P
    assert tuple(layer.scale) == pytest.approx((1.0, 1.0, 1.0))
    assert layer.metadata["napari_ivd"]["geometry"]["shape"] == [38, 257, 201]


def test_opening_a_psr_file_shows_it_sagittally_with_mm_scale(make_napari_viewer, shared_data):
    viewer = make_napari_viewer()
    path = shared_data / "fixtures/sct_testing_data/t2/t2.nii.gz"  # stored P, S, R
    viewer.open(path, plugin="napari-ivd")
    (layer,) = viewer.layers
    source = np.asarray(nib.load(path).dataobj)
    assert layer.data.shape == (52, 55, 60)
    # display axes point L, I, P; the file's point P, S, R: display (0, 0, 0) is the file's
    # rightmost (k=51), most superior (j=54), most anterior (i=0) voxel.
    assert layer.data[0, 0, 0] == source[0, 54, 51]


def test_label_saved_from_the_viewer_lands_on_the_file_voxel(make_napari_viewer, shared_data, tmp_path):
    viewer = make_napari_viewer()
    path = shared_data / "lumbar/VB2/case-07/image.nii.gz"  # stored I, P, R
    viewer.open(path, plugin="napari-ivd")
    image = viewer.layers[0]
    labels = viewer.add_labels(
        np.zeros(image.data.shape, np.uint8), scale=image.scale, units=image.units, metadata=image.metadata
    )
    labels.brush_size = 1
    # The user paints where file voxel (200, 150, 40) is shown; napari's world coordinates are mm.
    target_vox = (200, 150, 40)
    world_mm = image.data_to_world(view_from_metadata(image.metadata).vox_to_display([target_vox])[0])
    labels.paint(labels.world_to_data(world_mm), 3)
    viewer.layers.selection = {labels}
    out = tmp_path / "drawn.nii.gz"
    viewer.layers.save(str(out), selected=True, plugin="napari-ivd")
    written = nib.load(out)
    assert np.array_equal(written.affine, nib.load(path).affine)
    assert [tuple(v) for v in np.argwhere(np.asarray(written.dataobj) == 3)] == [target_vox]


def test_reader_declines_files_that_are_not_scans(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a scan")
    pngs = tmp_path / "screens"
    pngs.mkdir()
    (pngs / "a.png").write_bytes(b"\x89PNG\r\n")
    assert get_reader(str(notes)) is None
    assert get_reader(str(pngs)) is None
    assert get_reader(str(tmp_path / "missing.txt")) is None


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=lambda b: b.id)
def test_bad_input_is_a_notification_and_the_viewer_stays_usable(
    bad: BadInput, make_napari_viewer, shared_data, tmp_path, notifications, monkeypatch
):
    viewer = make_napari_viewer()
    path = bad.make(tmp_path, shared_data)
    with monkeypatch.context() as env:
        for name, value in bad.env.items():
            env.setenv(name, value)
        viewer.open(path, plugin="napari-ivd")
    assert len(viewer.layers) == 0
    (message,) = [m for m in notifications() if path.name in m]
    assert message.startswith(f"napari-ivd could not open {path.name}")
    for word in bad.words:
        assert word in message
    viewer.open(shared_data / SAMPLE_IN_SHARED, plugin="napari-ivd")
    assert len(viewer.layers) == 1


def test_nan_voxels_open_with_a_warning_notification(make_napari_viewer, tmp_path, notifications):
    data = np.ones((6, 7, 8), np.float32)
    data[0, 0, 0] = np.nan
    path = tmp_path / "holes.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    viewer = make_napari_viewer()
    viewer.open(path, plugin="napari-ivd")
    assert len(viewer.layers) == 1 and np.isfinite(viewer.layers[0].data).all()
    assert any("holes.nii.gz: 1 voxel(s) are NaN or Inf" in m for m in notifications())
