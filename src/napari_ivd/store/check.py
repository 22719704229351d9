"""Integrity check of an annotation store: is every committed thing there, whole and linked?

Run after a crash, before a training run, or in a nightly job. Every committed revision
and proposal is read back as a reader would (records, points, masks rebuilt from their
keyframes and deltas) and compared with the sha256 its commit recorded; parents and
restore sources must be earlier committed revisions; images must match their digest;
stored models their card. A case whose ``HEAD`` is missing or rolled back (records with a
``COMMITTED`` mark that it does not list), a committed entry whose mark is lost, and a
model whose ``model.json`` is lost while its weights and card are whole and match are
problems that lose nothing, fixed by ``napari-ivd store repair``. What an interrupted
writer left behind (never committed, never read) is listed as a note, not a problem: the
next writer overwrites it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from napari_ivd import anatomy
from napari_ivd.errors import IvdError, StoreError
from napari_ivd.io.geometry import VolumeGeometry
from napari_ivd.store import schema
from napari_ivd.store.backend import KeyValue
from napari_ivd.store.content import canonical_json, check_absent, mask_sha256, points_from_table, sha256_hex
from napari_ivd.store.lock import WriterLock
from napari_ivd.store.models import model_folders, read_active_model, read_model_record, recoverable_model_record
from napari_ivd.store.reader import StoreReader
from napari_ivd.store.records import Head
from napari_ivd.store.recovery import committed_entries, find_lost_entries

log = logging.getLogger(__name__)

__all__ = ["CheckReport", "check_store"]


@dataclass
class CheckReport:
    """Result of :func:`check_store`: problems make it fail, notes are for information."""

    location: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cases: int = 0
    revisions: int = 0
    proposals: int = 0
    models: int = 0

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def format(self) -> str:
        """The report as text: a verdict line, then problems and notes."""
        verdict = "OK" if self.ok else f"{len(self.problems)} PROBLEM(S)"
        lines = [
            f"{self.location}: {verdict} — checked {self.cases} case(s), {self.revisions} revision(s), "
            f"{self.proposals} proposal(s), {self.models} model(s)"
        ]
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _check_entries(reader: StoreReader, report: CheckReport, head: Head, group: str, geometry: VolumeGeometry) -> None:
    committed: list[str] = []
    unmarked: list[tuple[str, str]] = []
    entries = head.revisions if group == schema.REVISIONS else head.proposals
    for position, (entry_id, digest) in enumerate(entries, start=1):
        where = f"case {head.case_id} {entry_id}"
        expected = schema.revision_id(position) if group == schema.REVISIONS else schema.proposal_id(position)
        if entry_id != expected:
            report.problems.append(f"{where}: committed as number {position}, expected id {expected}")
        try:
            record = reader.raw_record(head.case_id, group, entry_id)
        except Exception as exc:  # a checker reports, whatever went wrong
            report.problems.append(f"{where}: record unreadable ({exc})")
            continue
        intact = sha256_hex(canonical_json(record)) == digest
        if not intact:
            report.problems.append(
                f"{where}: record does not match the sha256 its commit recorded (changed after commit)"
            )
        if reader.keys.get(schema.case_key(head.case_id, group, entry_id, schema.COMMITTED)) != digest.encode():
            unmarked.append((entry_id, digest))
        if group == schema.REVISIONS:
            parent = record.get("parent")
            if parent != (committed[-1] if committed else None):
                report.problems.append(f"{where}: parent {parent} is not the previous committed revision")
            if record.get("restored_from") is not None and record["restored_from"] not in committed:
                report.problems.append(f"{where}: restored_from {record['restored_from']} is no earlier revision")
        try:
            if intact:  # a changed record is reported once, not again through every read of it
                _check_content(reader, report, head.case_id, group, record, committed, geometry, where)
        except Exception as exc:  # a checker reports, whatever went wrong
            report.problems.append(f"{where}: content unreadable ({type(exc).__name__}: {exc})")
        committed.append(entry_id)
    if unmarked:
        _check_marks(reader, report, head, group, unmarked)


def _first(ids: list[str], n: int = 5) -> str:
    """The first ``n`` ids, and how many more there are."""
    return ", ".join(ids[:n]) + (f" (and {len(ids) - n} more)" if len(ids) > n else "")


def _writer_active(keys: KeyValue) -> str | None:
    """Who holds the writer lock, when a live process does (it may be committing right now)."""
    lock = WriterLock(keys)
    holder = lock.holder()
    return None if holder is None or lock.is_stale(holder) else holder.describe()


def _check_marks(
    reader: StoreReader, report: CheckReport, head: Head, group: str, unmarked: list[tuple[str, str]]
) -> None:
    """Entries ``HEAD`` lists without a whole ``COMMITTED`` mark: a problem, unless a commit is in flight.

    A commit replaces ``HEAD`` and then marks its two newest entries, under the writer
    lock. So where no live process holds the lock, a mark still missing when read again
    (after the lock) was deleted or cut, or its writer was killed: nothing is lost (``HEAD``
    lists the entry and its digest), but a lost ``HEAD`` could not be rebuilt past it.
    """
    keys, case_id = reader.keys, head.case_id
    entries = head.revisions if group == schema.REVISIONS else head.proposals
    writer = _writer_active(keys)
    if writer is not None:
        newest = {e for e, _ in entries[-2:]}
        in_flight = [e for e, _ in unmarked if e in newest]
        if in_flight:
            report.notes.append(
                f"case {case_id}: {', '.join(in_flight)} not yet marked COMMITTED while {writer} holds the writer "
                "lock (a commit in progress); check again when it is done"
            )
        unmarked = [(e, d) for e, d in unmarked if e not in newest]
    # read again after the lock: a commit that was in flight when they were first read has marked them since
    lost = [e for e, d in unmarked if keys.get(schema.case_key(case_id, group, e, schema.COMMITTED)) != d.encode()]
    if lost:
        report.problems.append(
            f"case {case_id}: the COMMITTED mark of {_first(lost)} is missing or damaged (deleted, cut "
            "short, or its writer was killed right after the commit). Nothing is lost (HEAD lists them), but a lost "
            f"HEAD could not be rebuilt past them: run `napari-ivd store repair {reader.location} {case_id}`"
        )


def _check_content(
    reader: StoreReader,
    report: CheckReport,
    case_id: str,
    group: str,
    record: dict[str, Any],
    committed: list[str],
    geometry: VolumeGeometry,
    where: str,
) -> None:
    table = record.get("points")
    if table is None:
        source = record.get("points_from")
        if source not in committed:
            report.problems.append(f"{where}: points_from {source} is no earlier revision")
            return
        table = reader.raw_record(case_id, group, source)["points"]
    if sha256_hex(canonical_json(table)) != record["points_sha256"]:
        report.problems.append(f"{where}: points do not match their sha256")
    points = points_from_table(table)
    for p in points:
        anatomy.structure(p.level)
    if record.get("absent"):
        try:
            check_absent(record["absent"], points, where)
        except IvdError as exc:
            report.problems.append(f"absent levels: {exc}")
    if points and not np.allclose(geometry.vox_to_mm(np.asarray(table["ijk_vox"])), table["xyz_mm"], atol=1e-6):
        report.problems.append(f"{where}: stored mm positions disagree with the voxel positions and the image affine")
    mask_info = record.get("mask")
    if mask_info is None:
        return
    if mask_info["storage"] == "delta":
        parent = reader.raw_record(case_id, group, record["parent"])
        if parent.get("mask") is None:
            report.problems.append(f"{where}: a mask delta whose parent {record['parent']} has no mask")
            return
    mask = reader.mask(case_id, group, record["id"])
    if mask is None or mask_sha256(mask) != mask_info["sha256"]:
        report.problems.append(f"{where}: the mask rebuilt from its chunks does not match its sha256")


def _leftovers(reader: StoreReader, report: CheckReport, head: Head) -> None:
    keys = reader.keys
    try:
        lost = find_lost_entries(keys, head.case_id)
    except StoreError as exc:  # HEAD became unreadable since it was read: a problem of its own
        report.problems.append(str(exc))
        lost = []
    if lost:
        report.problems.append(
            f"case {head.case_id}: {', '.join(lost)} were committed but HEAD (head {head.head or '-'}) no longer "
            f"lists them: HEAD was rolled back or replaced. Run `napari-ivd store repair {reader.location} "
            f"{head.case_id}` to restore them (nothing is deleted)"
        )
    for group, ids in ((schema.REVISIONS, head.revision_ids), (schema.PROPOSALS, head.proposal_ids)):
        present = keys.children(schema.case_key(head.case_id, group))
        stray = [c for c in present if c not in ids and c not in (schema.MASKS, schema.ZARR_JSON) and c not in lost]
        chunks = keys.children(schema.case_key(head.case_id, group, schema.MASKS))
        indices = sorted({int(c.split(".")[1]) for c in chunks if c.startswith("c.") and c.split(".")[1].isdigit()})
        stray += [f"{schema.MASKS} slice {i}" for i in indices if i > len(ids)]
        if stray:
            report.notes.append(
                f"case {head.case_id}: uncommitted {group} left by an interrupted write: {', '.join(stray)} "
                "(invisible; the next save overwrites them)"
            )


def _group_metadata(keys: KeyValue, key: str) -> None:
    """Raise StoreError unless ``key`` is a readable zarr group ``zarr.json``."""
    data = keys.get(key)
    try:
        ok = data is not None and json.loads(data).get("node_type") == "group"
    except (ValueError, AttributeError):
        ok = False
    if not ok:
        raise StoreError(f"{key} is missing or not zarr group metadata")


def _check_case(reader: StoreReader, report: CheckReport, case_id: str) -> None:
    try:
        head = reader.head(case_id)
        info = reader.case(case_id, head)
    except Exception as exc:  # a checker reports, whatever went wrong
        report.problems.append(f"case {case_id}: {exc}")
        return
    report.cases += 1
    try:
        reader.read_image(case_id)  # read and compared with its sha256, as every reader does
    except Exception as exc:  # a checker reports, whatever went wrong
        report.problems.append(f"case {case_id}: {exc}")
    for group in (schema.REVISIONS, schema.PROPOSALS):
        try:
            _group_metadata(reader.keys, schema.case_key(case_id, group, schema.ZARR_JSON))
            reader.mask_array(case_id, group)
        except Exception as exc:  # a checker reports, whatever went wrong
            report.problems.append(f"case {case_id}: {group} unreadable ({exc})")
    _check_entries(reader, report, head, schema.REVISIONS, info.geometry)
    _check_entries(reader, report, head, schema.PROPOSALS, info.geometry)
    report.revisions += len(head.revisions)
    report.proposals += len(head.proposals)
    if head.head != (head.revision_ids[-1] if head.revisions else None):
        report.problems.append(f"case {case_id}: head {head.head} is not the last committed revision")
    _leftovers(reader, report, head)


class _HasReader(Protocol):
    @property
    def reader(self) -> StoreReader: ...


def check_store(store: StoreReader | _HasReader, case_ids: Iterable[str] | None = None) -> CheckReport:
    """Verify a store (or some of its cases) as a reader would see it.

    Parameters
    ----------
    store : AnnotationStore or StoreReader
        The store to check (an ``AnnotationStore``'s ``reader`` is used); it is read through a
        fresh reader, so no cached state hides damage.
    case_ids : iterable of str, optional
        Only these cases (default: all, plus models and leftovers).

    Returns
    -------
    CheckReport
        ``ok`` is False when anything committed is missing, unreadable, unlinked or does not
        match its sha256.
    """
    fresh = (store if isinstance(store, StoreReader) else store.reader).fresh()
    keys = fresh.keys
    report = CheckReport(fresh.location)
    everything = case_ids is None
    for case_id in fresh.case_ids() if case_ids is None else list(case_ids):
        _check_case(fresh, report, case_id)
    if not everything:
        return report
    for group in (schema.CASES, schema.MODELS):
        try:
            _group_metadata(keys, f"{group}/{schema.ZARR_JSON}")
        except StoreError as exc:
            report.problems.append(str(exc))
    for name in fresh.case_folders():
        if keys.get(schema.case_key(name, schema.HEAD)) is not None:
            continue
        lost = committed_entries(keys, name)
        if lost:
            report.problems.append(
                f"case {name}: HEAD is missing but {_first(lost)} were committed. Run "
                f"`napari-ivd store repair {fresh.location} {name}` to restore it (nothing is deleted); "
                "do not import the case again before that"
            )
        else:
            report.notes.append(
                f"case {name}: files of an interrupted import, never committed (the next import redoes it)"
            )
    for model_id in model_folders(keys):
        try:
            record = read_model_record(keys, model_id)
            lost = None if record is not None else recoverable_model_record(keys, model_id)
        except StoreError as exc:
            report.problems.append(str(exc))
            continue
        if lost is not None:
            report.problems.append(
                f"model {model_id}: its model.json is missing (deleted or lost), but its upload had finished and "
                "its weights and card are whole and match. Nothing is lost: run "
                f"`napari-ivd store repair {fresh.location}` to list it again"
            )
            continue
        if record is None:
            report.notes.append(f"model {model_id}: files of an interrupted upload, never committed")
            continue
        report.models += 1
        for name, digest in (
            (schema.MODEL_WEIGHTS, record["weights_sha256"]),
            (schema.MODEL_CARD, record["card_sha256"]),
        ):
            data = keys.get(f"{schema.MODELS}/{model_id}/{name}")
            if data is None or sha256_hex(data) != digest:
                report.problems.append(f"model {model_id}: {name} is missing or does not match its sha256")
    try:
        read_active_model(keys)
    except StoreError as exc:
        report.problems.append(str(exc))
    holder = WriterLock(keys).holder()
    if holder is not None:
        lock = WriterLock(keys)
        state = "stale (its process is gone)" if lock.is_stale(holder) else "active"
        report.notes.append(f"writer lock held by {holder.describe()}: {state}")
    temp = [f for f in keys.files("") if f.rsplit("/", 1)[-1].endswith((".tmp", ".partial"))]
    if temp:
        report.notes.append(f"{len(temp)} temporary file(s) of interrupted writes (harmless), e.g. {temp[0]}")
    log.info("checked %s: %s", fresh.location, "ok" if report.ok else f"{len(report.problems)} problems")
    return report
