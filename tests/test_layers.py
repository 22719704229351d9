"""Proposals as napari layers: named, coloured points and a labelled mask a user can read."""

from __future__ import annotations

import napari
import numpy as np
import pytest

from napari_ivd import anatomy
from napari_ivd.data import sample_t2w_path
from napari_ivd.io import read_nifti
from napari_ivd.io.annotations import LabelledPoint
from napari_ivd.layer_data import POINTS_SLAB_MM, image_layer_data, labels_layer_data, points_layer_data

POINTS = [
    LabelledPoint("L4", (15.0, 110.0, 55.0), 0.9),
    LabelledPoint("L4-L5", (16.0, 100.0, 40.0), 0.3),
    LabelledPoint("L5", (17.0, 90.0, 25.0), 0.8),
]


@pytest.fixture(scope="module")
def sample():
    return read_nifti(sample_t2w_path())


def test_points_show_their_level_colour_and_doubt(make_napari_viewer, sample):
    viewer = make_napari_viewer()
    vertebrae = viewer.add_layer(napari.layers.Layer.create(*points_layer_data(POINTS, sample, "vertebra")))
    discs = viewer.add_layer(napari.layers.Layer.create(*points_layer_data(POINTS, sample, "disc")))
    assert list(vertebrae.features["level"]) == ["L4", "L5"] and list(discs.features["level"]) == ["L4-L5"]
    assert list(vertebrae.text.values) == ["L4", "L5"]
    assert np.allclose(vertebrae.face_color[0], anatomy.structure("L4").colour)
    assert np.allclose(discs.border_color[0], [1, 0, 0, 1])  # score 0.3: flagged for review
    assert np.allclose(vertebrae.border_color[0], [1, 1, 1, 1])
    # the point sits where the file voxel is shown
    assert np.allclose(vertebrae.data[0], sample.view.vox_to_display([POINTS[0].ijk_vox])[0])


def test_points_near_the_shown_slice_are_drawn(make_napari_viewer, sample):
    viewer = make_napari_viewer()
    viewer.add_layer(napari.layers.Layer.create(*image_layer_data(sample)))  # slider spans the scan
    layer = viewer.add_layer(napari.layers.Layer.create(*points_layer_data(POINTS, sample, "vertebra")))
    viewer.dims.margin_left = viewer.dims.margin_right = (POINTS_SLAB_MM, 0.0, 0.0)
    shown_at = layer.data[0, 0]
    viewer.dims.set_point(0, shown_at + 5)  # 5 mm beside the structure: still drawn
    assert len(layer._view_data) == 2
    viewer.dims.set_point(0, 0.0)  # far away
    assert len(layer._view_data) == 0


def test_mask_hover_names_the_structure(make_napari_viewer, sample):
    mask = np.zeros(sample.geometry.shape, np.uint8)
    mask[10:20, 100:120, 50:60] = anatomy.structure("L4").tss_value
    viewer = make_napari_viewer()
    layer = viewer.add_layer(napari.layers.Layer.create(*labels_layer_data(mask, sample)))
    world = layer.data_to_world(sample.view.vox_to_display([(15, 110, 55)])[0])
    assert "structure: L4" in layer.get_status(world, world=True)["value"]
    assert np.allclose(layer.colormap.map(np.array([44]))[0], anatomy.structure("L4").colour)
