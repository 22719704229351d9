"""npe2 sample data: the bundled lumbar T2w, shown exactly as the reader shows files."""

from __future__ import annotations

from napari_ivd.data import sample_t2w_path
from napari_ivd.io import read_nifti
from napari_ivd.layer_data import LayerDataTuple, image_layer_data


def lumbar_t2w() -> list[LayerDataTuple]:
    """Real sagittal lumbar T2w (Spinal Cord Toolbox tutorial data, MIT)."""
    return [image_layer_data(read_nifti(sample_t2w_path()))]
