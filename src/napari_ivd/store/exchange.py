"""Import existing annotation files into the store, and export any revision back to files.

Labs arrive with SCT disc labels, SCT vertebral-level labels, TotalSpineSeg masks and the
``points.csv`` that ``napari-ivd predict`` writes; they leave with the same files. Both
directions work on the image's own voxel grid, so an import followed by an export
reproduces the input voxel for voxel, in any orientation. Exports reuse the source image's
NIfTI header when the source file is still there and unchanged (affines equal to the bit),
and otherwise write the stored affine.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_ivd.errors import StoreError, UnreadableFileError
from napari_ivd.io import read_volume
from napari_ivd.io.annotations import (
    LabelledPoint,
    read_points_csv,
    read_sct_discs,
    read_sct_levels,
    read_tss_mask,
)
from napari_ivd.io.bundle import write_bundle
from napari_ivd.io.geometry import VolumeGeometry
from napari_ivd.io.nifti import is_nifti_path
from napari_ivd.io.volume import Volume
from napari_ivd.store import schema
from napari_ivd.store.content import (
    check_absent,
    check_mask_values,
    check_points,
    file_sha256,
    image_sha256,
    prepare_mask,
)
from napari_ivd.store.records import CaseInfo
from napari_ivd.store.store import AnnotationStore

log = logging.getLogger(__name__)

__all__ = ["PreparedImport", "commit_import", "export_revision", "import_case", "prepare_import", "read_points_file"]


def read_points_file(path: Path, geometry: VolumeGeometry) -> list[LabelledPoint]:
    """Points from a ``points.csv`` (as ``predict`` writes it) or an SCT disc-label NIfTI.

    Raises
    ------
    UnreadableFileError
        Neither a ``.csv`` nor a NIfTI file, or not readable as one.
    GeometryMismatchError
        A NIfTI label file on another grid than the image.
    UnknownLevelError
        An unknown level name or label value.
    """
    path = Path(path)
    if path.suffix.lower() == ".csv":
        if not path.is_file():
            raise UnreadableFileError(f"{path}: no such file")
        return read_points_csv(path)
    if is_nifti_path(path):
        return read_sct_discs(path, geometry)
    raise UnreadableFileError(f"{path}: expected a points.csv or an SCT disc-label NIfTI (.nii, .nii.gz)")


@dataclass(frozen=True, eq=False)
class PreparedImport:
    """One image and its annotations, read and checked, ready to write (nothing written yet)."""

    volume: Volume
    case_id: str
    points: tuple[LabelledPoint, ...] | None
    mask: np.ndarray | None
    files: tuple[Path, ...]
    image_sha256: str
    absent: tuple[str, ...] | None = None


def prepare_import(
    store: AnnotationStore | None,
    image: Path,
    *,
    case_id: str | None = None,
    points: Path | None = None,
    levels: Path | None = None,
    mask: Path | None = None,
    absent: Iterable[str] | None = None,
) -> PreparedImport:
    """Read and check an image and its annotation files against it and against the store.

    Parameters
    ----------
    store : AnnotationStore or None
        The store the case will go to (None: a store yet to be created).
    image : Path
        NIfTI file or DICOM series folder.
    case_id : str, optional
        Default: the image file name without suffixes.
    points : Path, optional
        ``points.csv`` or SCT disc-label NIfTI.
    levels : Path, optional
        SCT vertebral-level NIfTI (value N = vertebral body N).
    mask : Path, optional
        NIfTI in TotalSpineSeg values.
    absent : iterable of str, optional
        Levels not present in the scan (an exported ``annotation.json``'s ``absent``); None:
        for a case already stored, its head revision's are kept.

    Raises
    ------
    IvdError
        Any problem with the files (unreadable, another grid, unknown levels or mask
        values, points outside the image), the case id (holds another image) or the image
        (another case holds it).
    """
    volume = read_volume(image)
    geometry = volume.geometry
    case_id = schema.check_case_id(case_id or volume.name)
    where = f"{image} (case {case_id})"
    files = [Path(image)]
    found: list[LabelledPoint] | None = None
    if points is not None:
        found = read_points_file(points, geometry)
        files.append(Path(points))
    if levels is not None:
        found = [*(found or []), *read_sct_levels(levels, geometry)]
        files.append(Path(levels))
    checked = check_points(found, geometry, where) if found is not None else None
    checked_absent = None if absent is None else check_absent(absent, checked or (), where)
    checked_mask = None
    if mask is not None:
        checked_mask = prepare_mask(read_tss_mask(mask, geometry), geometry, f"{mask} (case {case_id})")
        check_mask_values(checked_mask, f"{mask} (case {case_id})")
        files.append(Path(mask))
    digest = image_sha256(volume.array)
    if store is not None:
        store.check_image(case_id, volume, digest)
    return PreparedImport(volume, case_id, checked, checked_mask, tuple(files), digest, checked_absent)


def commit_import(
    store: AnnotationStore,
    prepared: PreparedImport,
    *,
    author: str | None = None,
    note: str | None = None,
    status: str | None = None,
) -> CaseInfo:
    """Write a prepared import: the case (if new) and, with annotations, a revision."""
    has_annotations = prepared.points is not None or prepared.mask is not None
    if note is None:
        note = "imported from " + ", ".join(p.name for p in prepared.files[1:]) if has_annotations else ""
    return store.add_case(
        prepared.volume,
        prepared.case_id,
        points=prepared.points,
        mask=prepared.mask,
        absent=prepared.absent,
        author=author,
        note=note,
        status=status,
    )


def import_case(
    store: AnnotationStore,
    image: Path,
    *,
    case_id: str | None = None,
    points: Path | None = None,
    levels: Path | None = None,
    mask: Path | None = None,
    absent: Iterable[str] | None = None,
    author: str | None = None,
    note: str | None = None,
    status: str | None = None,
) -> CaseInfo:
    """Import one image (and its annotation files) as a case: :func:`prepare_import` then :func:`commit_import`.

    Example
    -------
    >>> import_case(store, Path("IVD/case-11/image.nii.gz"), case_id="IVD_case-11",
    ...             points=Path("IVD/case-11/discs_sct_centroid.nii.gz"),
    ...             mask=Path("IVD/case-11/mask_tss.nii.gz"), status="verified")
    """
    prepared = prepare_import(store, image, case_id=case_id, points=points, levels=levels, mask=mask, absent=absent)
    return commit_import(store, prepared, author=author, note=note, status=status)


def _like(info: CaseInfo) -> Path | None:
    """The source NIfTI when it still exists unchanged (its header gives bit-equal affines)."""
    source = Path(info.source_path)
    if not info.source_path or not is_nifti_path(source) or not source.is_file():
        return None
    if info.source_file_sha256 is not None and file_sha256(source) != info.source_file_sha256:
        log.info("%s changed since import; exporting with the stored affine", source)
        return None
    return source


def export_revision(
    store: AnnotationStore, case_id: str, out_dir: Path, revision: str | int | None = None
) -> dict[str, Path]:
    """Write a revision (default: the head) as files on the case's original image grid.

    The same bundle as ``predict`` (:func:`napari_ivd.io.bundle.write_bundle`): ``points.csv``,
    ``discs.nii.gz`` (SCT disc labels), ``levels.nii.gz`` (SCT vertebral levels), these three
    even when empty, ``mask.nii.gz`` (TotalSpineSeg values, if the revision has a mask) and
    ``annotation.json`` (case, revision, source image, levels, and the ``absent`` levels: those
    marked not present in the scan, which no point or label file can say; give them back to
    :func:`import_case` as ``absent``; and ``names_unsure``, the case's mark that its levels
    may be counted wrong: ``import --names-unsure`` gives it back).

    Returns
    -------
    dict of str to Path
        The files written, by kind.
    """
    info = store.case(case_id)
    lost = store.lost_entries(case_id)
    if lost:
        raise StoreError(
            f"{store.location} case {case_id}: {', '.join(lost)} were committed but its HEAD no longer lists them "
            f"(rolled back); nothing exported. Run `napari-ivd store repair {store.location} {case_id}` first"
        )
    annotation = store.load(case_id, revision)
    like = _like(info)
    summary = {
        "store": store.location,
        "case_id": case_id,
        "revision": annotation.entry_id,
        "status": info.status,
        "source": info.source_path,
        "image_sha256": info.image_sha256,
        "header_from": str(like) if like else "stored affine",
        "revision_info": None if annotation.info is None else annotation.info.__dict__,
        "absent": list(annotation.absent),
        "names_unsure": info.names_unsure,
    }
    return write_bundle(
        out_dir,
        annotation.points,
        annotation.mask_tss,
        info.geometry,
        summary,
        summary_kind="annotation",
        like=like,
        where=f"case {case_id}",
    )
