"""Writing revisions and proposals: their records, mask chunks and digests, then the commit.

:class:`EntryWriter` is the store's one writer of entries. An entry (revision or
proposal) is written in two steps, whatever it holds:

1. :func:`stage_entry` writes it completely under keys of its own (record first, then its
   mask chunks) and flushes them; nobody reads these keys yet.
2. :func:`commit` atomically replaces the case's ``HEAD`` with one listing the entry and
   its record's sha256, then writes the ``COMMITTED`` marks that let a lost or rolled-back
   ``HEAD`` be rebuilt (:mod:`napari_ivd.store.recovery`).

:func:`revision_entry` and :func:`proposal_entry` build what step 1 writes. The caller
holds the writer lock throughout.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_ivd.errors import StoreConflictError, StoreError
from napari_ivd.io.annotations import LabelledPoint
from napari_ivd.store import schema
from napari_ivd.store.backend import KeyValue
from napari_ivd.store.content import canonical_json, check_mask_values, mask_sha256, points_table, sha256_hex
from napari_ivd.store.masks import ChunkGrid, write_entry
from napari_ivd.store.reader import StoreReader
from napari_ivd.store.records import Head

log = logging.getLogger(__name__)

__all__ = ["EntryWriter", "MaskSlice", "commit", "mark_committed", "proposal_entry", "revision_entry", "stage_entry"]

#: A mask that changed in at most this many chunks has its values checked only there.
_PER_CHUNK_CHECK_LIMIT = 8


@dataclass(frozen=True)
class MaskSlice:
    """What an entry writes into its slice of the mask array: ``data`` in ``chunks``.

    ``data`` is the mask itself (a keyframe) or its XOR with the parent's (a delta).
    """

    data: np.ndarray
    chunks: list[int]
    grid: ChunkGrid


def _mask_field(mask: np.ndarray, index: int, chunks: list[int], chain: int, changes: np.ndarray) -> dict[str, Any]:
    """The record's ``mask`` field: a keyframe (``chain`` 0) or the ``chain``-th delta after one."""
    return {
        "storage": "full" if chain == 0 else "delta",
        "index": index,
        "chunks": chunks,
        "chain": chain,
        "sha256": mask_sha256(mask),
        "voxels_changed": int(np.count_nonzero(changes)),
    }


def revision_entry(
    reader: StoreReader,
    head: Head,
    points: tuple[LabelledPoint, ...],
    mask: np.ndarray | None,
    fields: dict[str, Any],
    keyframe_every: int,
) -> tuple[dict[str, Any], MaskSlice | None]:
    """Record and mask slice of revision n+1 after ``head``, stored against the head revision.

    Points equal to the parent's are not stored again (``points_from`` names where they
    are); the mask is stored as the chunks that changed since the parent's, or as a
    keyframe when the delta chain reaches ``keyframe_every`` or most chunks changed.
    ``fields`` (author, note, source, restored_from, provenance) go into the record as given.
    """
    case_id = head.case_id
    geometry = reader.case(case_id, head).geometry
    index = len(head.revisions) + 1
    parent_id = head.head
    parent = reader.record(case_id, schema.REVISIONS, parent_id) if parent_id else None

    table = points_table(points, geometry)
    points_digest = sha256_hex(canonical_json(table))
    points_field: dict[str, Any] | None = table
    points_from = None
    if parent is not None and parent["points_sha256"] == points_digest:
        points_field, points_from = None, parent.get("points_from") or parent_id

    mask_field, written = None, None
    if mask is not None:
        _, grid = reader.mask_array(case_id, schema.REVISIONS)
        parent_mask = reader.mask(case_id, schema.REVISIONS, parent_id) if parent is not None else None
        changes = mask if parent_mask is None else np.bitwise_xor(mask, parent_mask)
        changed = grid.nonzero_chunks(changes)
        keyframe = (
            parent_mask is None
            or parent["mask"]["chain"] + 1 >= keyframe_every  # type: ignore[index]
            or 2 * len(changed) > grid.n_chunks
        )
        chunks = grid.nonzero_chunks(mask) if keyframe and parent_mask is not None else changed
        # values need checking only where the mask differs from its (already checked) parent
        _check_values(mask, grid, changed if parent_mask is not None else None, reader.where(case_id))
        chain = 0 if keyframe else parent["mask"]["chain"] + 1  # type: ignore[index]
        mask_field = _mask_field(mask, index, chunks, chain, changes)
        written = MaskSlice(mask if keyframe else changes, chunks, grid)
    record = {
        "id": schema.revision_id(index),
        "parent": parent_id,
        **fields,
        "n_points": len(points),
        "points": points_field,
        "points_from": points_from,
        "points_sha256": points_digest,
        "mask": mask_field,
    }
    return record, written


