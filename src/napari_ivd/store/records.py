"""The store's records as typed, immutable objects: case, head (commit), revision, proposal, model.

Records are plain JSON in the store (group attributes or small keys), so any zarr or
JSON tool can read them; these classes are what the Python API hands out instead of dicts.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from napari_ivd.errors import IvdError, StoreError, StoreVersionError
from napari_ivd.io.annotations import LabelledPoint
from napari_ivd.io.geometry import VolumeGeometry
from napari_ivd.store import schema

log = logging.getLogger(__name__)

__all__ = ["Annotation", "CaseInfo", "Head", "ModelInfo", "ProposalInfo", "RevisionInfo"]


@dataclass(frozen=True)
class Head:
    """A case's commit record (the ``HEAD`` key): what is committed, and the case status.

    Only this key is ever replaced; everything it lists was written completely before.
    ``revisions`` and ``proposals`` are ``(id, record sha256)`` pairs in commit order.
    ``names_unsure``: the researcher is not sure the case's levels are counted right (a
    transitional vertebra, a scan that shows neither end of the spine), see
    :meth:`~napari_ivd.store.AnnotationStore.set_names_unsure`.
    """

    case_id: str
    status: str = "new"
    head: str | None = None
    revisions: tuple[tuple[str, str], ...] = ()
    proposals: tuple[tuple[str, str], ...] = ()
    updated_utc: str = ""
    commit: int = 0
    names_unsure: bool = False

    @property
    def revision_ids(self) -> tuple[str, ...]:
        """Committed revision ids, oldest first."""
        return tuple(r for r, _ in self.revisions)

    @property
    def proposal_ids(self) -> tuple[str, ...]:
        """Committed proposal ids, oldest first."""
        return tuple(p for p, _ in self.proposals)

    def bumped(self, **changes: Any) -> Head:
        """A copy with ``changes``, a new commit number and time."""
        return replace(self, **changes, commit=self.commit + 1, updated_utc=schema.utc_now())

    def to_json(self) -> bytes:
        """The ``HEAD`` key's content."""
        d = {
            "format_version": schema.FORMAT_VERSION,
            "case_id": self.case_id,
            "status": self.status,
            "head": self.head,
            "revisions": [{"id": r, "sha256": s} for r, s in self.revisions],
            "proposals": [{"id": p, "sha256": s} for p, s in self.proposals],
            "updated_utc": self.updated_utc,
            "commit": self.commit,
        }
        if self.names_unsure:  # written only when set: a case without it reads as before
            d["names_unsure"] = True
        return json.dumps(d, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Head:
        """Parse a ``HEAD`` key.

        Raises
        ------
        StoreVersionError
            Written by a newer store format.
        StoreError
            Not a readable head record.
        """
        try:
            d = json.loads(data)
            version = d.get("format_version")
        except (ValueError, AttributeError) as exc:
            raise StoreError(
                f"{where}: HEAD is not a readable commit record ({exc}); run `napari-ivd store check`"
            ) from exc
        if version != schema.FORMAT_VERSION:
            raise StoreVersionError(
                f"{where}: HEAD has format_version {version!r}; this napari-ivd reads version {schema.FORMAT_VERSION}. "
                "Upgrade napari-ivd to open this store"
            )
        try:
            head = cls(
                case_id=schema.check_case_id(d["case_id"]),
                status=schema.check_status(d["status"]),
                head=d["head"],
                revisions=tuple(
                    (schema.check_entry_id(e["id"], schema.REVISIONS), schema.check_sha256(e["sha256"], where))
                    for e in d["revisions"]
                ),
                proposals=tuple(
                    (schema.check_entry_id(e["id"], schema.PROPOSALS), schema.check_sha256(e["sha256"], where))
                    for e in d["proposals"]
                ),
                updated_utc=str(d.get("updated_utc", "")),
                commit=int(d.get("commit", 0)),
                names_unsure=d.get("names_unsure", False) is True,
            )
        except (KeyError, TypeError, ValueError, StoreError) as exc:
            raise StoreError(f"{where}: HEAD is damaged ({exc}); run `napari-ivd store check`") from exc
        if head.head is not None and head.head not in head.revision_ids:
            raise StoreError(f"{where}: HEAD names head {head.head!r}, no committed revision; the store is damaged")
        return head


@dataclass(frozen=True)
class CaseInfo:
    """One case: its image's identity and grid, and where its history stands."""

    case_id: str
    geometry: VolumeGeometry
    image_sha256: str
    image_dtype: str
    source_path: str
    source_file_sha256: str | None
    created_utc: str
    status: str
    head: str | None
    n_revisions: int
    n_proposals: int
    updated_utc: str
    #: The researcher is not sure its levels are counted right: it trains masks, not names, and judges no names.
    names_unsure: bool = False

    @classmethod
    def from_records(cls, record: dict[str, Any], head: Head) -> CaseInfo:
        """Combine the case group's attributes with its head.

        Raises
        ------
        StoreError
            The case record lacks a field or holds an unusable grid (a damaged ``zarr.json``).
        """
        try:
            image, source = record["image"], record["source"]
            geometry = VolumeGeometry.from_dict(image, source=source["path"])
            return cls(
                case_id=str(record["case_id"]),
                geometry=geometry,
                image_sha256=schema.check_sha256(image["sha256"], f"case {head.case_id} image"),
                image_dtype=str(image["dtype"]),
                source_path=str(source["path"]),
                source_file_sha256=source.get("file_sha256"),
                created_utc=str(record["created_utc"]),
                status=head.status,
                head=head.head,
                n_revisions=len(head.revisions),
                n_proposals=len(head.proposals),
                updated_utc=head.updated_utc,
                names_unsure=head.names_unsure,
            )
        except (KeyError, TypeError, ValueError, IvdError) as exc:
            raise StoreError(
                f"case {head.case_id}: its record (cases/{head.case_id}/zarr.json) is damaged "
                f"({type(exc).__name__}: {exc}); run `napari-ivd store check`"
            ) from exc


@dataclass(frozen=True)
class RevisionInfo:
    """One saved revision of a case (without its points and mask, see :class:`Annotation`).

    ``absent`` are the levels the researcher marked as not present in this scan (e.g. no
    L5-S1 disc on a sacralised L5), canonical and cranio-caudal: known background, unlike a
    level the revision merely does not annotate. Records written before it existed have none.
    """

    case_id: str
    revision_id: str
    parent: str | None
    author: str
    created_utc: str
    note: str
    source: str
    restored_from: str | None
    n_points: int
    has_mask: bool
    mask_storage: str | None
    voxels_changed: int | None
    chunks_written: int
    proposal: str | None = None
    based_on: str | None = None
    merged_over: str | None = None
    absent: tuple[str, ...] = ()

    @classmethod
    def from_record(cls, case_id: str, record: dict[str, Any]) -> RevisionInfo:
        """Build from a revision record (the revision group's attributes)."""
        mask = record.get("mask")
        return cls(
            case_id=case_id,
            revision_id=record["id"],
            parent=record.get("parent"),
            author=record.get("author", ""),
            created_utc=record.get("created_utc", ""),
            note=record.get("note", ""),
            source=record.get("source", "manual"),
            restored_from=record.get("restored_from"),
            n_points=int(record.get("n_points", 0)),
            has_mask=mask is not None,
            mask_storage=None if mask is None else mask["storage"],
            voxels_changed=None if mask is None else mask.get("voxels_changed"),
            chunks_written=0 if mask is None else len(mask["chunks"]),
            proposal=record.get("proposal"),
            based_on=record.get("based_on"),
            merged_over=record.get("merged_over"),
            absent=tuple(str(level) for level in record.get("absent", ())),
        )


@dataclass(frozen=True)
class ProposalInfo:
    """One model proposal stored for a case."""

    case_id: str
    proposal_id: str
    model: str
    created_utc: str
    n_points: int
    has_mask: bool
    note: str = ""

    @classmethod
    def from_record(cls, case_id: str, record: dict[str, Any]) -> ProposalInfo:
        """Build from a proposal record."""
        return cls(
            case_id=case_id,
            proposal_id=record["id"],
            model=record["model"],
            created_utc=record.get("created_utc", ""),
            n_points=int(record.get("n_points", 0)),
            has_mask=record.get("mask") is not None,
            note=record.get("note", ""),
        )


@dataclass(frozen=True, eq=False)
class Annotation:
    """Points and mask of one revision (or proposal) on its case's image grid.

    Attributes
    ----------
    case_id : str
    entry_id : str or None
        Revision (``r000003``) or proposal (``p000001``) id; None for a case with no revision yet.
    points : tuple of LabelledPoint
        Cranio-caudal; ``ijk_vox`` are fractional voxel indices of the image.
    mask_tss : (I, J, K) uint8 array or None
        TotalSpineSeg values; a fresh copy the caller may edit.
    geometry : VolumeGeometry
        The image's grid.
    """

    case_id: str
    entry_id: str | None
    points: tuple[LabelledPoint, ...]
    mask_tss: np.ndarray | None
    geometry: VolumeGeometry
    info: RevisionInfo | ProposalInfo | None = field(default=None, repr=False)

    @property
    def absent(self) -> tuple[str, ...]:
        """The levels the revision marks as not present in the scan (none for a proposal or no revision)."""
        return self.info.absent if isinstance(self.info, RevisionInfo) else ()

    def points_mm(self) -> dict[str, np.ndarray]:
        """Scanner positions (RAS mm) keyed by level, as the metrics compare them."""
        return {p.level: self.geometry.vox_to_mm(np.asarray(p.ijk_vox)[None])[0] for p in self.points}


@dataclass(frozen=True)
class ModelInfo:
    """A model kept in the store (``models/<model_id>/``)."""

    model_id: str
    name: str
    arch: str
    weights_sha256: str
    card_sha256: str
    size_bytes: int
    added_utc: str
    card: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)
