"""``AnnotationStore``: cases, revisions, proposals and models in one zarr v3 store.

A lab's annotations are months of expert time, so every write follows one rule: write the
new revision (or case, proposal, model) completely under keys of its own, flush it, then
atomically replace the one small commit record that makes it visible (``HEAD`` per case,
``model.json`` per model). A crash at any instant leaves the previous commit valid; what
was half-written is invisible and is overwritten by the next writer. Writers take the
store's lock (:mod:`napari_ivd.store.lock`); readers never do.

Not thread-safe: give each thread its own :class:`AnnotationStore`.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec

from napari_ivd.errors import StoreConflictError, StoreError, StoreVersionError
from napari_ivd.io.annotations import LabelledPoint
from napari_ivd.io.geometry import VolumeGeometry
from napari_ivd.io.volume import Volume
from napari_ivd.store import schema
from napari_ivd.store.backend import KeyValue, open_keys
from napari_ivd.store.content import (
    canonical_json,
    check_mask_values,
    check_points,
    file_sha256,
    image_sha256,
    mask_sha256,
    points_from_table,
    points_table,
    prepare_mask,
    sha256_hex,
)
from napari_ivd.store.lock import WriterLock
from napari_ivd.store.masks import ChunkGrid, read_entry, write_entry
from napari_ivd.store.records import Annotation, CaseInfo, Head, ModelInfo, ProposalInfo, RevisionInfo
from napari_ivd.store.recovery import committed_entries

if TYPE_CHECKING:
    from napari_ivd.store.check import CheckReport
    from napari_ivd.store.history import RevisionDiff
    from napari_ivd.store.models import ActiveModel
    from napari_ivd.store.recovery import RepairResult

log = logging.getLogger(__name__)

__all__ = ["AnnotationStore"]

_MASK_CACHE_ENTRIES = 4
_PER_CHUNK_CHECK_LIMIT = 8


def _group_json(attributes: dict[str, Any]) -> bytes:
    """zarr v3 group metadata (``zarr.json``) holding ``attributes``."""
    return json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attributes}, allow_nan=False).encode()


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
        self._zstore = keys.zarr_store()
        self._case_records: dict[str, dict[str, Any]] = {}
        self._records: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._arrays: dict[tuple[str, str], zarr.Array] = {}
        self._mask_cache: OrderedDict[tuple[str, str, str], np.ndarray] = OrderedDict()

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
        root = keys.get(schema.ZARR_JSON)
        if root is None:
            present = [c for c in keys.children("") if not c.startswith(".")] if keys.exists() else []
            if present and not cls._interrupted_creation(keys, present):
                raise StoreError(
                    f"{keys.location}: holds {', '.join(present[:5])} but no zarr.json: a half-written store "
                    "(its creation was interrupted) or not a zarr store; move it aside and import again"
                )
            if not create:
                raise StoreError(
                    f"{keys.location}: no annotation store here; create one with "
                    f"`napari-ivd import IMAGE --store {keys.location}` or AnnotationStore.open(..., create=True)"
                )
            cls._create(keys, mask_chunk_vox, keyframe_every)
            root = keys.get(schema.ZARR_JSON)
            assert root is not None
        settings = cls._read_settings(keys, root)
        return cls(keys, settings, lock_timeout_s)

    @staticmethod
    def exists(location: str | Path, storage_options: dict[str, Any] | None = None) -> bool:
        """True when a store (complete or not: any root ``zarr.json``) is at ``location``."""
        return open_keys(location, storage_options).get(schema.ZARR_JSON) is not None

    @staticmethod
    def _interrupted_creation(keys: KeyValue, present: list[str]) -> bool:
        """True when ``present`` is what a killed :meth:`_create` leaves: empty groups only (safe to redo)."""
        return set(present) <= {schema.CASES, schema.MODELS} and all(
            {c for c in keys.children(group) if not c.startswith(".")} <= {schema.ZARR_JSON}  # temp files aside
            for group in present
        )

    @staticmethod
    def _create(keys: KeyValue, mask_chunk_vox: tuple[int, int, int], keyframe_every: int) -> None:
        if len(mask_chunk_vox) != 3 or min(mask_chunk_vox) < 1 or keyframe_every < 1:
            raise StoreError(f"mask_chunk_vox {mask_chunk_vox} and keyframe_every {keyframe_every} must be positive")
        settings = {
            "format_version": schema.FORMAT_VERSION,
            "kind": schema.STORE_KIND,
            "created_utc": schema.utc_now(),
            "mask_chunk_vox": [int(v) for v in mask_chunk_vox],
            "keyframe_every": int(keyframe_every),
        }
        keys.put(f"{schema.CASES}/{schema.ZARR_JSON}", _group_json({}))
        keys.put(f"{schema.MODELS}/{schema.ZARR_JSON}", _group_json({}))
        keys.put(schema.ZARR_JSON, _group_json({schema.ROOT_ATTRS: settings}))  # last: the store now exists
        log.info("created annotation store %s", keys.location)

    @staticmethod
    def _read_settings(keys: KeyValue, root: bytes) -> dict[str, Any]:
        try:
            meta = json.loads(root)
            settings = meta.get("attributes", {}).get(schema.ROOT_ATTRS)
        except (ValueError, AttributeError) as exc:
            raise StoreError(f"{keys.location}: zarr.json is not readable JSON ({exc}); the store is damaged") from exc
        if not isinstance(settings, dict) or settings.get("kind") != schema.STORE_KIND:
            raise StoreError(f"{keys.location}: a zarr store, but not a napari-ivd annotation store")
        version = settings.get("format_version")
        if version != schema.FORMAT_VERSION:
            raise StoreVersionError(
                f"{keys.location}: store format_version {version!r}; this napari-ivd reads version "
                f"{schema.FORMAT_VERSION}. Upgrade napari-ivd (pip install -U napari-ivd) to open it"
            )
        if keys.get(f"{schema.CASES}/{schema.ZARR_JSON}") is None:
            raise StoreError(f"{keys.location}: the cases/ group is missing: a half-written or damaged store")
        return settings

    @property
    def location(self) -> str:
        """The store's folder or URL."""
        return self._keys.location

    def __repr__(self) -> str:
        return f"AnnotationStore({self.location!r})"

    # ------------------------------------------------------------------ low-level reads
    def _where(self, case_id: str) -> str:
        return f"{self.location} case {case_id}"

    def _head(self, case_id: str) -> Head:
        schema.check_case_id(case_id)
        data = self._keys.get(schema.case_key(case_id, schema.HEAD))
        if data is None:
            known = ", ".join(self.case_ids()[:10]) or "none"
            raise StoreError(f"{self.location}: no case {case_id!r} (cases: {known})")
        head = Head.from_json(data, self._where(case_id))
        if head.case_id != case_id:
            raise StoreError(f"{self._where(case_id)}: HEAD names case {head.case_id!r}; the store is damaged")
        return head

    def _case_record(self, case_id: str) -> dict[str, Any]:
        if case_id not in self._case_records:
            self._case_records[case_id] = self._attributes(case_id, schema.case_key(case_id, schema.ZARR_JSON))
        return self._case_records[case_id]

    def _attributes(self, case_id: str, key: str) -> dict[str, Any]:
        """The attributes of a group's ``zarr.json``; a missing or unreadable one is a damaged store."""
        data = self._keys.get(key)
        if data is None:
            raise StoreError(
                f"{self._where(case_id)}: {key} is missing; the store is damaged (run `napari-ivd store check`)"
            )
        try:
            attributes = json.loads(data)["attributes"]
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(
                f"{self._where(case_id)}: {key} is not readable JSON metadata ({type(exc).__name__}: {exc}); "
                "the store is damaged (run `napari-ivd store check`)"
            ) from exc
        if not isinstance(attributes, dict):
            raise StoreError(f"{self._where(case_id)}: {key} holds no record; the store is damaged")
        return attributes

    def _read_record(self, case_id: str, group: str, entry_id: str) -> dict[str, Any]:
        """A revision/proposal record straight from the store (no cache, no commit check)."""
        schema.check_entry_id(entry_id, group)
        return self._attributes(case_id, schema.case_key(case_id, group, entry_id, schema.ZARR_JSON))

    def _record(self, case_id: str, group: str, entry_id: str) -> dict[str, Any]:
        """A committed record, checked against the sha256 its ``HEAD`` recorded (then cached: records never change)."""
        key = (case_id, group, entry_id)
        if key not in self._records:
            head = self._head(case_id)
            digest = dict(head.revisions if group == schema.REVISIONS else head.proposals).get(entry_id)
            record = self._read_record(case_id, group, entry_id)
            if digest is None or sha256_hex(canonical_json(record)) != digest or record.get("id") != entry_id:
                raise StoreError(
                    f"{self._where(case_id)} {entry_id}: {schema.case_key(case_id, group, entry_id, schema.ZARR_JSON)} "
                    "does not match the sha256 its HEAD recorded (damaged or changed after its commit); "
                    "run `napari-ivd store check`"
                )
            self._records[key] = record
        return self._records[key]

    def _array(self, case_id: str, path: str) -> zarr.Array:
        key = (case_id, path)
        if key not in self._arrays:
            name = schema.case_key(case_id, path)
            try:
                self._arrays[key] = zarr.open_array(self._zstore, path=name, mode="r+")
            except Exception as exc:  # zarr raises many kinds for a missing or garbled zarr.json
                raise StoreError(
                    f"{self._where(case_id)}: array {name} is unreadable ({type(exc).__name__}: {exc}); "
                    "the store is damaged (run `napari-ivd store check`)"
                ) from exc
        return self._arrays[key]

    def _grid(self, case_id: str, group: str) -> ChunkGrid:
        array = self._array(case_id, f"{group}/{schema.MASKS}")
        return ChunkGrid(tuple(array.shape[1:]), tuple(array.chunks[1:]))  # type: ignore[arg-type]

    def _resolve(self, head: Head, revision: str | int | None) -> str | None:
        if revision is None or revision == "head":
            return head.head
        rid = schema.revision_id(revision) if isinstance(revision, int) else str(revision)
        if rid not in head.revision_ids:
            have = f"{head.revision_ids[0]}…{head.revision_ids[-1]}" if head.revision_ids else "none yet"
            raise StoreError(f"{self._where(head.case_id)}: no committed revision {rid} (revisions: {have})")
        return rid

    # ------------------------------------------------------------------ cases
    def case_ids(self) -> list[str]:
        """Ids of the committed cases, sorted (half-imported cases are not listed)."""
        return [
            c
            for c in self._keys.children(schema.CASES)
            if c != schema.ZARR_JSON
            and schema.is_case_id(c)
            and self._keys.get(schema.case_key(c, schema.HEAD)) is not None
        ]

    def has_case(self, case_id: str) -> bool:
        """True when ``case_id`` is a committed case."""
        schema.check_case_id(case_id)
        return self._keys.get(schema.case_key(case_id, schema.HEAD)) is not None

    def case(self, case_id: str) -> CaseInfo:
        """A case's image identity, grid, status and head revision.

        Raises
        ------
        StoreError
            No such case.
        """
        head = self._head(case_id)
        return CaseInfo.from_records(self._case_record(case_id), head)

    def read_image(self, case_id: str) -> Volume:
        """The stored copy of a case's image, with its grid (``path`` = the original source).

        Raises
        ------
        StoreError
            The stored voxels are unreadable or do not match the image's sha256 (a lost or
            damaged chunk): a damaged image is never handed out.
        """
        info = self.case(case_id)
        where = f"{self._where(case_id)}: image ({schema.case_key(case_id, schema.IMAGE)})"
        try:
            array = np.asarray(self._array(case_id, schema.IMAGE)[...])
        except StoreError:
            raise
        except Exception as exc:  # a garbled chunk: the codec's own error type
            raise StoreError(
                f"{where} is unreadable ({type(exc).__name__}: {exc}); run `napari-ivd store check`"
            ) from exc
        if array.shape != info.geometry.shape or image_sha256(array) != info.image_sha256:
            raise StoreError(
                f"{where} does not match its sha256 (a chunk is lost or damaged); import the image again "
                "from its source under a new case id, or restore the store from a backup"
            )
        return Volume(array, info.geometry, Path(info.source_path))

    def add_case(
        self,
        volume: Volume,
        case_id: str | None = None,
        *,
        points: Iterable[LabelledPoint] | None = None,
        mask: np.ndarray | None = None,
        author: str | None = None,
        note: str = "",
        source: str = "manual",
        status: str | None = None,
    ) -> CaseInfo:
        """Add a scan as a case (a compressed copy of its voxels), optionally with a first revision.

        Adding an image that is already the case's (same voxel digest and grid) is not an
        error: the given points/mask then become a new revision, and whichever of the two is
        not given is carried over from the head revision. Everything is checked
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
        author, note, source, status
            As in :meth:`save_revision`; ``status`` defaults to ``"new"`` without a
            revision and ``"in progress"`` with one.

        Raises
        ------
        StoreError
            The case id exists with another image, or bad points/mask (see :meth:`save_revision`).
        """
        case_id = schema.check_case_id(case_id or volume.name)
        where = self._where(case_id)
        geometry = volume.geometry
        digest = image_sha256(volume.array)
        checked_points = check_points(points or (), geometry, where) if points is not None else None
        checked_mask = prepare_mask(mask, geometry, where) if mask is not None else None
        if status is not None:
            schema.check_status(status)
        source = schema.check_source(source)
        with self._lock.hold(f"add case {case_id}"):
            if self.has_case(case_id):
                self._check_same_image(case_id, digest, geometry, volume)
                if checked_points is not None or checked_mask is not None:
                    # what is not given is carried over from the head revision
                    head = self._head(case_id)
                    pts = checked_points if checked_points is not None else self._points_at(case_id, head.head)
                    if checked_mask is None:
                        checked_mask = self._mask(case_id, schema.REVISIONS, head.head)
                    self._save(case_id, pts, checked_mask, author, note, source, status, None, None)
                elif status is not None:
                    self.set_status(case_id, status)
                return self.case(case_id)
            self._write_case(case_id, volume, digest)
            head = Head(case_id=case_id, status="new")
            if checked_points is not None or checked_mask is not None:
                head = self._write_revision(
                    case_id, head, checked_points or (), checked_mask, author, note, source, status, None
                )
            elif status is not None:
                head = head.bumped(status=status)
            self._commit(case_id, head.bumped())
        log.info("%s: added case %s %s", self.location, case_id, geometry.shape)
        return self.case(case_id)

    def _check_same_image(self, case_id: str, digest: str, geometry: VolumeGeometry, volume: Volume) -> None:
        info = self.case(case_id)
        if info.image_sha256 != digest:
            raise StoreError(
                f"{self._where(case_id)}: holds another image (sha256 {info.image_sha256[:12]}…, from "
                f"{info.source_path}) than {volume.path} (sha256 {digest[:12]}…); import it under another case id"
            )
        if info.geometry != geometry:
            raise StoreError(
                f"{self._where(case_id)}: same voxels but another affine than {volume.path}; "
                "import it under another case id"
            )

    def _write_case(self, case_id: str, volume: Volume, digest: str) -> None:
        prefix = schema.case_key(case_id)
        committed = committed_entries(self._keys, case_id)
        if committed:
            raise StoreError(
                f"{self._where(case_id)}: has no HEAD but holds committed {', '.join(committed[:5])}: its HEAD was "
                f"lost. Nothing was changed; run `napari-ivd store repair {self.location} {case_id}` to restore it"
            )
        self._keys.delete_tree(prefix)  # leftovers of an interrupted import: never committed
        self._forget_case(case_id)
        geometry = volume.geometry
        data = np.ascontiguousarray(volume.array, dtype=volume.array.dtype.newbyteorder("="))
        source = Path(volume.path)
        record = {
            "case_id": case_id,
            "format_version": schema.FORMAT_VERSION,
            "created_utc": schema.utc_now(),
            "image": {
                "sha256": digest,
                "dtype": data.dtype.str,
                "shape": list(geometry.shape),
                "affine": geometry.affine.tolist(),
                "axcodes": "".join(geometry.axcodes),
                "spacing_mm": list(geometry.spacing_mm),
            },
            "source": {
                "path": str(source.resolve()) if str(source) else "",
                "name": volume.name,
                "file_sha256": file_sha256(source) if str(source) else None,
            },
        }
        self._keys.put(schema.case_key(case_id, schema.ZARR_JSON), _group_json(record))
        image = zarr.create_array(
            self._zstore,
            name=schema.case_key(case_id, schema.IMAGE),
            shape=geometry.shape,
            dtype=data.dtype,
            chunks=schema.clipped_chunks(geometry.shape, schema.IMAGE_CHUNK_VOX),
            compressors=BloscCodec(cname="zstd", clevel=5, shuffle=BloscShuffle.shuffle),
            fill_value=0,
            dimension_names=("i", "j", "k"),
        )
        image[...] = data
        mask_chunks = schema.clipped_chunks(geometry.shape, tuple(self.settings["mask_chunk_vox"]))
        for group in (schema.REVISIONS, schema.PROPOSALS):
            self._keys.put(schema.case_key(case_id, group, schema.ZARR_JSON), _group_json({}))
            zarr.create_array(
                self._zstore,
                name=schema.case_key(case_id, group, schema.MASKS),
                shape=(schema.MAX_ENTRIES, *geometry.shape),
                dtype="uint8",
                chunks=(1, *mask_chunks),
                chunk_key_encoding={"name": "default", "separator": "."},  # flat: no folder per revision
                compressors=ZstdCodec(level=3),
                fill_value=0,
                dimension_names=("entry", "i", "j", "k"),
            )
        self._keys.make_durable(self._keys.files(prefix), schema.CASES)

    def _forget_case(self, case_id: str) -> None:
        self._case_records.pop(case_id, None)
        for cache in (self._records, self._mask_cache):
            for key in [k for k in cache if k[0] == case_id]:
                del cache[key]
        for key in [k for k in self._arrays if k[0] == case_id]:
            del self._arrays[key]

    def set_status(self, case_id: str, status: str) -> CaseInfo:
        """Mark a case ``new``, ``proposed``, ``in progress`` or ``verified``.

        Raises
        ------
        StoreError
            Unknown status, no such case, or ``verified`` for a case without any revision.
        """
        schema.check_status(status)
        with self._lock.hold(f"set status of {case_id}"):
            head = self._head(case_id)
            if status == "verified" and head.head is None:
                raise StoreError(f"{self._where(case_id)}: has no revision to verify; save or import one first")
            self._commit(case_id, head.bumped(status=status))
        return self.case(case_id)

    # ------------------------------------------------------------------ revisions
    def save_revision(
        self,
        case_id: str,
        points: Iterable[LabelledPoint],
        mask: np.ndarray | None,
        *,
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
            Unknown mask values, a level given twice, another image; StoreConflictError for a
            stale ``parent``/``proposal``.
        """
        if on_conflict not in ("refuse", "on_top"):
            raise StoreError(f"on_conflict {on_conflict!r} is not 'refuse' or 'on_top'")
        info = self.case(case_id)
        where = self._where(case_id)
        if image_sha256 is not None and image_sha256 != info.image_sha256:
            raise StoreError(
                f"{where}: the annotation was drawn on another image (sha256 {image_sha256[:12]}… vs the case's "
                f"{info.image_sha256[:12]}…); open the case's own image and save again"
            )
        checked = check_points(points, info.geometry, where)
        checked_mask = prepare_mask(mask, info.geometry, where) if mask is not None else None
        if status is not None:
            schema.check_status(status)
        source = schema.check_source(source)
        with self._lock.hold(f"save revision of {case_id}"):
            return self._save(
                case_id,
                checked,
                checked_mask,
                author,
                note,
                source,
                status,
                parent,
                None,
                proposal=proposal,
                on_conflict=on_conflict,
            )

    def _save(
        self,
        case_id: str,
        points: tuple[LabelledPoint, ...],
        mask: np.ndarray | None,
        author: str | None,
        note: str,
        source: str,
        status: str | None,
        parent: str | None,
        restored_from: str | None,
        *,
        proposal: str | None = None,
        on_conflict: str = "refuse",
    ) -> RevisionInfo:
        head = self._head(case_id)
        if proposal is not None and schema.check_entry_id(proposal, schema.PROPOSALS) not in head.proposal_ids:
            raise StoreError(f"{self._where(case_id)}: no proposal {proposal} to start from")
        provenance: dict[str, str | None] = {"proposal": proposal} if proposal is not None else {}
        started_from = parent or proposal
        if started_from is not None and parent != head.head:
            if on_conflict != "on_top":
                by = f" by {self._record(case_id, schema.REVISIONS, head.head)['author']}" if head.head else ""
                raise StoreConflictError(
                    f"{self._where(case_id)}: the edit started from {started_from} but the head is now "
                    f"{head.head or 'none'} (saved{by} meanwhile). Nothing was saved: reload the case to see it, "
                    "or keep this edit as a new revision on top of it (both stay in the history)",
                    started_from,
                    head.head,
                )
            provenance.update(based_on=started_from, merged_over=head.head)
        new_head = self._write_revision(
            case_id, head, points, mask, author, note, source, status, restored_from, provenance
        )
        self._commit(case_id, new_head)
        assert new_head.head is not None
        if mask is not None:
            self._cache_put((case_id, schema.REVISIONS, new_head.head), mask)
        return RevisionInfo.from_record(case_id, self._record(case_id, schema.REVISIONS, new_head.head))

    def _write_revision(
        self,
        case_id: str,
        head: Head,
        points: tuple[LabelledPoint, ...],
        mask: np.ndarray | None,
        author: str | None,
        note: str,
        source: str,
        status: str | None,
        restored_from: str | None,
        provenance: dict[str, str | None] | None = None,
    ) -> Head:
        """Write revision n+1 completely (not yet committed); return the head that commits it.

        ``provenance`` (``proposal``, ``based_on``, ``merged_over``) goes into the record as given.
        """
        where = self._where(case_id)
        geometry = CaseInfo.from_records(self._case_record(case_id), head).geometry
        index = len(head.revisions) + 1
        rid = schema.revision_id(index)
        parent_id = head.head
        parent_rec = self._record(case_id, schema.REVISIONS, parent_id) if parent_id else None

        table = points_table(points, geometry)
        points_digest = sha256_hex(canonical_json(table))
        points_field: dict[str, Any] | None = table
        points_from = None
        if parent_rec is not None and parent_rec["points_sha256"] == points_digest:
            points_field, points_from = None, parent_rec.get("points_from") or parent_id

        mask_field, grid, data, chunks = None, None, None, []
        if mask is not None:
            grid = self._grid(case_id, schema.REVISIONS)
            parent_mask = self._mask(case_id, schema.REVISIONS, parent_id) if parent_rec is not None else None
            changes = mask if parent_mask is None else np.bitwise_xor(mask, parent_mask)
            changed = grid.nonzero_chunks(changes)
            keyframe = (
                parent_mask is None
                or parent_rec["mask"]["chain"] + 1 >= self.settings["keyframe_every"]
                or 2 * len(changed) > grid.n_chunks
            )
            chunks = grid.nonzero_chunks(mask) if keyframe and parent_mask is not None else changed
            data = mask if keyframe else changes
            # values need checking only where the mask differs from its (already checked) parent
            self._check_values(mask, grid, changed if parent_mask is not None else None, where)
            mask_field = {
                "storage": "full" if keyframe else "delta",
                "index": index,
                "chunks": chunks,
                "chain": 0 if keyframe else parent_rec["mask"]["chain"] + 1,
                "sha256": mask_sha256(mask),
                "voxels_changed": int(np.count_nonzero(changes)),
            }
        record = {
            "id": rid,
            "parent": parent_id,
            "author": author or schema.default_author(),
            "created_utc": schema.utc_now(),
            "note": str(note),
            "source": source,
            "restored_from": restored_from,
            **(provenance or {}),
            "n_points": len(points),
            "points": points_field,
            "points_from": points_from,
            "points_sha256": points_digest,
            "mask": mask_field,
        }
        record_digest = sha256_hex(canonical_json(record))  # fails on NaN before anything is written
        # -- all checks passed: write (under keys nobody reads until HEAD names them); the
        # record goes first, so leftovers of an interrupted write are always found by it
        self._discard_uncommitted(case_id, schema.REVISIONS, index)
        written = [schema.case_key(case_id, schema.REVISIONS, rid, schema.ZARR_JSON)]
        self._keys.write(written[0], _group_json(record))
        if mask_field is not None:
            assert grid is not None and data is not None
            array = self._array(case_id, f"{schema.REVISIONS}/{schema.MASKS}")
            write_entry(array, index, data, grid, chunks)
            base = schema.case_key(case_id, schema.REVISIONS, schema.MASKS)
            written += [f"{base}/{k}" for k in grid.chunk_keys(index, chunks)]
        self._keys.make_durable(written, schema.case_key(case_id, schema.REVISIONS))
        self._records[(case_id, schema.REVISIONS, rid)] = record
        return head.bumped(head=rid, revisions=(*head.revisions, (rid, record_digest)), status=status or "in progress")

    @staticmethod
    def _check_values(mask: np.ndarray, grid: ChunkGrid, chunks: list[int] | None, where: str) -> None:
        if chunks is None or len(chunks) > _PER_CHUNK_CHECK_LIMIT:
            check_mask_values(mask, where)
        else:
            for flat in chunks:
                check_mask_values(mask, where, grid.slices(flat))

    def _discard_uncommitted(self, case_id: str, group: str, index: int) -> None:
        """Remove what an interrupted writer left at entry ``index`` (never committed, never read).

        The record is always written before the mask chunks, so without a leftover record
        there are no leftover chunks and the (possibly long) chunk listing is skipped.
        """
        entry = schema.revision_id(index) if group == schema.REVISIONS else schema.proposal_id(index)
        record_prefix = schema.case_key(case_id, group, entry)
        present = self._keys.children(record_prefix)
        if not present:
            return
        if schema.COMMITTED in present:
            raise StoreError(
                f"{self._where(case_id)}: {entry} was committed but HEAD no longer lists it (HEAD was rolled back "
                f"or replaced). Nothing was saved or deleted; run `napari-ivd store repair {self.location} {case_id}`, "
                "then reload the case and save again"
            )
        log.info("%s: removing %s/%s left by an interrupted write", self._where(case_id), group, entry)
        masks = schema.case_key(case_id, group, schema.MASKS)
        for name in self._keys.children(masks):
            if name.startswith(f"c.{index}."):
                self._keys.delete(f"{masks}/{name}")
        self._keys.delete_tree(record_prefix)

    def _commit(self, case_id: str, head: Head) -> None:
        """Make everything ``head`` lists visible: one atomic replace of the ``HEAD`` key."""
        for name in self._keys.children(schema.case_key(case_id)):
            if name.startswith(f".{schema.HEAD}.") and name.endswith(".tmp"):  # a killed writer's; we hold the lock
                self._keys.delete(schema.case_key(case_id, name))
        self._keys.put(schema.case_key(case_id, schema.HEAD), head.to_json())
        for group, entries in ((schema.REVISIONS, head.revisions), (schema.PROPOSALS, head.proposals)):
            # mark the newest two: the one just committed, and its predecessor in case a writer
            # was killed between its HEAD and its mark (earlier ones were marked by later commits)
            for entry_id, digest in entries[-2:]:
                mark = schema.case_key(case_id, group, entry_id, schema.COMMITTED)
                if self._keys.get(mark) != digest.encode():  # absent, or cut short by a killed writer
                    self._keys.write(mark, digest.encode())
        log.debug("%s: committed %s (commit %d)", self._where(case_id), head.head, head.commit)

    def revisions(self, case_id: str) -> list[RevisionInfo]:
        """The committed revisions of a case, oldest first (its history)."""
        head = self._head(case_id)
        return [
            RevisionInfo.from_record(case_id, self._record(case_id, schema.REVISIONS, r)) for r in head.revision_ids
        ]

    def revision(self, case_id: str, revision: str | int | None = None) -> RevisionInfo:
        """One committed revision (default: the head).

        Raises
        ------
        StoreError
            No such revision, or the case has none yet.
        """
        rid = self._resolve(self._head(case_id), revision)
        if rid is None:
            raise StoreError(f"{self._where(case_id)}: has no revision yet")
        return RevisionInfo.from_record(case_id, self._record(case_id, schema.REVISIONS, rid))

    def _points_at(self, case_id: str, rid: str | None, group: str = schema.REVISIONS) -> tuple[LabelledPoint, ...]:
        if rid is None:
            return ()
        record = self._record(case_id, group, rid)
        table = record["points"]
        if table is None:
            table = self._record(case_id, group, record["points_from"])["points"]
        return points_from_table(table)

    def _mask(self, case_id: str, group: str, entry_id: str | None) -> np.ndarray | None:
        """A committed mask, read-only (cached); rebuilt from its keyframe and deltas."""
        if entry_id is None:
            return None
        record = self._record(case_id, group, entry_id)
        if record["mask"] is None:
            return None
        hit = self._mask_cache.get((case_id, group, entry_id))
        if hit is not None:
            self._mask_cache.move_to_end((case_id, group, entry_id))
            return hit
        chain: list[dict[str, Any]] = []
        base: np.ndarray | None = None
        current = record
        while True:
            cached = self._mask_cache.get((case_id, group, current["id"]))
            if cached is not None:
                base = cached.copy()
                break
            chain.append(current)
            if current["mask"]["storage"] == "full":
                break
            current = self._record(case_id, group, current["parent"])
        grid = self._grid(case_id, group)
        out = base if base is not None else np.zeros(grid.shape, np.uint8)
        array = self._array(case_id, f"{group}/{schema.MASKS}")
        where = f"{self._where(case_id)} {entry_id}: mask ({schema.case_key(case_id, group, schema.MASKS)})"
        try:
            for rec in reversed(chain):
                read_entry(array, rec["mask"]["index"], grid, rec["mask"]["chunks"], out)
        except Exception as exc:  # a garbled chunk: the codec's own error type
            raise StoreError(
                f"{where} is unreadable ({type(exc).__name__}: {exc}); run `napari-ivd store check`"
            ) from exc
        if mask_sha256(out) != record["mask"]["sha256"]:
            raise StoreError(
                f"{where}: rebuilt from revisions {', '.join(r['id'] for r in reversed(chain))}, it does not match "
                "its sha256 (a chunk is lost or damaged); run `napari-ivd store check`, load an older revision"
            )
        self._cache_put((case_id, group, entry_id), out)
        return self._mask_cache[(case_id, group, entry_id)]

    def _cache_put(self, key: tuple[str, str, str], mask: np.ndarray) -> None:
        frozen = mask if not mask.flags.writeable else mask.copy()
        frozen.setflags(write=False)
        self._mask_cache[key] = frozen
        self._mask_cache.move_to_end(key)
        while len(self._mask_cache) > _MASK_CACHE_ENTRIES:
            self._mask_cache.popitem(last=False)

    def load(self, case_id: str, revision: str | int | None = None) -> Annotation:
        """Points and mask of a revision (default: the head), on the case's image grid.

        The mask is a fresh array the caller may edit; a case with no revision yet gives no
        points and no mask.
        """
        head = self._head(case_id)
        rid = self._resolve(head, revision)
        geometry = CaseInfo.from_records(self._case_record(case_id), head).geometry
        if rid is None:
            return Annotation(case_id, None, (), None, geometry)
        mask = self._mask(case_id, schema.REVISIONS, rid)
        info = RevisionInfo.from_record(case_id, self._record(case_id, schema.REVISIONS, rid))
        points = self._points_at(case_id, rid)
        return Annotation(case_id, rid, points, None if mask is None else mask.copy(), geometry, info)

    def restore(
        self, case_id: str, revision: str | int, *, author: str | None = None, note: str | None = None
    ) -> RevisionInfo:
        """Save an older revision's points and mask again, as a new head revision.

        History stays append-only: the restored state gets a new id whose
        ``restored_from`` names the old one.
        """
        with self._lock.hold(f"restore {revision} of {case_id}"):
            old = self.load(case_id, revision)
            assert old.entry_id is not None
            return self._save(
                case_id,
                old.points,
                old.mask_tss,
                author,
                note if note is not None else f"restored {old.entry_id}",
                "manual",
                None,
                None,
                old.entry_id,
            )

    def diff(self, case_id: str, a: str | int, b: str | int | None = None) -> RevisionDiff:
        """What changed from revision ``a`` to ``b`` (default: the head): see :func:`diff_annotations`."""
        from napari_ivd.store.history import diff_annotations

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
        where = self._where(case_id)
        checked = check_points(points, info.geometry, where)
        checked_mask = prepare_mask(mask, info.geometry, where) if mask is not None else None
        if not model or any(c.isspace() for c in model):
            raise StoreError(f"{where}: model name {model!r} must be non-empty without spaces")
        with self._lock.hold(f"add proposal to {case_id}"):
            head = self._head(case_id)
            index = len(head.proposals) + 1
            pid = schema.proposal_id(index)
            table = points_table(checked, info.geometry)
            mask_field, chunks = None, []
            grid = self._grid(case_id, schema.PROPOSALS)
            if checked_mask is not None:
                check_mask_values(checked_mask, where)
                chunks = grid.nonzero_chunks(checked_mask)
                mask_field = {
                    "storage": "full",
                    "index": index,
                    "chunks": chunks,
                    "chain": 0,
                    "sha256": mask_sha256(checked_mask),
                    "voxels_changed": int(np.count_nonzero(checked_mask)),
                }
            record = {
                "id": pid,
                "model": model,
                "created_utc": schema.utc_now(),
                "note": str(note),
                "n_points": len(checked),
                "points": table,
                "points_from": None,
                "points_sha256": sha256_hex(canonical_json(table)),
                "mask": mask_field,
            }
            digest = sha256_hex(canonical_json(record))
            self._discard_uncommitted(case_id, schema.PROPOSALS, index)
            written = [schema.case_key(case_id, schema.PROPOSALS, pid, schema.ZARR_JSON)]
            self._keys.write(written[0], _group_json(record))
            if checked_mask is not None:
                write_entry(
                    self._array(case_id, f"{schema.PROPOSALS}/{schema.MASKS}"), index, checked_mask, grid, chunks
                )
                base = schema.case_key(case_id, schema.PROPOSALS, schema.MASKS)
                written += [f"{base}/{k}" for k in grid.chunk_keys(index, chunks)]
            self._keys.make_durable(written, schema.case_key(case_id, schema.PROPOSALS))
            status = "proposed" if head.status == "new" else head.status
            self._commit(case_id, head.bumped(proposals=(*head.proposals, (pid, digest)), status=status))
        return ProposalInfo.from_record(case_id, record)

    def proposals(self, case_id: str) -> list[ProposalInfo]:
        """The model proposals of a case, oldest first."""
        head = self._head(case_id)
        return [
            ProposalInfo.from_record(case_id, self._record(case_id, schema.PROPOSALS, p)) for p in head.proposal_ids
        ]

    def load_proposal(self, case_id: str, proposal: str | None = None) -> Annotation:
        """Points and mask of a proposal (default: the latest).

        Raises
        ------
        StoreError
            No such proposal.
        """
        head = self._head(case_id)
        pid = proposal or (head.proposal_ids[-1] if head.proposals else None)
        if pid is None or pid not in head.proposal_ids:
            raise StoreError(f"{self._where(case_id)}: no proposal {pid or ''} (proposals: {len(head.proposals)})")
        geometry = CaseInfo.from_records(self._case_record(case_id), head).geometry
        mask = self._mask(case_id, schema.PROPOSALS, pid)
        info = ProposalInfo.from_record(case_id, self._record(case_id, schema.PROPOSALS, pid))
        points = self._points_at(case_id, pid, schema.PROPOSALS)
        return Annotation(case_id, pid, points, None if mask is None else mask.copy(), geometry, info)

    # ------------------------------------------------------------------ models
    def add_model(self, model_dir: Path, model_id: str | None = None) -> ModelInfo:
        """Keep a model folder (``weights.safetensors`` + ``card.json``) in the store; see :mod:`.models`."""
        from napari_ivd.store.models import add_model

        with self._lock.hold(f"add model {model_dir}"):
            return add_model(self._keys, Path(model_dir), model_id)

    def list_models(self) -> list[ModelInfo]:
        """The committed models, by id."""
        from napari_ivd.store.models import list_models

        return list_models(self._keys)

    def export_model(self, model_id: str, out_dir: Path) -> Path:
        """Write a stored model back as a model folder (checked against its sha256)."""
        from napari_ivd.store.models import export_model

        return export_model(self._keys, model_id, Path(out_dir))

    def active_model(self) -> ActiveModel | None:
        """The model Predict uses for this store (None: none chosen yet, so the bundled default)."""
        from napari_ivd.store.models import read_active_model

        return read_active_model(self._keys)

    def set_active_model(self, model: str, *, stored: bool, reason: str, author: str | None = None) -> ActiveModel:
        """Make a stored model (``stored=True``, by id) or a bundled one (by name) the active model."""
        from napari_ivd.store.models import write_active_model

        with self._lock.hold(f"set active model {model}"):
            return write_active_model(self._keys, model, stored, reason, author or schema.default_author())

    def cached_scores(self, model: str) -> dict[str, Any] | None:
        """Active-learning scores cached under ``model`` (see :mod:`napari_ivd.active`), or None."""
        from napari_ivd.store.models import read_scores

        return read_scores(self._keys, model)

    def cache_scores(self, model: str, scores: dict[str, Any]) -> None:
        """Replace the active-learning scores cached under ``model``."""
        from napari_ivd.store.models import write_scores

        with self._lock.hold(f"cache scores of {model}"):
            write_scores(self._keys, model, scores)

    # ------------------------------------------------------------------ whole store
    def check(self, case_ids: Iterable[str] | None = None) -> CheckReport:
        """Verify every committed record, hash, parent and mask: see :func:`napari_ivd.store.check.check_store`."""
        from napari_ivd.store.check import check_store

        return check_store(self, case_ids)

    def repair(self, case_ids: Iterable[str] | None = None) -> list[RepairResult]:
        """Restore lost or rolled-back ``HEAD`` records from the committed records; deletes nothing.

        Parameters
        ----------
        case_ids : iterable of str, optional
            Only these cases (default: every case folder, with or without ``HEAD``).

        Returns
        -------
        list of RepairResult
            One per case looked at: what was restored, what could not be verified.
        """
        from napari_ivd.store.recovery import repair_case

        if case_ids is None:
            names = [c for c in self._keys.children(schema.CASES) if c != schema.ZARR_JSON and not c.startswith(".")]
            case_ids = []
            for name in names:
                try:
                    case_ids.append(schema.check_case_id(name))
                except StoreError:
                    log.warning("%s: %s/%s is no case folder; left as it is", self.location, schema.CASES, name)
            case_ids = [c for c in case_ids if self.has_case(c) or committed_entries(self._keys, c)]
        with self._lock.hold("repair"):
            return [repair_case(self, case_id) for case_id in case_ids]

    def lost_cases(self) -> list[str]:
        """Case folders without ``HEAD`` that hold committed records: their ``HEAD`` was lost (see ``repair``)."""
        names = [c for c in self._keys.children(schema.CASES) if c != schema.ZARR_JSON and not c.startswith(".")]
        return [
            c
            for c in names
            if self._keys.get(schema.case_key(c, schema.HEAD)) is None and committed_entries(self._keys, c)
        ]

    def lost_entries(self, case_id: str) -> list[str]:
        """Revisions/proposals committed once but no longer listed by ``HEAD`` (it was rolled back): see ``repair``."""
        from napari_ivd.store.recovery import find_lost_entries

        self._head(case_id)  # no such case: a clear error
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