def proposal_entry(
    reader: StoreReader,
    head: Head,
    model: str,
    points: tuple[LabelledPoint, ...],
    mask: np.ndarray | None,
    note: str,
) -> tuple[dict[str, Any], MaskSlice | None]:
    """Record and mask slice of proposal n+1 after ``head``: the points and the whole mask (a keyframe)."""
    case_id = head.case_id
    index = len(head.proposals) + 1
    table = points_table(points, reader.case(case_id, head).geometry)
    mask_field, written = None, None
    if mask is not None:
        check_mask_values(mask, reader.where(case_id))
        _, grid = reader.mask_array(case_id, schema.PROPOSALS)
        chunks = grid.nonzero_chunks(mask)
        mask_field = _mask_field(mask, index, chunks, 0, mask)
        written = MaskSlice(mask, chunks, grid)
    record = {
        "id": schema.proposal_id(index),
        "model": model,
        "created_utc": schema.utc_now(),
        "note": str(note),
        "n_points": len(points),
        "points": table,
        "points_from": None,
        "points_sha256": sha256_hex(canonical_json(table)),
        "mask": mask_field,
    }
    return record, written


def _check_values(mask: np.ndarray, grid: ChunkGrid, chunks: Sequence[int] | None, where: str) -> None:
    if chunks is None or len(chunks) > _PER_CHUNK_CHECK_LIMIT:
        check_mask_values(mask, where)
    else:
        for flat in chunks:
            check_mask_values(mask, where, grid.slices(flat))


def stage_entry(
    reader: StoreReader, head: Head, group: str, record: dict[str, Any], mask: MaskSlice | None, **changes: Any
) -> Head:
    """Write an entry completely (not yet committed) and flush it; return the head that commits it.

    The new head lists the entry with its record's sha256 (a revision becomes the head
    revision) and carries ``changes`` (``status``). The record goes first, so leftovers of
    an interrupted write are always found by it.
    """
    digest = sha256_hex(canonical_json(record))  # fails on NaN before anything is written
    keys, case_id = reader.keys, head.case_id
    index = schema.entry_index(record["id"])
    _discard_uncommitted(reader, case_id, group, index)
    written = [schema.case_key(case_id, group, record["id"], schema.ZARR_JSON)]
    keys.write(written[0], schema.group_json(record))
    if mask is not None:
        array, _ = reader.mask_array(case_id, group)
        write_entry(array, index, mask.data, mask.grid, mask.chunks)
        base = schema.case_key(case_id, group, schema.MASKS)
        written += [f"{base}/{k}" for k in mask.grid.chunk_keys(index, mask.chunks)]
    keys.make_durable(written, schema.case_key(case_id, group))
    listed = ((record["id"], digest),)
    if group == schema.REVISIONS:
        return head.bumped(head=record["id"], revisions=head.revisions + listed, **changes)
    return head.bumped(proposals=head.proposals + listed, **changes)


def _discard_uncommitted(reader: StoreReader, case_id: str, group: str, index: int) -> None:
    """Remove what an interrupted writer left at entry ``index`` (never committed, never read).

    Without a leftover record there are no leftover chunks (the record is written first),
    so the (possibly long) chunk listing is skipped.

    Raises
    ------
    StoreError
        The entry there was committed (``HEAD`` was rolled back): nothing is deleted.
    """
    keys = reader.keys
    entry = schema.revision_id(index) if group == schema.REVISIONS else schema.proposal_id(index)
    record_prefix = schema.case_key(case_id, group, entry)
    present = keys.children(record_prefix)
    if not present:
        return
    if schema.COMMITTED in present:
        raise StoreError(
            f"{reader.where(case_id)}: {entry} was committed but HEAD no longer lists it (HEAD was rolled back "
            f"or replaced). Nothing was saved or deleted; run `napari-ivd store repair {reader.location} {case_id}`, "
            "then reload the case and save again"
        )
    log.info("%s: removing %s/%s left by an interrupted write", reader.where(case_id), group, entry)
    masks = schema.case_key(case_id, group, schema.MASKS)
    for name in keys.children(masks):
        if name.startswith(f"c.{index}."):
            keys.delete(f"{masks}/{name}")
    keys.delete_tree(record_prefix)


def commit(keys: KeyValue, head: Head) -> None:
    """Make everything ``head`` lists visible: one atomic replace of the ``HEAD`` key, then the marks."""
    case_id = head.case_id
    for name in keys.children(schema.case_key(case_id)):
        if name.startswith(f".{schema.HEAD}.") and name.endswith(".tmp"):  # a killed writer's; we hold the lock
            keys.delete(schema.case_key(case_id, name))
    keys.put(schema.case_key(case_id, schema.HEAD), head.to_json())
    mark_committed(keys, head, newest=2)
    log.debug("%s case %s: committed %s (commit %d)", keys.location, case_id, head.head, head.commit)


