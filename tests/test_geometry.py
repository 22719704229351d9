"""VolumeGeometry and SagittalView: exact, orientation-independent voxel bookkeeping."""

from __future__ import annotations

import itertools
import json

import nibabel.orientations as nio
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from napari_ivd.errors import GeometryError, GeometryMismatchError
from napari_ivd.io import SagittalView, VolumeGeometry
from napari_ivd.io.annotations import label_centroids

ALL_ORIENTATIONS = [
    (perm, signs) for perm in itertools.permutations(range(3)) for signs in itertools.product((1, -1), repeat=3)
]


def _affine(perm, signs, spacing=(0.5, 0.8, 3.0), origin=(-10.0, 20.0, 5.0)) -> np.ndarray:
    affine = np.zeros((4, 4))
    for voxel_axis, (world_axis, sign) in enumerate(zip(perm, signs, strict=True)):
        affine[world_axis, voxel_axis] = sign * spacing[voxel_axis]
    affine[:3, 3] = origin
    affine[3, 3] = 1
    return affine


@pytest.mark.parametrize(("perm", "signs"), ALL_ORIENTATIONS)
def test_every_orientation_is_shown_left_inferior_posterior(perm, signs):
    geometry = VolumeGeometry(_affine(perm, signs), (5, 6, 7))
    view = SagittalView(geometry)
    assert view.display.axcodes == ("L", "I", "P")
    volume = np.arange(5 * 6 * 7).reshape(5, 6, 7)
    shown = view.to_display(volume)
    assert np.array_equal(view.to_file(shown), volume)
    # every display voxel holds the file voxel at the same scanner position
    for ijk_display in [(0, 0, 0), (1, 2, 3), tuple(s - 1 for s in shown.shape)]:
        ijk_vox = view.display_to_vox([ijk_display])[0]
        assert shown[ijk_display] == volume[tuple(ijk_vox.astype(int))]
        assert np.allclose(view.display.vox_to_mm([ijk_display]), geometry.vox_to_mm([ijk_vox]))


def test_display_spacing_follows_the_axes_it_came_from():
    # PSR file with 3 mm slices along R: the slider (left-right) must carry the 3 mm.
    geometry = VolumeGeometry(_affine((1, 2, 0), (-1, 1, 1), spacing=(0.5, 0.6, 3.0)), (40, 50, 12))
    view = SagittalView(geometry)
    assert view.spacing_mm == pytest.approx((3.0, 0.6, 0.5))
    assert view.display.shape == (12, 50, 40)


def test_oblique_scan_maps_to_nearest_axes_without_resampling():
    angle = np.deg2rad(20)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.9, 0.9, 4.0])
    view = SagittalView(VolumeGeometry(affine, (10, 11, 12)))
    assert view.display.axcodes == ("L", "I", "P")
    assert set(np.abs(view.display_to_vox_affine[:3, :3]).ravel()) <= {0.0, 1.0}


@given(
    orientation=st.sampled_from(ALL_ORIENTATIONS),
    ijk=st.tuples(*(st.floats(-50, 500, allow_nan=False) for _ in range(3))),
)
@settings(max_examples=200, deadline=None)
def test_voxel_mm_display_round_trips(orientation, ijk):
    geometry = VolumeGeometry(_affine(*orientation), (30, 40, 50))
    view = SagittalView(geometry)
    assert np.allclose(geometry.mm_to_vox(geometry.vox_to_mm([ijk])), [ijk], atol=1e-6)
    assert np.allclose(view.display_to_vox(view.vox_to_display([ijk])), [ijk], atol=1e-9)


@pytest.mark.parametrize(
    ("affine", "words"),
    [
        (np.diag([1.0, 0.0, 1.0, 1.0]), "zero axis"),
        (np.full((4, 4), np.nan), "NaN or Inf"),
        (np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]), "collinear"),
    ],
)
def test_broken_affines_are_refused_with_a_reason(affine, words):
    with pytest.raises(GeometryError, match=words):
        VolumeGeometry(affine, (4, 4, 4), "scan.nii.gz")


def test_geometry_survives_json_round_trip_and_compares_by_value():
    geometry = VolumeGeometry(_affine((2, 0, 1), (1, -1, 1)), (7, 8, 9), "a.nii.gz")
    again = VolumeGeometry.from_dict(geometry.to_dict())
    assert again == geometry and hash(again) == hash(geometry)
    assert again.source == "a.nii.gz"


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False), min_size=12, max_size=12))
def test_affine_survives_json_bit_for_bit(entries):
    affine = np.eye(4)
    affine[:3, :] = np.reshape(entries, (3, 4))
    affine[:3, :3] += np.diag([2.5e3, 2.5e3, 2.5e3])  # diagonally dominant: always a valid grid
    geometry = VolumeGeometry(affine, (3, 4, 5), "x.nii.gz")
    for with_source in (True, False):
        data = json.loads(json.dumps(geometry.to_dict(with_source=with_source)))
        again = VolumeGeometry.from_dict(data, None if with_source else "y.nii.gz")
        assert again.affine.tobytes() == geometry.affine.tobytes() and again.shape == geometry.shape
        assert again.source == ("x.nii.gz" if with_source else "y.nii.gz")
    assert "source" not in geometry.to_dict(with_source=False)


def test_layer_of_wrong_shape_cannot_be_written_back():
    view = SagittalView(VolumeGeometry(np.eye(4), (4, 5, 6), "scan.nii.gz"))
    with pytest.raises(GeometryMismatchError, match=r"layer data has shape \(4, 5, 6\)"):
        view.to_file(np.zeros((4, 5, 6)))  # the display grid of this RAS scan is (4, 6, 5)


def test_axcodes_match_nibabel():
    affine = _affine((1, 2, 0), (-1, -1, 1))
    assert VolumeGeometry(affine, (3, 3, 3)).axcodes == tuple(nio.aff2axcodes(affine))


def test_label_centroids_agree_with_scipy_and_leave_out_absent_values_and_background():
    labels = np.random.default_rng(0).choice([0, 0, 0, 2, 7, 41], size=(6, 7, 8)).astype(np.uint8)
    got = label_centroids(labels, [0, 2, 7, 41, 9, 300])
    assert sorted(got) == [2, 7, 41]
    for value in got:
        np.testing.assert_allclose(got[value], ndimage.center_of_mass(labels == value))
    only_rows = label_centroids(labels, [7], axes=(1,))[7]
    assert np.isnan(only_rows[[0, 2]]).all() and only_rows[1] == pytest.approx(got[7][1])


def test_vox_to_display_mm_measures_along_the_display_axes_in_mm():
    # file voxel axes point posterior, inferior and right, the last 2 mm apart (the slices)
    affine = np.array([[0, 0, 2.0, 0], [-1.0, 0, 0, 0], [0, -1.0, 0, 0], [0, 0, 0, 1]])
    view = SagittalView(VolumeGeometry(affine, (40, 50, 10)))
    one, two = view.vox_to_display_mm(np.array([[3.0, 4.0, 5.0], [3.0, 4.0, 6.0]]))  # one voxel apart across slices
    assert np.linalg.norm(two - one) == pytest.approx(2.0)
    assert np.flatnonzero(np.abs(two - one) > 1e-9).tolist() == [0]  # left-right is the display's first axis
    np.testing.assert_allclose(one, view.vox_to_display([3.0, 4.0, 5.0])[0] * np.asarray(view.spacing_mm))
