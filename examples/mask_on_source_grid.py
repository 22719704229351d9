"""Open a spine MRI, draw a mask in the sagittal display, write it back on the file's grid.

The napari-ivd core needs no GUI: this is what a batch script or a notebook does.

    python examples/mask_on_source_grid.py IMAGE.nii.gz OUT_mask.nii.gz
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from napari_ivd.io import read_volume
from napari_ivd.layer_data import image_layer_data, write_display_labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path, help="NIfTI file or DICOM series folder")
    parser.add_argument("out", type=Path, help="output mask (.nii.gz) on the image's grid")
    args = parser.parse_args()

    volume = read_volume(args.image)
    shown, layer_kwargs, _ = image_layer_data(volume)
    print(
        f"{volume.path.name}: stored {''.join(volume.geometry.axcodes)} {volume.geometry.shape}, "
        f"shown L-I-P {shown.shape} at {layer_kwargs['scale']} mm"
    )

    # A 10 mm sphere at the centre of the mid-sagittal slice, drawn in display mm.
    spacing = np.array(layer_kwargs["scale"])
    grid = np.stack(np.indices(shown.shape), axis=-1) * spacing
    centre = (np.array(shown.shape) - 1) / 2 * spacing
    mask = (np.linalg.norm(grid - centre, axis=-1) <= 10).astype(np.uint8)

    out = write_display_labels(args.out, mask, layer_kwargs["metadata"])
    print(f"wrote {out}: {int(mask.sum())} voxels, on the source grid with the source affine")


if __name__ == "__main__":
    main()
