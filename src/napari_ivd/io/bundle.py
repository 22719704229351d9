"""One writer for the folder of files a prediction or an export leaves: the *bundle*.

``napari-ivd predict`` (:func:`napari_ivd.inference.save_prediction`) and ``napari-ivd store
export`` (:func:`napari_ivd.store.export_revision`) both write through :func:`write_bundle`,
so a prediction and an exported revision are the same files in the same formats, and a
prediction can be imported, corrected and exported without anything changing form:

* ``points.csv``: every point (:func:`~napari_ivd.io.annotations.write_points_csv`);
* ``discs.nii.gz``: the discs as SCT disc labels;
* ``levels.nii.gz``: the vertebrae as SCT vertebral-level points;
* ``mask.nii.gz``: TotalSpineSeg values, when there is a mask;
* a JSON summary: ``prediction.json`` (source image, model, timings) or ``annotation.json``
  (store, case, revision), each with the ``levels`` in cranio-caudal order.

The three point files are written even when empty (no disc, no vertebra), so a script finds
the same files after every prediction and export; the mask only when there is one, as an
empty mask would claim "no structure here" where nobody looked. All images lie on the
source image's own grid and reuse its NIfTI header when ``like`` names it, so their affines
equal the image's to the bit.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_ivd import anatomy
from napari_ivd.io.annotations import LabelledPoint, write_points_csv, write_sct_discs, write_sct_levels
from napari_ivd.io.geometry import VolumeGeometry
from napari_ivd.io.nifti import write_nifti

__all__ = ["BUNDLE_FILES", "SUMMARY_FILES", "write_bundle"]

log = logging.getLogger(__name__)

#: The bundle's files by kind (the summary's name depends on who writes it: :data:`SUMMARY_FILES`).
BUNDLE_FILES: dict[str, str] = {
    "points": "points.csv",
    "discs": "discs.nii.gz",
    "levels": "levels.nii.gz",
    "mask": "mask.nii.gz",
}
#: The JSON summary's name for a model's prediction and for a stored revision.
SUMMARY_FILES: dict[str, str] = {"prediction": "prediction.json", "annotation": "annotation.json"}


def write_bundle(
    out_dir: Path,
    points: Sequence[LabelledPoint],
    mask_tss: np.ndarray | None,
    geometry: VolumeGeometry,
    summary: Mapping[str, Any],
    *,
    summary_kind: str,
    like: Path | None = None,
    where: str = "",
) -> dict[str, Path]:
    """Write the points (as CSV and SCT labels), the mask if any, and the summary into ``out_dir``.

    Parameters
    ----------
    out_dir : Path
        The bundle's folder.
    points : sequence of LabelledPoint
        The named discs and vertebrae on ``geometry``'s grid.
    mask_tss : ndarray or None
        TotalSpineSeg mask on ``geometry``'s grid; None writes no ``mask.nii.gz``.
    geometry : VolumeGeometry
        The source image's grid.
    summary : mapping
        What the writer records about the bundle's origin (JSON-ready); ``levels`` is added.
    summary_kind : str
        ``"prediction"`` or ``"annotation"``: names the summary file (:data:`SUMMARY_FILES`).
    like : Path, optional
        The source NIfTI whose header the images reuse.
    where : str
        The image or case, named in the warning when two points share a voxel.

    Returns
    -------
    dict of str to Path
        The files written, by kind (``points``, ``discs``, ``levels``, ``mask``, ``summary``).
    """
    if summary_kind not in SUMMARY_FILES:
        raise ValueError(f"summary_kind must be one of {sorted(SUMMARY_FILES)}, got {summary_kind!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ordered = sorted(points, key=lambda p: anatomy.structure(p.level).order)
    files = {"points": write_points_csv(out_dir / BUNDLE_FILES["points"], ordered, geometry)}
    for kind, key, write in (("disc", "discs", write_sct_discs), ("vertebra", "levels", write_sct_levels)):
        group = [p for p in ordered if p.kind == kind]
        _warn_shared_voxels(group, geometry, where, BUNDLE_FILES[key])
        files[key] = write(out_dir / BUNDLE_FILES[key], group, geometry, like=like)
    if mask_tss is not None:
        files["mask"] = write_nifti(out_dir / BUNDLE_FILES["mask"], mask_tss, geometry, like=like)
    files["summary"] = out_dir / SUMMARY_FILES[summary_kind]
    files["summary"].write_text(json.dumps({**summary, "levels": [p.level for p in ordered]}, indent=2))
    return files


def _warn_shared_voxels(group: Sequence[LabelledPoint], geometry: VolumeGeometry, where: str, name: str) -> None:
    """Say when two points fall on one voxel: a label image keeps only one of them, points.csv both."""
    voxels = [tuple(np.clip(np.round(p.ijk_vox), 0, np.array(geometry.shape) - 1).astype(int)) for p in group]
    if len(set(voxels)) < len(voxels):
        log.warning("%s: two points share a voxel; %s keeps one of them (points.csv has both)", where, name)
