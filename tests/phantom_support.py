"""Phantom spines for the training tests: vertebral bodies on a leaning spine, every body's place known.

Shared by ``test_unknown_not_absent.py`` (a level nobody annotates teaches nothing) and
``test_absent_levels.py`` (a level marked absent is known background).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_ivd.anatomy import structure
from napari_ivd.io import Volume, VolumeGeometry
from napari_ivd.training.cases import LabelledCase
from napari_ivd.training.data import SampleConfig

__all__ = ["BODY_SEMI_AXES_MM", "BODY_STEP_MM", "PHANTOM_CFG", "SHAPE", "phantom_bodies", "phantom_case"]

# --- phantoms: five vertebral bodies 3 mm apart on a spine leaning 6 degrees forward ------------
# File axes as in ../shared/data/lumbar: i -> inferior, j -> posterior, k -> right, 1 mm voxels.
SHAPE = (124, 64, 15)
BODY_STEP_MM, BODY_SEMI_AXES_MM = 23.0, (10.0, 13.0, 6.0)  # S-I, A-P, L-R: 3 mm discs between bodies

#: Crops holding the whole phantom, no caudal context.
PHANTOM_CFG = SampleConfig(crop=(128, 64), caudal_context_mm=0.0)


def phantom_bodies(levels: Sequence[str]) -> dict[str, np.ndarray]:
    """Body centre (i, j, k) per level, top-down."""
    return {
        name: np.array([14.0 + BODY_STEP_MM * n, 24.0 + 0.1 * BODY_STEP_MM * n, 7.0]) for n, name in enumerate(levels)
    }


def phantom_case(
    levels: Sequence[str], annotated: set[str], unnamed: bool = False
) -> tuple[LabelledCase, LabelledCase]:
    """(case, tracer): the case annotates ``annotated`` (points and masks); the tracer's mask holds every body.

    ``unnamed``: the case's mask is a body mask whose levels nobody named (``mask_kind_only``).

    Both have the same image and keypoints, so a sample of either drawn with the same slice
    and random stream has the same geometry: the tracer's mask shows where the case's
    unannotated bodies land in the case's sample.
    """
    affine = np.array([[0.0, 0.0, -1.0, 0.0], [0.0, -1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    grid = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float64) for n in SHAPE), indexing="ij"), axis=-1)
    image = np.zeros(SHAPE, dtype=np.float32)
    every, only = np.zeros(SHAPE, dtype=np.uint8), np.zeros(SHAPE, dtype=np.uint8)
    centres = phantom_bodies(levels)
    for name, centre in centres.items():
        inside = (((grid - centre) / BODY_SEMI_AXES_MM) ** 4).sum(axis=-1) <= 1  # flat endplates
        image[inside] = 800.0
        every[inside] = structure(name).tss_value
        if name in annotated:
            only[inside] = structure(name).tss_value
    volume = Volume(image, VolumeGeometry(affine, SHAPE), Path("phantom.nii.gz"))
    points = {name: centres[name] for name in annotated}
    kinds = frozenset({"vertebra"})
    tracer = LabelledCase("phantom/tracer", "T2w", volume, points, every, kinds)
    if unnamed:
        return LabelledCase("phantom/case", "T2w", volume, points, None, kinds, (only > 0).astype(np.uint8)), tracer
    return LabelledCase("phantom/case", "T2w", volume, points, only, kinds), tracer
