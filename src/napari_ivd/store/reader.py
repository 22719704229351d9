"""``StoreReader``: the read-only view of an annotation store that every reader goes through.

Everything it hands out is checked against what the commit recorded: records against the
sha256 in ``HEAD``, masks (rebuilt from their keyframe and deltas) and images against their
own sha256. :class:`~napari_ivd.store.store.AnnotationStore` composes one; the integrity
check and the recovery read through it too, so there is one way of reading a store. It
never takes the writer lock and never writes.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import zarr

from napari_ivd.errors import StoreError
from napari_ivd.io.annotations import LabelledPoint
from napari_ivd.io.volume import Volume
from napari_ivd.store import schema
from napari_ivd.store.backend import KeyValue
from napari_ivd.store.content import canonical_json, image_sha256, mask_sha256, points_from_table, sha256_hex
from napari_ivd.store.masks import ChunkGrid, read_entry
from napari_ivd.store.records import Annotation, CaseInfo, Head, ProposalInfo, RevisionInfo

__all__ = ["StoreReader"]

_T = TypeVar("_T")

_MASK_CACHE_ENTRIES = 4


class StoreReader:
    """Checked reads of cases, heads, records, points, masks and images (records and masks cached).

    Not thread-safe; :meth:`fresh` gives a reader with empty caches (so no cached state hides damage).
    """

    def __init__(self, keys: KeyValue) -> None:
        self.keys = keys
        self.zarr_store = keys.zarr_store()  # one zarr view of the keys, shared by the arrays
        self._case_records: dict[str, dict[str, Any]] = {}
        self._records: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._arrays: dict[tuple[str, str], zarr.Array] = {}
        self._mask_cache: OrderedDict[tuple[str, str, str], np.ndarray] = OrderedDict()

    def fresh(self) -> StoreReader:
        """A reader of the same store with empty caches."""
        return StoreReader(self.keys)

    @property
    def location(self) -> str:
        """The store's folder or URL."""
        return self.keys.location

    def where(self, case_id: str) -> str:
        """How messages name a case: store and case id."""
        return f"{self.location} case {case_id}"

    # ------------------------------------------------------------------ cases
    def case_ids(self) -> list[str]:
        """Ids of the committed cases, sorted (half-imported cases are not listed)."""
        return [
            c
            for c in self.keys.children(schema.CASES)
            if c != schema.ZARR_JSON
            and schema.is_case_id(c)
            and self.keys.get(schema.case_key(c, schema.HEAD)) is not None
        ]

    def case_folders(self) -> list[str]:
        """Names under ``cases/`` other than metadata and temp files: committed cases, lost and half-imported ones."""
        return [c for c in self.keys.children(schema.CASES) if c != schema.ZARR_JSON and not c.startswith(".")]

    def has_case(self, case_id: str) -> bool:
        """True when ``case_id`` is a committed case."""
        schema.check_case_id(case_id)
        return self.keys.get(schema.case_key(case_id, schema.HEAD)) is not None

    def head(self, case_id: str) -> Head:
        """A case's commit record, read now (never cached).

        Raises
        ------
        StoreError
            No such case, or an unreadable or foreign ``HEAD``.
        """
        schema.check_case_id(case_id)
        data = self.keys.get(schema.case_key(case_id, schema.HEAD))
        if data is None:
            known = ", ".join(self.case_ids()[:10]) or "none"
            raise StoreError(f"{self.location}: no case {case_id!r} (cases: {known})")
        head = Head.from_json(data, self.where(case_id))
        if head.case_id != case_id:
            raise StoreError(f"{self.where(case_id)}: HEAD names case {head.case_id!r}; the store is damaged")
        return head

    def case_record(self, case_id: str) -> dict[str, Any]:
        """The case group's attributes: image identity and grid, source (immutable, so cached)."""
        if case_id not in self._case_records:
            self._case_records[case_id] = self._attributes(case_id, schema.case_key(case_id, schema.ZARR_JSON))
        return self._case_records[case_id]

    def case_with_image(self, digest: str) -> str | None:
        """The first committed case whose image has this sha256, or None.

        A case whose record cannot be read is passed over (``napari-ivd store check`` reports it).
        """
        for case_id in self.case_ids():
            try:
                image = self.case_record(case_id).get("image")
            except StoreError:
                continue
            if isinstance(image, dict) and image.get("sha256") == digest:
                return case_id
        return None

    def case(self, case_id: str, head: Head | None = None) -> CaseInfo:
        """A case's image identity, grid, status and head revision (``head``: one already read)."""
        return CaseInfo.from_records(self.case_record(case_id), head or self.head(case_id))

    def read_image(self, case_id: str) -> Volume:
        """The stored copy of a case's image, checked against its sha256 (a damaged image is never handed out)."""
        info = self.case(case_id)
        where = f"{self.where(case_id)}: image ({schema.case_key(case_id, schema.IMAGE)})"
        array = self._read(where, lambda: np.asarray(self.array(case_id, schema.IMAGE)[...]))
        if array.shape != info.geometry.shape or image_sha256(array) != info.image_sha256:
            raise StoreError(
                f"{where} does not match its sha256 (a chunk is lost or damaged); import the image again "
                "from its source under a new case id, or restore the store from a backup"
            )
        return Volume(array, info.geometry, Path(info.source_path))

    # ------------------------------------------------------------------ records
    def _attributes(self, case_id: str, key: str) -> dict[str, Any]:
        """The attributes of a group's ``zarr.json``; a missing or unreadable one is a damaged store."""
        data = self.keys.get(key)
        if data is None:
            raise StoreError(
                f"{self.where(case_id)}: {key} is missing; the store is damaged (run `napari-ivd store check`)"
            )
        try:
            attributes = json.loads(data)["attributes"]
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(
                f"{self.where(case_id)}: {key} is not readable JSON metadata ({type(exc).__name__}: {exc}); "
                "the store is damaged (run `napari-ivd store check`)"
            ) from exc
        if not isinstance(attributes, dict):
            raise StoreError(f"{self.where(case_id)}: {key} holds no record; the store is damaged")
        return attributes

    def raw_record(self, case_id: str, group: str, entry_id: str) -> dict[str, Any]:
        """A revision/proposal record straight from the store: no cache, no commit check (for check and repair)."""
        schema.check_entry_id(entry_id, group)
        return self._attributes(case_id, schema.case_key(case_id, group, entry_id, schema.ZARR_JSON))

    def record(self, case_id: str, group: str, entry_id: str) -> dict[str, Any]:
        """A committed record, checked against the sha256 its ``HEAD`` recorded (then cached: records never change)."""
        key = (case_id, group, entry_id)
        if key not in self._records:
            head = self.head(case_id)
            digest = dict(head.revisions if group == schema.REVISIONS else head.proposals).get(entry_id)
            record = self.raw_record(case_id, group, entry_id)
            if digest is None or sha256_hex(canonical_json(record)) != digest or record.get("id") != entry_id:
                raise StoreError(
                    f"{self.where(case_id)} {entry_id}: {schema.case_key(case_id, group, entry_id, schema.ZARR_JSON)} "
                    "does not match the sha256 its HEAD recorded (damaged or changed after its commit); "
                    "run `napari-ivd store check`"
                )
            self._records[key] = record
        return self._records[key]

    def resolve(self, head: Head, revision: str | int | None) -> str | None:
        """The committed revision id meant by ``revision`` (an id, a number, or None/"head" for the head)."""
        if revision is None or revision == "head":
            return head.head
        rid = schema.revision_id(revision) if isinstance(revision, int) else str(revision)
        if rid not in head.revision_ids:
            have = f"{head.revision_ids[0]}…{head.revision_ids[-1]}" if head.revision_ids else "none yet"
            raise StoreError(f"{self.where(head.case_id)}: no committed revision {rid} (revisions: {have})")
        return rid

    def annotation(self, head: Head, group: str, entry_id: str) -> Annotation:
        """Points, mask (a fresh copy the caller may edit) and info of a committed revision or proposal."""
        case_id = head.case_id
        geometry = self.case(case_id, head).geometry
        mask = self.mask(case_id, group, entry_id)
        record = self.record(case_id, group, entry_id)
        info = (RevisionInfo if group == schema.REVISIONS else ProposalInfo).from_record(case_id, record)
        points = self.points(case_id, group, entry_id)
        return Annotation(case_id, entry_id, points, None if mask is None else mask.copy(), geometry, info)

    # ------------------------------------------------------------------ arrays, points, masks
    def array(self, case_id: str, path: str) -> zarr.Array:
        """A case's zarr array (``image``, ``revisions/masks``, ``proposals/masks``), opened once."""
        key = (case_id, path)
        if key not in self._arrays:
            name = schema.case_key(case_id, path)
            try:
                self._arrays[key] = zarr.open_array(self.zarr_store, path=name, mode="r+")
            except Exception as exc:  # zarr raises many kinds for a missing or garbled zarr.json
                raise StoreError(
                    f"{self.where(case_id)}: array {name} is unreadable ({type(exc).__name__}: {exc}); "
                    "the store is damaged (run `napari-ivd store check`)"
                ) from exc
        return self._arrays[key]

    def mask_array(self, case_id: str, group: str) -> tuple[zarr.Array, ChunkGrid]:
        """The mask array of ``group`` (revisions or proposals) and the chunk grid of one entry's slice."""
        array = self.array(case_id, f"{group}/{schema.MASKS}")
        return array, ChunkGrid(tuple(array.shape[1:]), tuple(array.chunks[1:]))  # type: ignore[arg-type]

    def points(self, case_id: str, group: str, entry_id: str | None) -> tuple[LabelledPoint, ...]:
        """The points of a committed entry (none for None), following ``points_from`` where they were kept once."""
        if entry_id is None:
            return ()
        record = self.record(case_id, group, entry_id)
        table = record["points"]
        if table is None:
            table = self.record(case_id, group, record["points_from"])["points"]
        return points_from_table(table)

    def mask(self, case_id: str, group: str, entry_id: str | None) -> np.ndarray | None:
        """A committed mask, read-only (cached): rebuilt from its keyframe and deltas, checked against its sha256."""
        if entry_id is None:
            return None
        record = self.record(case_id, group, entry_id)
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
            current = self.record(case_id, group, current["parent"])
        array, grid = self.mask_array(case_id, group)
        out = base if base is not None else np.zeros(grid.shape, np.uint8)
        where = f"{self.where(case_id)} {entry_id}: mask ({schema.case_key(case_id, group, schema.MASKS)})"
        for rec in reversed(chain):
            self._read(where, lambda r=rec: read_entry(array, r["mask"]["index"], grid, r["mask"]["chunks"], out))
        if mask_sha256(out) != record["mask"]["sha256"]:
            raise StoreError(
                f"{where}: rebuilt from revisions {', '.join(r['id'] for r in reversed(chain))}, it does not match "
                "its sha256 (a chunk is lost or damaged); run `napari-ivd store check`, load an older revision"
            )
        self.remember(case_id, group, record, out)
        return self._mask_cache[(case_id, group, entry_id)]

    @staticmethod
    def _read(where: str, read: Callable[[], _T]) -> _T:
        """``read()``, with a garbled chunk's codec error turned into a StoreError naming ``where``."""
        try:
            return read()
        except StoreError:
            raise
        except Exception as exc:  # a garbled chunk: the codec's own error type
            raise StoreError(
                f"{where} is unreadable ({type(exc).__name__}: {exc}); run `napari-ivd store check`"
            ) from exc

    # ------------------------------------------------------------------ caches
    def remember(self, case_id: str, group: str, record: dict[str, Any], mask: np.ndarray | None = None) -> None:
        """Cache what a writer just wrote (record, and its mask, kept read-only) so it is not read back."""
        self._records[(case_id, group, record["id"])] = record
        if mask is None:
            return
        key = (case_id, group, record["id"])
        frozen = mask if not mask.flags.writeable else mask.copy()
        frozen.setflags(write=False)
        self._mask_cache[key] = frozen
        self._mask_cache.move_to_end(key)
        while len(self._mask_cache) > _MASK_CACHE_ENTRIES:
            self._mask_cache.popitem(last=False)

    def forget(self, case_id: str) -> None:
        """Drop everything cached of a case (its files were replaced: a new import, a repair)."""
        self._case_records.pop(case_id, None)
        for cache in (self._records, self._mask_cache, self._arrays):
            for key in [k for k in cache if k[0] == case_id]:
                del cache[key]  # type: ignore[attr-defined]
