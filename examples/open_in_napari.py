"""Open a spine MRI (or the bundled sample) sagittally in napari through the napari-ivd reader.

python examples/open_in_napari.py [IMAGE.nii.gz | DICOM_FOLDER]
"""

from __future__ import annotations

import sys

import napari

viewer = napari.Viewer()
if len(sys.argv) > 1:
    viewer.open(sys.argv[1], plugin="napari-ivd")
else:
    viewer.open_sample("napari-ivd", "lumbar_t2w")
viewer.dims.axis_labels = viewer.layers[-1].axis_labels
napari.run()