def mark_committed(keys: KeyValue, head: Head, newest: int | None = None) -> list[str]:
    """Write the ``COMMITTED`` mark (the record's sha256) of the entries ``head`` lists that lack a whole one.

    A commit marks the ``newest`` two: the one just committed, and its predecessor in case
    a writer was killed between its ``HEAD`` and its mark (earlier ones were marked by later
    commits); a repair marks those whose records verify. Returns the entries it marked.
    """
    marked = []
    for group, entries in ((schema.REVISIONS, head.revisions), (schema.PROPOSALS, head.proposals)):
        for entry_id, digest in entries if newest is None else entries[-newest:]:
            mark = schema.case_key(head.case_id, group, entry_id, schema.COMMITTED)
            if keys.get(mark) != digest.encode():  # absent, or cut short by a killed writer
                keys.write(mark, digest.encode())
                marked.append(entry_id)
    return marked


class EntryWriter:
    """Commits revisions and proposals of a store's cases (the caller holds the writer lock).

    What it commits is also handed to ``reader``'s caches, so it is never read back.
    """

    def __init__(self, reader: StoreReader, keyframe_every: int) -> None:
        self.reader = reader
        self.keyframe_every = keyframe_every

    @staticmethod
    def fields(author: str | None, note: str, source: str, restored_from: str | None = None) -> dict[str, Any]:
        """The fields a revision record takes from its writer."""
        return {
            "author": author or schema.default_author(),
            "created_utc": schema.utc_now(),
            "note": str(note),
            "source": source,
            "restored_from": restored_from,
        }

    def save(
        self,
        case_id: str,
        points: tuple[LabelledPoint, ...],
        mask: np.ndarray | None,
        fields: dict[str, Any],
        status: str | None,
        parent: str | None = None,
        proposal: str | None = None,
        on_conflict: str = "refuse",
    ) -> dict[str, Any]:
        """Commit a revision after the head and return its record, unless its edit started elsewhere.

        ``parent``/``proposal``/``on_conflict`` as in :meth:`AnnotationStore.save_revision`.

        Raises
        ------
        StoreConflictError
            The edit started from another revision or proposal than the head, and ``on_conflict`` is "refuse".
        """
        head = self.reader.head(case_id)
        where = self.reader.where(case_id)
        if proposal is not None and schema.check_entry_id(proposal, schema.PROPOSALS) not in head.proposal_ids:
            raise StoreError(f"{where}: no proposal {proposal} to start from")
        provenance: dict[str, str | None] = {"proposal": proposal} if proposal is not None else {}
        started_from = parent or proposal
        if started_from is not None and parent != head.head:
            if on_conflict != "on_top":
                by = f" by {self.reader.record(case_id, schema.REVISIONS, head.head)['author']}" if head.head else ""
                raise StoreConflictError(
                    f"{where}: the edit started from {started_from} but the head is now "
                    f"{head.head or 'none'} (saved{by} meanwhile). Nothing was saved: reload the case to see it, "
                    "or keep this edit as a new revision on top of it (both stay in the history)",
                    started_from,
                    head.head,
                )
            provenance.update(based_on=started_from, merged_over=head.head)
        new_head, record = self.stage_revision(head, points, mask, {**fields, **provenance}, status)
        self.commit(new_head, record, mask)
        return record

    def stage_revision(
        self,
        head: Head,
        points: tuple[LabelledPoint, ...],
        mask: np.ndarray | None,
        fields: dict[str, Any],
        status: str | None,
    ) -> tuple[Head, dict[str, Any]]:
        """Write revision n+1 completely (not yet committed); return the head that commits it, and its record."""
        record, written = revision_entry(self.reader, head, points, mask, fields, self.keyframe_every)
        new_head = stage_entry(self.reader, head, schema.REVISIONS, record, written, status=status or "in progress")
        return new_head, record

    def add_proposal(
        self, case_id: str, model: str, points: tuple[LabelledPoint, ...], mask: np.ndarray | None, note: str
    ) -> dict[str, Any]:
        """Commit proposal n+1 of a case and return its record; a ``new`` case becomes ``proposed``."""
        head = self.reader.head(case_id)
        record, written = proposal_entry(self.reader, head, model, points, mask, note)
        status = "proposed" if head.status == "new" else head.status
        self.commit(stage_entry(self.reader, head, schema.PROPOSALS, record, written, status=status), record)
        return record

    def commit(self, head: Head, record: dict[str, Any] | None = None, mask: np.ndarray | None = None) -> None:
        """Commit ``head``; cache the revision or proposal ``record`` (and ``mask``) it just listed."""
        commit(self.reader.keys, head)
        if record is not None:
            group = schema.REVISIONS if record["id"] == head.head else schema.PROPOSALS
            self.reader.remember(head.case_id, group, record, mask)
