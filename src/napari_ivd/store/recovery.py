"""Recovery of what a store lost without losing data: a case's ``HEAD``, its marks, a model's record.

Every committed revision and proposal carries a ``COMMITTED`` mark (its record's sha256),
written right after the ``HEAD`` that listed it. A record beyond ``HEAD`` with such a mark
was therefore committed once: ``HEAD`` was deleted, or replaced by an older copy (a backup
restore, a sync tool). :func:`find_lost_entries` lists them; :func:`repair_case` verifies
each (record digest, parent chain, points and mask digests) and commits a new ``HEAD``
listing the newest consistent chain, and writes again the lost marks of the entries
``HEAD`` lists whose records still match their digest. :func:`repair_models` lists again
the models whose ``model.json`` was lost while their weights and card are whole and
consistent. Nothing is ever deleted here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from napari_ivd.errors import StoreError
from napari_ivd.store import schema
from napari_ivd.store.backend import KeyValue
from napari_ivd.store.content import canonical_json, mask_sha256, sha256_hex
from napari_ivd.store.entries import commit, mark_committed
from napari_ivd.store.masks import read_entry
from napari_ivd.store.models import model_folders, restore_model_record
from napari_ivd.store.reader import StoreReader
from napari_ivd.store.records import Head

log = logging.getLogger(__name__)

__all__ = [
    "RepairResult",
    "committed_entries",
    "find_lost_entries",
    "lost_cases",
    "repair_case",
    "repair_models",
    "repairable_cases",
]


def committed_entries(keys: KeyValue, case_id: str) -> list[str]:
    """Ids of the revisions and proposals of a case that carry a ``COMMITTED`` mark, in index order."""
    found = []
    for group in (schema.REVISIONS, schema.PROPOSALS):
        for name in keys.children(schema.case_key(case_id, group)):
            try:
                schema.check_entry_id(name, group)
            except StoreError:
                continue  # masks/, zarr.json
            if keys.get(schema.case_key(case_id, group, name, schema.COMMITTED)) is not None:
                found.append(name)
    return found


def find_lost_entries(keys: KeyValue, case_id: str) -> list[str]:
    """Committed (marked) entries that the case's ``HEAD`` does not list: all of them when it has none.

    ``HEAD`` is read *after* the marks are listed: a mark is written after the ``HEAD`` that
    lists its entry, so a writer committing meanwhile is never taken for a rollback.

    Raises
    ------
    StoreError
        ``HEAD`` is unreadable.
    """
    marked = committed_entries(keys, case_id)
    if not marked:
        return []
    data = keys.get(schema.case_key(case_id, schema.HEAD))
    head = None if data is None else Head.from_json(data, f"{keys.location} case {case_id}")
    listed = set() if head is None else {*head.revision_ids, *head.proposal_ids}
    return [e for e in marked if e not in listed]


@dataclass(frozen=True)
class RepairResult:
    """What :func:`repair_case` did: the entries it listed again or marked again, those it could not verify.

    ``rebuilt_status``: the status given to a lost ``HEAD`` rebuilt from the records (None when
    none was rebuilt); the records hold neither the case's status nor its "level names unsure"
    mark, so the line says what to set again.
    """

    case_id: str
    restored: tuple[str, ...]
    unverified: tuple[str, ...]
    head: str | None
    marked: tuple[str, ...] = ()
    rebuilt_status: str | None = None

    def format(self) -> str:
        """One line for the command line."""
        marked = f"COMMITTED mark written again for {', '.join(self.marked)}" if self.marked else ""
        if not self.restored and not self.unverified:
            return f"case {self.case_id}: {marked or 'HEAD is consistent, nothing to repair'}"
        done = (
            f"restored {', '.join(self.restored)}; head is now {self.head or '-'}"
            if self.restored
            else "nothing restored"
        )
        bad = (
            f"; left out (damaged, kept on disk): {', '.join(self.unverified)}; run `napari-ivd store check`"
            if self.unverified
            else ""
        )
        lost = (
            f"; HEAD rebuilt from the records, which keep no status or marks: the case is now {self.rebuilt_status!r}, "
            "so mark it verified again if it was, and its level names unsure again if they were "
            f"(`napari-ivd store names-unsure STORE {self.case_id}`)"
            if self.rebuilt_status is not None
            else ""
        )
        return f"case {self.case_id}: {done}{'; ' + marked if marked else ''}{bad}{lost}"


def lost_cases(reader: StoreReader) -> list[str]:
    """Case folders without ``HEAD`` that hold committed records: their ``HEAD`` was lost."""
    return [
        c
        for c in reader.case_folders()
        if reader.keys.get(schema.case_key(c, schema.HEAD)) is None and committed_entries(reader.keys, c)
    ]


def repairable_cases(reader: StoreReader) -> list[str]:
    """The cases a whole-store repair looks at: those with a ``HEAD``, and those that lost it."""
    case_ids = []
    for name in reader.case_folders():
        try:
            case_ids.append(schema.check_case_id(name))
        except StoreError:
            log.warning("%s: %s/%s is no case folder; left as it is", reader.location, schema.CASES, name)
    return [c for c in case_ids if reader.has_case(c) or committed_entries(reader.keys, c)]


def _raw_record(reader: StoreReader, case_id: str, group: str, entry_id: str) -> dict[str, Any] | None:
    """The record as it is on disk, or None where it is missing, unreadable or names another id."""
    try:
        record = reader.raw_record(case_id, group, entry_id)
    except StoreError:
        return None
    return record if record.get("id") == entry_id else None


def _verified_chain(
    reader: StoreReader, case_id: str, group: str, listed: tuple[tuple[str, str], ...]
) -> tuple[list[tuple[str, str]], list[str]]:
    """``listed`` extended by the marked entries after it whose content verifies, in index order."""
    keys = reader.keys
    entries, bad = list(listed), []
    previous = entries[-1][0] if entries else None
    masks: dict[str, np.ndarray | None] = {}
    index = len(entries) + 1
    while True:
        entry_id = schema.revision_id(index) if group == schema.REVISIONS else schema.proposal_id(index)
        mark = keys.get(schema.case_key(case_id, group, entry_id, schema.COMMITTED))
        if mark is None:
            if keys.children(schema.case_key(case_id, group, entry_id)):
                log.info("case %s: %s has no COMMITTED mark (an interrupted write); left as it is", case_id, entry_id)
            break
        record = _raw_record(reader, case_id, group, entry_id)
        digest = None if record is None else sha256_hex(canonical_json(record))
        ok = record is not None and digest == mark.decode(errors="replace")
        if ok and group == schema.REVISIONS:
            ok = record.get("parent") == previous
        if ok:
            try:
                ok = _content_ok(reader, case_id, group, record, entries, masks)
            except Exception as exc:  # a verifier: whatever fails to read (codec errors included) does not verify
                log.info("case %s: %s does not verify (%s)", case_id, entry_id, exc)
                ok = False
        if not ok:
            bad.append(entry_id)
            break
        assert digest is not None
        entries.append((entry_id, digest))
        previous = entry_id
        index += 1
    return entries, bad


def _content_ok(
    reader: StoreReader,
    case_id: str,
    group: str,
    record: dict[str, Any],
    entries: list[tuple[str, str]],
    masks: dict[str, np.ndarray | None],
) -> bool:
    """Points and mask of a record match their digests (the mask rebuilt along its parent chain)."""
    table = record.get("points")
    if table is None:
        source = record.get("points_from")
        if source not in {e for e, _ in entries}:
            return False
        table = _raw_record(reader, case_id, group, schema.check_entry_id(source, group))["points"]  # type: ignore[index]
    if sha256_hex(canonical_json(table)) != record.get("points_sha256"):
        return False
    info = record.get("mask")
    if info is None:
        masks[record["id"]] = None
        return True
    array, grid = reader.mask_array(case_id, group)
    if info["storage"] == "full":
        out = np.zeros(grid.shape, np.uint8)
    else:
        parent = record["parent"]
        if parent not in masks:
            masks[parent] = reader.mask(case_id, group, parent)  # committed before: read (and verified) as usual
        if masks[parent] is None:
            return False
        out = masks[parent].copy()  # type: ignore[union-attr]
    read_entry(array, int(info["index"]), grid, info["chunks"], out)
    masks[record["id"]] = out
    return mask_sha256(out) == info["sha256"]


def repair_case(reader: StoreReader, case_id: str) -> RepairResult:
    """Restore a case's newest consistent ``HEAD`` from its committed records (the caller holds the lock).

    The current ``HEAD`` (if readable) is kept as it is and only extended by the committed
    entries beyond it that verify; a lost ``HEAD`` is rebuilt from the records. Nothing is
    deleted; entries that do not verify are named and left on disk.

    Raises
    ------
    StoreError
        The case's own record is unreadable (nothing to attach a HEAD to).
    """
    keys = reader.keys
    schema.check_case_id(case_id)
    try:
        head: Head | None = reader.head(case_id)
    except StoreError:
        head = None
    if head is None and not committed_entries(keys, case_id):
        raise StoreError(f"{reader.location}: case {case_id} has no HEAD and no committed record to restore it from")
    reader.case_record(case_id)  # the case itself must be readable
    base = head or Head(case_id=case_id, status="new")
    revisions, bad_r = _verified_chain(reader, case_id, schema.REVISIONS, base.revisions)
    proposals, bad_p = _verified_chain(reader, case_id, schema.PROPOSALS, base.proposals)
    restored = tuple(e for e, _ in revisions[len(base.revisions) :]) + tuple(
        p for p, _ in proposals[len(base.proposals) :]
    )
    marked = mark_committed(keys, _intact(reader, base))  # listed by HEAD, so committed: mark those that lack it
    if restored or head is None:
        status = (
            base.status if head is not None else ("in progress" if revisions else "proposed" if proposals else "new")
        )
        new = base.bumped(
            head=revisions[-1][0] if revisions else None,
            revisions=tuple(revisions),
            proposals=tuple(proposals),
            status=status,
        )
        reader.forget(case_id)
        commit(keys, new)
        log.info("%s: case %s repaired, restored %s", reader.location, case_id, ", ".join(restored) or "HEAD")
        base = new
    return RepairResult(
        case_id, restored, tuple(bad_r + bad_p), base.head, tuple(marked), None if head is not None else base.status
    )


def _intact(reader: StoreReader, head: Head) -> Head:
    """``head`` listing only the entries whose records still match the sha256 it holds for them."""

    def kept(group: str, entries: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        out = []
        for entry_id, digest in entries:
            record = _raw_record(reader, head.case_id, group, entry_id)
            if record is not None and sha256_hex(canonical_json(record)) == digest:
                out.append((entry_id, digest))
        return tuple(out)

    return replace(
        head, revisions=kept(schema.REVISIONS, head.revisions), proposals=kept(schema.PROPOSALS, head.proposals)
    )


def repair_models(keys: KeyValue) -> list[str]:
    """List again the models whose ``model.json`` was lost and whose weights and card are whole and match.

    The caller holds the writer lock. Damaged ``model.json`` files and folders that an
    interrupted upload left are not touched. Returns the model ids listed again.
    """
    restored = []
    for model_id in model_folders(keys):
        try:
            if restore_model_record(keys, model_id) is not None:
                restored.append(model_id)
        except StoreError as exc:  # a folder name that is no model id: left as it is, `store check` names it
            log.warning("%s; left as it is", exc)
    return restored
