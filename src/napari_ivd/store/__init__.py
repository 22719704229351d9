"""The napari-ivd annotation store: every correction kept, versioned and crash-safe, in zarr v3.

One store (a local folder or an fsspec URL) holds, per case, a copy of the image, model
proposals and append-only revisions of named points and TotalSpineSeg masks, plus the
models trained from it. It is the single source the viewer, training and active learning
read. No Qt, no napari, no torch.

Example
-------
>>> from napari_ivd.store import AnnotationStore, import_case, export_revision
>>> store = AnnotationStore.open("annotations.zarr", create=True)
>>> import_case(store, Path("case-11/image.nii.gz"), points=Path("case-11/discs.nii.gz"))
>>> ann = store.load("image")                     # head revision: points + mask
>>> store.save_revision("image", ann.points, edited_mask, note="fixed L4")
>>> store.diff("image", "r000001").format()
"""

from __future__ import annotations

from napari_ivd.store.check import CheckReport, check_store
from napari_ivd.store.content import image_sha256
from napari_ivd.store.exchange import commit_import, export_revision, import_case, prepare_import, read_points_file
from napari_ivd.store.history import PointChange, RevisionDiff, StructureChange, diff_annotations
from napari_ivd.store.models import ActiveModel
from napari_ivd.store.reader import StoreReader
from napari_ivd.store.records import Annotation, CaseInfo, ModelInfo, ProposalInfo, RevisionInfo
from napari_ivd.store.schema import FORMAT_VERSION, STATUSES
from napari_ivd.store.store import AnnotationStore

__all__ = [
    "FORMAT_VERSION",
    "STATUSES",
    "ActiveModel",
    "Annotation",
    "AnnotationStore",
    "CaseInfo",
    "CheckReport",
    "ModelInfo",
    "PointChange",
    "ProposalInfo",
    "RevisionDiff",
    "RevisionInfo",
    "StoreReader",
    "StructureChange",
    "check_store",
    "commit_import",
    "diff_annotations",
    "export_revision",
    "image_sha256",
    "import_case",
    "prepare_import",
    "read_points_file",
]
