"""``AnnotationStore``: cases, revisions, proposals and models in one zarr v3 store.

A lab's annotations are months of expert time, so every write follows one rule: write the
new revision (or case, proposal, model) completely under keys of its own, flush it, then
atomically replace the one small commit record that makes it visible (``HEAD`` per case,
``model.json`` per model). A crash at any instant leaves the previous commit valid; what
was half-written is invisible and is overwritten by the next writer. Writers take the
store's lock (:mod:`napari_ivd.store.lock`); readers never do.

The store is composed of small modules, each used in one direction only (none imports
this one):

- :mod:`.reader` (``StoreReader``): every checked read; the integrity check
  (:mod:`.check`) and the recovery (:mod:`.recovery`) read through it too.
- :mod:`.entries`: the one writer of revisions and proposals, and the commit.
- :mod:`.creation`: a new store and a new case; :mod:`.models`: stored models.

Not thread-safe: give each thread its own :class:`AnnotationStore`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from napari_ivd.errors import StoreError
from napari_ivd.io.annotations import LabelledPoint
from napari_ivd.io.volume import Volume
from napari_ivd.store import models, schema
from napari_ivd.store.backend import KeyValue, open_keys
from napari_ivd.store.check import CheckReport, check_store
from napari_ivd.store.content import check_absent, check_points, image_sha256, prepare_mask
from napari_ivd.store.creation import open_settings, write_case
from napari_ivd.store.entries import EntryWriter
from napari_ivd.store.history import RevisionDiff, diff_annotations
from napari_ivd.store.lock import WriterLock
from napari_ivd.store.reader import StoreReader
from napari_ivd.store.records import Annotation, CaseInfo, Head, ModelInfo, ProposalInfo, RevisionInfo
from napari_ivd.store.recovery import (
    RepairResult,
    find_lost_entries,
    lost_cases,
    repair_case,
    repair_models,
    repairable_cases,
)

log = logging.getLogger(__name__)

__all__ = ["AnnotationStore"]


class AnnotationStore:
    """Versioned, crash-safe annotations of spine MRI cases in a zarr v3 store.

    Open with :meth:`open` (local folder or fsspec URL). Each case keeps a copy of its
    image, model proposals and append-only revisions of named points and a TotalSpineSeg
    mask; models trained from the store live under ``models/``. See
    :mod:`napari_ivd.store.schema` for the layout.

    Example
    -------
    >>> store = AnnotationStore.open("annotations.zarr", create=True)
    >>> store.add_case(read_volume("L3_017.nii.gz"))
    >>> rev = store.save_revision("L3_017", points, mask, author="jd", note="moved L4-L5")
    >>> store.load("L3_017").points
    """

    def __init__(self, keys: KeyValue, settings: dict[str, Any], lock_timeout_s: float = 10.0) -> None:
        self._keys = keys
        self.settings = settings
        self._lock = WriterLock(keys, timeout_s=lock_timeout_s)
        self._reader = StoreReader(keys)
        self._writer = EntryWriter(self._reader, settings["keyframe_every"])

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls,
        location: str | Path,
        *,
        create: bool = False,
        storage_options: dict[str, Any] | None = None,
        fsync: bool = True,
        lock_timeout_s: float = 10.0,
        mask_chunk_vox: tuple[int, int, int] = schema.DEFAULT_MASK_CHUNK_VOX,
        keyframe_every: int = schema.DEFAULT_KEYFRAME_EVERY,
    ) -> AnnotationStore:
        """Open the store at a local path or fsspec URL (``memory://``, ``s3://`` ...).

        Parameters
        ----------
        location : str or Path
            Store folder or URL.
        create : bool
            Create an empty store when nothing is there yet.
        storage_options : dict, optional
            fsspec options for URLs (credentials, endpoint).
        fsync : bool
            Flush local writes to disk before each commit (default); only crashes of the
            process, not power cuts, are survived without it.
        lock_timeout_s : float
            How long a write waits for another writer.
        mask_chunk_vox, keyframe_every
            Settings of a *new* store (ignored when opening an existing one): chunk of the
            mask delta grid in voxels, and the longest run of mask deltas between keyframes.

        Raises
        ------
        StoreError
            Nothing there (and ``create`` is False), a half-written store, or not a napari-ivd store.
        StoreVersionError
            A store written by a newer napari-ivd.
        """
        keys = open_keys(location, storage_options, fsync=fsync)
        return cls(keys, open_settings(keys, create, mask_chunk_vox, keyframe_every), lock_timeout_s)

    @staticmethod
    def exists(location: str | Path, storage_options: dict[str, Any] | None = None) -> bool:
        """True when a store (complete or not: any root ``zarr.json``) is at ``location``."""
        return open_keys(location, storage_options).get(schema.ZARR_JSON) is not None

    @property
    def location(self) -> str:
        """The store's folder or URL."""
        return self._keys.location

    @property
    def reader(self) -> StoreReader:
        """The checked, read-only view of this store (records, masks, images), sharing its caches."""
        return self._reader

    def __repr__(self) -> str:
        return f"AnnotationStore({self.location!r})"

    # ------------------------------------------------------------------ cases
    def case_ids(self) -> list[str]:
        """Ids of the committed cases, sorted (half-imported cases are not listed)."""
        return self._reader.case_ids()

    def has_case(self, case_id: str) -> bool:
        """True when ``case_id`` is a committed case."""
        return self._reader.has_case(case_id)

    def case(self, case_id: str) -> CaseInfo:
        """A case's image identity, grid, status and head revision.

        Raises
        ------
        StoreError
            No such case.
        """
        return self._reader.case(case_id)

    def read_image(self, case_id: str) -> Volume:
        """The stored copy of a case's image, with its grid (``path`` = the original source).

        Raises
        ------
        StoreError
            The stored voxels are unreadable or do not match the image's sha256 (a lost or
            damaged chunk): a damaged image is never handed out.
        """
        return self._reader.read_image(case_id)

    def add_case(
        self,
        volume: Volume,
        case_id: str | None = None,
        *,
        points: Iterable[LabelledPoint] | None = None,
        mask: np.ndarray | None = None,
        absent: Iterable[str] | None = None,
        author: str | None = None,
        note: str = "",
        source: str = "manual",
        status: str | None = None,
        allow_copy: bool = False,
    ) -> CaseInfo:
        """Add a scan as a case (a compressed copy of its voxels), optionally with a first revision.

        Adding an image that is already the case's (same voxel digest and grid) is not an
        error: the given points/mask then become a new revision, and whichever of the two is
        not given is carried over from the head revision. Adding it under a new case id is
        refused unless ``allow_copy`` (see :meth:`check_image`). Everything is checked
        before anything is written, and the case and its first revision are committed
        together.

        Parameters
        ----------
        volume : Volume
            The scan as read by :func:`napari_ivd.io.read_volume`.
        case_id : str, optional
            Default: the file name without suffixes (``volume.name``).
        points, mask : optional
            A first revision: named points (voxel positions) and/or a TotalSpineSeg mask.
        absent : iterable of str, optional
            Levels not present in the scan (see :meth:`save_revision`); for a case already
            stored, default: the head revision's, less the levels ``points`` now names.
        author, note, source, status
            As in :meth:`save_revision`; ``status`` defaults to ``"new"`` without a
            revision and ``"in progress"`` with one.
        allow_copy : bool
            Accept an image another case already holds (training then holds the copies out
            together); default: refuse it.

        Raises
        ------
        StoreError
            The case id exists with another image, another case holds this image (without
            ``allow_copy``), or bad points/mask (see :meth:`save_revision`).
        """
        case_id = schema.check_case_id(case_id or volume.name)
        where = self._reader.where(case_id)
        geometry = volume.geometry
        digest = image_sha256(volume.array)
        checked_points = check_points(points or (), geometry, where) if points is not None else None
        checked_mask = prepare_mask(mask, geometry, where) if mask is not None else None
        absent_field = None if absent is None else self._absent_field(absent, checked_points or (), where)
        if status is not None:
            schema.check_status(status)
        source = schema.check_source(source)
        with self._lock.hold(f"add case {case_id}"):
            fields = self._writer.fields(author, note, source)  # dated once the lock is held
            self.check_image(case_id, volume, digest, allow_copy=allow_copy)
            if self.has_case(case_id):
                if checked_points is not None or checked_mask is not None:
                    # what is not given is carried over from the head revision
                    head = self._reader.head(case_id)
                    if checked_points is None:
                        checked_points = self._reader.points(case_id, schema.REVISIONS, head.head)
                    if checked_mask is None:
                        checked_mask = self._reader.mask(case_id, schema.REVISIONS, head.head)
                    if absent is None:  # carried over, but a level now named is no longer absent
                        named = {p.level for p in checked_points}
                        stored = self.revision(case_id).absent if head.head is not None else ()
                        absent = [level for level in stored if level not in named]
                    fields.update(self._absent_field(absent, checked_points, where))
                    self._writer.save(case_id, checked_points, checked_mask, fields, status)
                elif status is not None:
                    self.set_status(case_id, status)
                return self.case(case_id)
            write_case(self._reader, case_id, volume, digest, tuple(self.settings["mask_chunk_vox"]))
            head = Head(case_id=case_id, status="new")
            if checked_points is not None or checked_mask is not None:
                fields.update(absent_field or {})
                head, record = self._writer.stage_revision(head, checked_points or (), checked_mask, fields, status)
                self._writer.commit(head.bumped(), record, checked_mask)
            else:
                self._writer.commit(head.bumped() if status is None else head.bumped(status=status).bumped())
        log.info("%s: added case %s %s", self.location, case_id, geometry.shape)
        return self.case(case_id)

    def check_image(self, case_id: str, volume: Volume, digest: str, *, allow_copy: bool = False) -> None:
        """Refuse ``volume`` as case ``case_id`` where that would mix up two scans.

        A stored case keeps its scan: the same id with other voxels or another grid is
        refused. A new case id is refused for a scan another case already holds (unless
        ``allow_copy``): one scan under two ids is annotated twice and counts twice in
        training, which must then hold the copies out together. ``digest`` is
        :func:`image_sha256` of ``volume``.

        Raises
        ------
        StoreError
            The message names the case that holds the scan, or the scan the case holds.
        """
        where = self._reader.where(case_id)
        rename = "import it under another case id (on the command line: --case)"
        if self.has_case(case_id):
            info = self.case(case_id)
            if info.image_sha256 != digest:
                raise StoreError(
                    f"{where}: holds another image (sha256 {info.image_sha256[:12]}…, from {info.source_path}) "
                    f"than {volume.path} (sha256 {digest[:12]}…); {rename}"
                )
            if info.geometry != volume.geometry:
                raise StoreError(f"{where}: same voxels but another affine than {volume.path}; {rename}")
            return
        other = None if allow_copy else self._reader.case_with_image(digest)
        if other is not None:
            raise StoreError(
                f"{where}: {volume.path} is already in the store as case {other} "
                f"(same voxels, from {self.case(other).source_path}); open and annotate case {other} instead"
            )

    def set_status(self, case_id: str, status: str) -> CaseInfo:
        """Mark a case ``new``, ``proposed``, ``in progress`` or ``verified``.

        Raises
        ------
        StoreError
            Unknown status, no such case, or ``verified`` for a case without any revision.
        """
        schema.check_status(status)
        with self._lock.hold(f"set status of {case_id}"):
            head = self._reader.head(case_id)
            if status == "verified" and head.head is None:
                raise StoreError(f"{self._reader.where(case_id)}: has no revision to verify; save or import one first")
            self._writer.commit(head.bumped(status=status))
        return self.case(case_id)

    def set_names_unsure(self, case_id: str, unsure: bool = True) -> CaseInfo:
        """Mark whether the researcher is unsure the case's levels are counted right; returns its row.

        A lumbosacral transitional vertebra, or a scan that shows neither C2 nor the sacrum,
        leaves the count open: the points may sit on the right structures under names one
        level off. Such a case still trains a model's masks (their kinds and neighbours do
        not depend on the count), but never its level names, and it never judges a model's
        names (:func:`napari_ivd.training.store_cases.plan_training`). The mark belongs to
        the case, not to one revision: it stays through later saves until cleared.

        Raises
        ------
        StoreError
            No such case.
        """
        with self._lock.hold(f"mark the level names of {case_id} {'unsure' if unsure else 'sure'}"):
            head = self._reader.head(case_id)
            if head.names_unsure != unsure:
                self._writer.commit(head.bumped(names_unsure=unsure))
        log.info("%s: case %s level names %s", self.location, case_id, "unsure" if unsure else "sure")
        return self.case(case_id)

    # ------------------------------------------------------------------ revisions
    def save_revision(
        self,
        case_id: str,
        points: Iterable[LabelledPoint],
        mask: np.ndarray | None,
        *,
        absent: Iterable[str] = (),
        author: str | None = None,
        note: str = "",
        source: str = "manual",
        parent: str | None = None,
        proposal: str | None = None,
        on_conflict: str = "refuse",
        status: str | None = None,
        image_sha256: str | None = None,
    ) -> RevisionInfo:
        """Append a revision (all points, and the whole mask or None) and make it the case's head.

        The mask is stored as the chunks that changed since the parent revision; the call
        returns only once the revision is committed (flushed, then ``HEAD`` replaced).

        Parameters
        ----------
        case_id : str
        points : iterable of LabelledPoint
            Every point of the revision; positions in voxels of the case's image.
        mask : (I, J, K) integer array or None
            TotalSpineSeg values on the image grid; None for a revision without mask.
        absent : iterable of str
            Levels the researcher marked as not present in this scan (a sacralised L5 has no
            L5-S1 disc): known background for training and never "missing" for the ranking.
            Only real anatomical absence: a level outside the field of view is left out, not
            marked. A level cannot both have a point and be absent.
        author : str, optional
            Default: the login name.
        note : str
            Free text shown in the history.
        source : str
            ``"manual"`` or ``"model:<name>"`` (an accepted model proposal).
        parent : str, optional
            The revision the edit started from; when given and no longer the head (another
            writer saved meanwhile) the save is refused instead of silently overwriting.
        proposal : str, optional
            The proposal the edit started from (``p000001``); recorded in the revision. Without
            ``parent`` it means the edit started from no revision: if one was saved meanwhile,
            the save is refused.
        on_conflict : {"refuse", "on_top"}
            What a stale ``parent``/``proposal`` does: ``"refuse"`` raises
            :class:`~napari_ivd.errors.StoreConflictError` (reload, or save again with
            ``"on_top"``); ``"on_top"`` keeps the edit as a new head revision that records
            what it was ``based_on`` and the head it was ``merged_over``, so both stay in history.
        status : str, optional
            Case status after the save (default ``"in progress"``).
        image_sha256 : str, optional
            Digest of the image the annotation was drawn on (:func:`image_sha256`); refused
            when it is not the case's image.

        Returns
        -------
        RevisionInfo

        Raises
        ------
        GeometryMismatchError
            Mask shape differs from the image, or a point lies outside it.
        UnknownLevelError
            A point's level is unknown.
        StoreError
            Unknown mask values, a level given twice, a level both pointed and absent, another
            image; StoreConflictError for a stale ``parent``/``proposal``.
        """
        if on_conflict not in ("refuse", "on_top"):
            raise StoreError(f"on_conflict {on_conflict!r} is not 'refuse' or 'on_top'")
        info = self.case(case_id)
        where = self._reader.where(case_id)
        if image_sha256 is not None and image_sha256 != info.image_sha256:
            raise StoreError(
                f"{where}: the annotation was drawn on another image (sha256 {image_sha256[:12]}… vs the case's "
                f"{info.image_sha256[:12]}…); open the case's own image and save again"
            )
        checked = check_points(points, info.geometry, where)
        checked_mask = prepare_mask(mask, info.geometry, where) if mask is not None else None
        absent_field = self._absent_field(absent, checked, where)
        if status is not None:
            schema.check_status(status)
        source = schema.check_source(source)
        with self._lock.hold(f"save revision of {case_id}"):
            fields = {**self._writer.fields(author, note, source), **absent_field}  # dated once the lock is held
            record = self._writer.save(case_id, checked, checked_mask, fields, status, parent, proposal, on_conflict)
        return RevisionInfo.from_record(case_id, record)

    @staticmethod
    def _absent_field(absent: Iterable[str], points: tuple[LabelledPoint, ...], where: str) -> dict[str, list[str]]:
        """The record's ``absent`` field, checked; none when empty, so other records stay as they were."""
        checked = check_absent(absent, points, where)
        return {"absent": list(checked)} if checked else {}

    def revisions(self, case_id: str) -> list[RevisionInfo]:
        """The committed revisions of a case, oldest first (its history)."""
        head = self._reader.head(case_id)
        return [
            RevisionInfo.from_record(case_id, self._reader.record(case_id, schema.REVISIONS, r))
            for r in head.revision_ids
        ]

    def revision(self, case_id: str, revision: str | int | None = None) -> RevisionInfo:
        """One committed revision (default: the head).

        Raises
        ------
        StoreError
            No such revision, or the case has none yet.
        """
        rid = self._reader.resolve(self._reader.head(case_id), revision)
        if rid is None:
            raise StoreError(f"{self._reader.where(case_id)}: has no revision yet")
        return RevisionInfo.from_record(case_id, self._reader.record(case_id, schema.REVISIONS, rid))

    def load(self, case_id: str, revision: str | int | None = None) -> Annotation:
        """Points and mask of a revision (default: the head), on the case's image grid.

        The mask is a fresh array the caller may edit; a case with no revision yet gives no
        points and no mask.
        """
        head = self._reader.head(case_id)
        rid = self._reader.resolve(head, revision)
        if rid is None:
            return Annotation(case_id, None, (), None, self._reader.case(case_id, head).geometry)
        return self._reader.annotation(head, schema.REVISIONS, rid)

    def restore(
        self, case_id: str, revision: str | int, *, author: str | None = None, note: str | None = None
    ) -> RevisionInfo:
        """Save an older revision's points, mask and absent levels again, as a new head revision.

        History stays append-only: the restored state gets a new id whose
        ``restored_from`` names the old one.
        """
        with self._lock.hold(f"restore {revision} of {case_id}"):
            old = self.load(case_id, revision)
            assert old.entry_id is not None
            note = note if note is not None else f"restored {old.entry_id}"
            fields = self._writer.fields(author, note, "manual", restored_from=old.entry_id)
            fields.update(self._absent_field(old.absent, old.points, self._reader.where(case_id)))
            record = self._writer.save(case_id, old.points, old.mask_tss, fields, None)
        return RevisionInfo.from_record(case_id, record)

    def diff(self, case_id: str, a: str | int, b: str | int | None = None) -> RevisionDiff:
        """What changed from revision ``a`` to ``b`` (default: the head): see :func:`diff_annotations`."""
        return diff_annotations(self.load(case_id, a), self.load(case_id, b))

    # ------------------------------------------------------------------ proposals
    def add_proposal(
        self,
        case_id: str,
        model: str,
        points: Iterable[LabelledPoint],
        mask: np.ndarray | None,
        *,
        note: str = "",
    ) -> ProposalInfo:
        """Keep a model's proposal for a case (points and full mask); the case becomes ``proposed`` if ``new``.

        Raises
        ------
        StoreError, GeometryMismatchError, UnknownLevelError
            As for :meth:`save_revision`.
        """
        info = self.case(case_id)
        where = self._reader.where(case_id)
        checked = check_points(points, info.geometry, where)
        checked_mask = prepare_mask(mask, info.geometry, where) if mask is not None else None
        if not model or any(c.isspace() for c in model):
            raise StoreError(f"{where}: model name {model!r} must be non-empty without spaces")
        with self._lock.hold(f"add proposal to {case_id}"):
            record = self._writer.add_proposal(case_id, model, checked, checked_mask, note)
        return ProposalInfo.from_record(case_id, record)

    def proposals(self, case_id: str) -> list[ProposalInfo]:
        """The model proposals of a case, oldest first."""
        head = self._reader.head(case_id)
        return [
            ProposalInfo.from_record(case_id, self._reader.record(case_id, schema.PROPOSALS, p))
            for p in head.proposal_ids
        ]

    def load_proposal(self, case_id: str, proposal: str | None = None) -> Annotation:
        """Points and mask of a proposal (default: the latest).

        Raises
        ------
        StoreError
            No such proposal.
        """
        head = self._reader.head(case_id)
        pid = proposal or (head.proposal_ids[-1] if head.proposals else None)
        if pid is None or pid not in head.proposal_ids:
            raise StoreError(
                f"{self._reader.where(case_id)}: no proposal {pid or ''} (proposals: {len(head.proposals)})"
            )
        return self._reader.annotation(head, schema.PROPOSALS, pid)

    # ------------------------------------------------------------------ models (see .models)
    def add_model(self, model_dir: Path, model_id: str | None = None) -> ModelInfo:
        """Keep a model folder (``weights.safetensors`` + ``card.json``) in the store; see :mod:`.models`."""
        with self._lock.hold(f"add model {model_dir}"):
            return models.add_model(self._keys, Path(model_dir), model_id)

    def list_models(self) -> list[ModelInfo]:
        """The committed models, by id."""
        return models.list_models(self._keys)

    def export_model(self, model_id: str, out_dir: Path) -> Path:
        """Write a stored model back as a model folder (checked against its sha256)."""
        return models.export_model(self._keys, model_id, Path(out_dir))

    def active_model(self) -> models.ActiveModel | None:
        """The model Predict uses for this store (None: none chosen yet, so the bundled default)."""
        return models.read_active_model(self._keys)

    def set_active_model(
        self, model: str, *, stored: bool, reason: str, author: str | None = None
    ) -> models.ActiveModel:
        """Make a stored model (``stored=True``, by id) or a bundled one (by name) the active model."""
        with self._lock.hold(f"set active model {model}"):
            return models.write_active_model(self._keys, model, stored, reason, author or schema.default_author())

    def cached_scores(self, model: str) -> dict[str, Any] | None:
        """Active-learning scores cached under ``model`` (see :mod:`napari_ivd.active`), or None."""
        return models.read_scores(self._keys, model)

    def cache_scores(self, model: str, scores: dict[str, Any]) -> None:
        """Replace the active-learning scores cached under ``model``."""
        with self._lock.hold(f"cache scores of {model}"):
            models.write_scores(self._keys, model, scores)

    # ------------------------------------------------------------------ whole store
    def check(self, case_ids: Iterable[str] | None = None) -> CheckReport:
        """Verify every committed record, hash, parent and mask: see :func:`napari_ivd.store.check.check_store`."""
        return check_store(self._reader, case_ids)

    def repair(self, case_ids: Iterable[str] | None = None) -> list[RepairResult]:
        """Restore lost or rolled-back ``HEAD`` records and lost marks from the committed records; deletes nothing.

        Parameters
        ----------
        case_ids : iterable of str, optional
            Only these cases (default: every case folder, with or without ``HEAD``).

        Returns
        -------
        list of RepairResult
            One per case looked at: what was restored, what could not be verified.
        """
        chosen = repairable_cases(self._reader) if case_ids is None else list(case_ids)
        with self._lock.hold("repair"):
            return [repair_case(self._reader, case_id) for case_id in chosen]

    def repair_models(self) -> list[str]:
        """List again the models whose ``model.json`` was lost but whose weights and card are whole and match.

        Deletes nothing; see :func:`napari_ivd.store.recovery.repair_models`. Returns their ids.
        """
        with self._lock.hold("repair models"):
            return repair_models(self._keys)

    def lost_cases(self) -> list[str]:
        """Case folders without ``HEAD`` that hold committed records: their ``HEAD`` was lost (see ``repair``)."""
        return lost_cases(self._reader)

    def lost_entries(self, case_id: str) -> list[str]:
        """Revisions/proposals committed once but no longer listed by ``HEAD`` (it was rolled back): see ``repair``."""
        self._reader.head(case_id)  # no such case: a clear error
        return find_lost_entries(self._keys, case_id)

    def info(self) -> dict[str, Any]:
        """A JSON-able summary: settings, size, writer lock, cases and models."""
        holder = self._lock.holder()
        cases = []
        for case_id in self.case_ids():
            c = self.case(case_id)
            cases.append(
                {
                    "case_id": case_id,
                    "status": c.status,
                    "head": c.head,
                    "revisions": c.n_revisions,
                    "proposals": c.n_proposals,
                    "shape": list(c.geometry.shape),
                    "axcodes": "".join(c.geometry.axcodes),
                    "updated_utc": c.updated_utc,
                    "names_unsure": c.names_unsure,
                }
            )
        return {
            "location": self.location,
            **self.settings,
            "size_bytes": self._keys.size_bytes(),
            "lock": None if holder is None else holder.describe(),
            "cases": cases,
            "models": [m.model_id for m in self.list_models()],
            "active_model": None if (active := self.active_model()) is None else active.model,
            "lost_head": self.lost_cases(),
        }
