"""Issue 20, store side: nothing lost, nothing forged, never a traceback.

Each test damages a store the way a lab meets it (a lost or rolled-back HEAD, a lost chunk,
a garbled record, a forged id, a stale lock, a colleague's save in between) and checks that
the damage is reported with the case, revision and file, that nothing committed is deleted,
and that the command line answers with a message and an exit status, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import uuid
from pathlib import Path

import numpy as np
import pytest

from _store_crash_writer import CASE, GEOMETRY, SHAPE, content, make_store
from napari_ivd.cli import main
from napari_ivd.errors import StoreConflictError, StoreError, StoreLockedError
from napari_ivd.io.volume import Volume
from napari_ivd.store import AnnotationStore, models
from napari_ivd.store.lock import LockHolder, WriterLock


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def three(tmp_path) -> AnnotationStore:
    """A case with three revisions (the 2nd and 3rd as mask deltas) and one proposal."""
    store = make_store(str(tmp_path / "s.zarr"))
    points, mask = content(1)
    store.add_proposal(CASE, "net", points, mask)
    for seq in (1, 2, 3):
        points, mask = content(seq)
        if seq > 1:
            mask = store.load(CASE).mask_tss
            mask[1:3, 1:3, 1:3] = 41 + seq  # a small edit: a delta of one chunk
        store.save_revision(CASE, points, mask)
    assert [r.mask_storage for r in store.revisions(CASE)] == ["full", "delta", "delta"]
    return store


def _case(store: AnnotationStore) -> Path:
    return Path(store.location) / "cases" / CASE


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    return code, out.out + out.err


# ----------------------------------------------------------------- lost or rolled-back HEAD
def test_a_deleted_head_is_reported_reimport_keeps_the_revisions_and_repair_restores_them(three, tmp_path, capsys):
    loc = three.location
    expected = three.load(CASE).mask_tss
    (_case(three) / "HEAD").unlink()
    code, out = _run(capsys, "store", "check", loc)
    assert code == 1 and "HEAD is missing but r000001" in out and "store repair" in out
    before = _snapshot(Path(loc))
    with pytest.raises(StoreError, match=r"holds committed r000001.*store repair"):  # re-import never wipes
        AnnotationStore.open(loc).add_case(_image_volume(), CASE)
    assert _snapshot(Path(loc)) == before
    assert "LOST HEAD  crash" in _run(capsys, "store", "info", loc)[1]
    code, out = _run(capsys, "store", "repair", loc)
    assert code == 0 and "restored r000001, r000002, r000003, p000001; head is now r000003" in out
    fresh = AnnotationStore.open(loc)
    np.testing.assert_array_equal(fresh.load(CASE).mask_tss, expected)
    assert fresh.check().ok, fresh.check().format()


def test_a_rebuilt_head_says_that_status_and_names_unsure_mark_must_be_set_again(three, capsys):
    """The records keep neither: the repair line must say so rather than drop them quietly."""
    loc = three.location
    three.set_status(CASE, "verified")
    three.set_names_unsure(CASE)
    (_case(three) / "HEAD").unlink()
    code, out = _run(capsys, "store", "repair", loc)
    assert code == 0 and "HEAD rebuilt from the records" in out and "the case is now 'in progress'" in out
    assert f"napari-ivd store names-unsure STORE {CASE}" in out
    info = AnnotationStore.open(loc).case(CASE)
    assert (info.status, info.names_unsure) == ("in progress", False)
    code, out = _run(capsys, "store", "repair", loc)  # a consistent HEAD: nothing rebuilt, nothing said
    assert code == 0 and "rebuilt" not in out


def _image_volume() -> Volume:
    image = (np.arange(np.prod(SHAPE)) % 251).reshape(SHAPE).astype(np.int16)
    return Volume(image, GEOMETRY, Path("crash.nii.gz"))


def test_a_rolled_back_head_is_reported_a_save_on_it_deletes_nothing_and_repair_restores(three, tmp_path, capsys):
    loc, head = three.location, _case(three) / "HEAD"
    r3 = three.load(CASE)
    old = json.loads(head.read_text())
    old["revisions"], old["head"] = old["revisions"][:2], "r000002"
    head.write_text(json.dumps(old))
    code, out = _run(capsys, "store", "check", loc)
    assert code == 1 and "r000003 were committed but HEAD (head r000002) no longer lists them" in out
    code, out = _run(capsys, "export", "--store", loc, "--out", str(tmp_path / "out"))
    assert code == 2 and "rolled back" in out
    before = _snapshot(Path(loc))
    points, mask = content(9)
    with pytest.raises(StoreError, match="r000003 was committed but HEAD no longer lists it"):
        AnnotationStore.open(loc).save_revision(CASE, points, mask)
    assert _snapshot(Path(loc)) == before  # r000003 is still there, byte for byte
    code, out = _run(capsys, "store", "repair", loc, CASE)
    assert code == 0 and "restored r000003" in out and "rebuilt" not in out  # HEAD kept: status and marks too
    fresh = AnnotationStore.open(loc)
    assert fresh.case(CASE).head == "r000003" and fresh.check().ok
    np.testing.assert_array_equal(fresh.load(CASE).mask_tss, r3.mask_tss)


def test_repair_restores_only_what_verifies_and_says_what_it_left(three, capsys):
    loc, head = three.location, _case(three) / "HEAD"
    old = json.loads(head.read_text())
    old["revisions"], old["head"] = old["revisions"][:1], "r000001"
    head.write_text(json.dumps(old))
    masks = _case(three) / "revisions" / "masks"
    [chunk] = [p for p in masks.iterdir() if p.name.startswith("c.3.")]
    chunk.write_bytes(b"garbage")  # r000003's delta is damaged: r000002 comes back, r000003 stays on disk
    code, out = _run(capsys, "store", "repair", loc)
    assert code == 1 and "restored r000002; head is now r000002; left out (damaged, kept on disk): r000003" in out
    assert (_case(three) / "revisions" / "r000003" / "zarr.json").is_file() and chunk.is_file()
    assert AnnotationStore.open(loc).case(CASE).head == "r000002"


# ----------------------------------------------------------------- lost marks and model records
@pytest.mark.parametrize(
    ("entry", "damage"),
    [
        ("revisions/r000003", "delete"),
        ("revisions/r000002", "cut"),
        ("proposals/p000001", "delete"),
        ("revisions/r000001", "delete"),
    ],
)
def test_a_lost_committed_mark_is_a_problem_and_repair_writes_it_again_changing_nothing_else(
    three, capsys, entry, damage
):
    loc = three.location
    before = _snapshot(Path(loc))
    mark = _case(three) / entry / "COMMITTED"
    if damage == "delete":
        mark.unlink()
    else:
        mark.write_bytes(mark.read_bytes()[:20])
    code, out = _run(capsys, "store", "check", loc)
    entry_id = entry.split("/")[1]
    assert code == 1 and f"COMMITTED mark of {entry_id} is missing or damaged" in out, out
    assert "Nothing is lost" in out and f"napari-ivd store repair {loc} {CASE}" in out
    code, out = _run(capsys, "store", "repair", loc)
    assert code == 0 and f"case {CASE}: COMMITTED mark written again for {entry_id}" in out, out
    assert _run(capsys, "store", "check", loc)[0] == 0
    assert _snapshot(Path(loc)) == before  # the mark back, byte for byte; nothing else touched


def test_a_mark_a_live_writer_has_not_written_yet_is_a_note_an_older_one_a_problem(three, capsys):
    me = LockHolder(os.getpid(), socket.gethostname(), "2999-01-01T00:00:00.000000Z", "save", uuid.uuid4().hex)
    (Path(three.location) / "LOCK").write_bytes(me.to_json())  # a live writer, committing r000003 right now
    (_case(three) / "revisions" / "r000003" / "COMMITTED").unlink()
    report = three.check()
    assert report.ok and "r000003 not yet marked COMMITTED" in report.format(), report.format()
    (_case(three) / "revisions" / "r000001" / "COMMITTED").unlink()  # marked two commits ago: damage
    report = three.check()
    assert not report.ok and "COMMITTED mark of r000001 is missing" in report.format(), report.format()


def test_repair_never_marks_a_record_changed_after_its_commit(three, capsys):
    record = _case(three) / "revisions" / "r000003" / "zarr.json"
    changed = json.loads(record.read_text())
    changed["attributes"]["note"] = "forged"
    record.write_text(json.dumps(changed))
    (_case(three) / "revisions" / "r000003" / "COMMITTED").unlink()
    code, out = _run(capsys, "store", "repair", three.location)
    assert code == 0 and "COMMITTED mark written again" not in out, out
    assert not (_case(three) / "revisions" / "r000003" / "COMMITTED").exists()
    code, out = _run(capsys, "store", "check", three.location)
    assert code == 1 and "r000003: record does not match the sha256" in out, out


def _model_folder(tmp_path: Path, card: dict) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    weights = np.arange(300, dtype=np.float32).tobytes()
    (folder / "weights.safetensors").write_bytes(weights)
    (folder / "card.json").write_text(json.dumps({**card, "weights_sha256": hashlib.sha256(weights).hexdigest()}))
    return folder


def test_a_deleted_model_record_is_a_problem_and_repair_lists_the_model_again(three, tmp_path, capsys):
    folder = _model_folder(tmp_path, {"name": "net", "arch": "hourglass"})
    info = three.add_model(folder)
    loc = three.location
    (Path(loc) / "models" / info.model_id / "model.json").unlink()
    assert AnnotationStore.open(loc).list_models() == []
    code, out = _run(capsys, "store", "check", loc)
    assert code == 1 and f"model {info.model_id}: its model.json is missing" in out and "Nothing is lost" in out
    code, out = _run(capsys, "store", "repair", loc)
    assert code == 0 and f"model {info.model_id}: model.json written again" in out, out
    fresh = AnnotationStore.open(loc)
    [listed] = fresh.list_models()
    assert (listed.model_id, listed.weights_sha256, listed.card_sha256) == (
        info.model_id,
        info.weights_sha256,
        info.card_sha256,
    )
    out_dir = fresh.export_model(info.model_id, tmp_path / "back")
    for name in ("weights.safetensors", "card.json"):
        assert (out_dir / name).read_bytes() == (folder / name).read_bytes()
    assert _run(capsys, "store", "check", loc)[0] == 0


@pytest.mark.parametrize("leftover", ["killed before model.json", "card without digest", "weights cut", "no card"])
def test_what_an_interrupted_upload_leaves_stays_a_note_and_repair_leaves_it(
    three, tmp_path, capsys, monkeypatch, leftover
):
    folder = _model_folder(tmp_path, {"name": "net"})
    if leftover == "card without digest":  # nothing vouches for the weights
        (folder / "card.json").write_text(json.dumps({"name": "net"}))
    if leftover == "killed before model.json":  # weights and card whole and matching, never committed
        monkeypatch.setattr(models, "_commit_record", _killed)
        with pytest.raises(KeyboardInterrupt):
            three.add_model(folder, "net-1")
        monkeypatch.undo()
        stored = Path(three.location) / "models" / "net-1"
    else:
        stored = Path(three.location) / "models" / three.add_model(folder, "net-1").model_id
        (stored / "model.json").unlink()
    if leftover == "weights cut":
        (stored / "weights.safetensors").write_bytes((folder / "weights.safetensors").read_bytes()[:100])
    elif leftover == "no card":
        (stored / "card.json").unlink()
    code, out = _run(capsys, "store", "check", three.location)
    assert code == 0 and "model net-1: files of an interrupted upload" in out, out
    before = _snapshot(Path(three.location))
    assert _run(capsys, "store", "repair", three.location)[0] == 0
    assert _snapshot(Path(three.location)) == before and three.list_models() == []
    assert three.add_model(folder, "net-1").model_id == "net-1"  # the upload simply redone
    assert not (stored / "UPLOADING").exists() and three.check().ok


def _killed(*_: object) -> None:
    raise KeyboardInterrupt  # what a kill leaves: everything before the commit, nothing after


# ----------------------------------------------------------------- every read verifies
@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_a_lost_or_truncated_image_chunk_never_reads_or_exports(three, tmp_path, capsys, damage):
    chunk = next(p for p in (_case(three) / "image").rglob("*") if p.is_file() and p.name != "zarr.json")
    if damage == "delete":
        chunk.unlink()
    else:
        chunk.write_bytes(chunk.read_bytes()[:20])
    fresh = AnnotationStore.open(three.location)
    with pytest.raises(StoreError, match=rf"case {CASE}: image \(cases/{CASE}/image\)"):
        fresh.read_image(CASE)
    assert _run(capsys, "store", "check", three.location)[0] == 1


def test_a_lost_delta_chunk_never_loads_or_exports(three, tmp_path, capsys):
    r2 = three.revision(CASE, "r000002")
    assert r2.mask_storage == "delta"
    masks = _case(three) / "revisions" / "masks"
    [chunk] = [p for p in masks.iterdir() if p.name.startswith("c.2.")]
    chunk.unlink()
    fresh = AnnotationStore.open(three.location)
    with pytest.raises(StoreError, match=r"r000003: mask .*rebuilt from revisions r000001, r000002, r000003"):
        fresh.load(CASE)
    code, out = _run(capsys, "export", "--store", three.location, "--out", str(tmp_path / "out"))
    assert code == 2 and f"case {CASE} r000003: mask" in out
    assert not (tmp_path / "out" / CASE / "mask.nii.gz").exists()
    assert fresh.load(CASE, "r000001").mask_tss is not None  # what is intact still loads


def test_a_changed_record_never_loads(three):
    record = _case(three) / "revisions" / "r000002" / "zarr.json"
    meta = json.loads(record.read_text())
    meta["attributes"]["author"] = "forger"
    record.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match=r"r000002: cases/crash/revisions/r000002/zarr.json does not match"):
        AnnotationStore.open(three.location).revisions(CASE)


# ----------------------------------------------------------------- never a traceback
@pytest.mark.parametrize(
    "path",
    ["revisions/r000002/zarr.json", "zarr.json", "revisions/masks/zarr.json", "image/zarr.json", "HEAD"],
)
@pytest.mark.parametrize("garble", ["garbage", "empty", "no attributes"])
def test_damaged_metadata_gives_messages_not_tracebacks(three, tmp_path, capsys, path, garble):
    target = _case(three) / path
    target.write_bytes({"garbage": b"\x00{not json", "empty": b"", "no attributes": b'{"zarr_format": 3}'}[garble])
    loc = three.location
    for argv in (("store", "info", loc), ("store", "history", loc)):
        _run(capsys, *argv)  # may succeed when they do not read what was damaged; never a traceback
    code, out = _run(capsys, "export", "--store", loc, "--out", str(tmp_path / "out"))
    assert code == 2 or path.startswith("image/"), out  # an export writes annotations: it never reads the image
    code, out = _run(capsys, "import", str(tmp_path / "missing.nii.gz"), "--store", loc)
    assert code == 2
    code, out = _run(capsys, "store", "check", loc)
    assert code == 1 and "PROBLEM" in out


def test_a_damaged_model_record_is_a_check_problem_not_a_crash(three, tmp_path, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.safetensors").write_bytes(b"weights")
    (folder / "card.json").write_text(json.dumps({"name": "net"}))
    info = three.add_model(folder)
    (Path(three.location) / "models" / info.model_id / "model.json").write_text("{broken")
    code, out = _run(capsys, "store", "check", three.location)
    assert code == 1 and f"model {info.model_id}" in out and "damaged" in out
    code, out = _run(capsys, "store", "info", three.location)
    assert code == 0 and "models     none" in out  # left out, with a warning


def test_export_into_a_file_is_a_message(three, tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("x")
    code, out = _run(capsys, "export", "--store", three.location, "--out", str(target))
    assert code == 2 and "is a file" in out


# ----------------------------------------------------------------- ids from the store
def test_a_forged_model_id_never_becomes_a_path(three, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.safetensors").write_bytes(b"weights")
    (folder / "card.json").write_text(json.dumps({"name": "net"}))
    info = three.add_model(folder)
    record_path = Path(three.location) / "models" / info.model_id / "model.json"
    record = json.loads(record_path.read_text())
    record["model_id"] = "../../evil"
    record_path.write_text(json.dumps(record))
    assert three.list_models() == []
    with pytest.raises(StoreError, match="damaged"):
        three.export_model(info.model_id, tmp_path / "out")
    with pytest.raises(StoreError, match="not usable"):
        three.export_model("../../evil", tmp_path / "out")
    assert not (tmp_path / "evil").exists()


def test_a_forged_revision_id_in_head_never_becomes_a_path(three):
    head = _case(three) / "HEAD"
    record = json.loads(head.read_text())
    record["revisions"][0]["id"] = "../../../evil"
    head.write_text(json.dumps(record))
    with pytest.raises(StoreError, match="not a revision id"):
        AnnotationStore.open(three.location).load(CASE, "r000001")


# ----------------------------------------------------------------- locks
def test_breaking_a_stale_lock_is_one_atomic_take_over(three):
    keys = three._keys
    stale = LockHolder(1, "elsewhere", "2001-01-01T00:00:00.000000Z", "crashed", "old").to_json()
    (Path(three.location) / "LOCK").write_bytes(stale)
    first, second = WriterLock(keys), WriterLock(keys)
    # both judged the same lock stale; the first breaks it and takes the store
    assert keys.take_over("LOCK", stale)
    with first.hold("first"):
        assert not keys.take_over("LOCK", stale)  # the second's break must not remove the first's lock
        assert first.holder() is not None and first.holder().operation == "first"
        second.timeout_s = 0.1
        with pytest.raises(StoreLockedError, match="first"), second.hold("second"):
            pass
    assert not list(Path(three.location).glob(".LOCK.*"))


def test_an_object_store_never_breaks_a_lock_and_says_why(caplog):
    url = f"memory://napari-ivd-lock-{uuid.uuid4().hex}/s.zarr"
    store = make_store(url)
    stale = LockHolder(1, "elsewhere", "2001-01-01T00:00:00.000000Z", "crashed", "old").to_json()
    store._keys.put("LOCK", stale)
    with pytest.raises(StoreLockedError, match=r"cannot be taken over safely.*delete .*LOCK"):
        store.set_status(CASE, "new")
    assert store._keys.get("LOCK") == stale
    assert "cannot create the writer lock exclusively" in caplog.text


# ----------------------------------------------------------------- concurrent saves and provenance
def test_a_colleagues_save_after_the_proposal_is_never_silently_superseded(tmp_path, capsys):
    loc = str(tmp_path / "s.zarr")
    mine, colleague = make_store(loc), AnnotationStore.open(loc)
    points, mask = content(1)
    pid = mine.add_proposal(CASE, "net", points, mask).proposal_id
    colleague.save_revision(CASE, *content(2), author="colleague", proposal=pid)
    before = _snapshot(Path(loc))
    with pytest.raises(StoreConflictError, match=r"started from p000001 but the head is now r000001") as err:
        mine.save_revision(CASE, *content(3), author="me", proposal=pid)
    assert (err.value.started_from, err.value.head) == ("p000001", "r000001")
    assert _snapshot(Path(loc)) == before
    kept = mine.save_revision(CASE, *content(3), author="me", proposal=pid, on_conflict="on_top")
    assert (kept.revision_id, kept.parent, kept.based_on, kept.merged_over) == ("r000002", "r000001", pid, "r000001")
    first = mine.revision(CASE, "r000001")
    assert first.proposal == pid and first.author == "colleague"  # the first revision names its proposal
    assert mine.check().ok
    out = _run(capsys, "store", "history", loc)[1]
    assert "started from p000001" in out and "kept on top of r000001" in out


def test_a_stale_parent_revision_is_refused_too(tmp_path):
    loc = str(tmp_path / "s.zarr")
    mine, colleague = make_store(loc), AnnotationStore.open(loc)
    r1 = mine.save_revision(CASE, *content(1)).revision_id
    colleague.save_revision(CASE, *content(2), parent=r1)
    with pytest.raises(StoreConflictError, match="started from r000001 but the head is now r000002"):
        mine.save_revision(CASE, *content(3), parent=r1)
    assert os.path.isdir(Path(loc) / "cases" / CASE / "revisions" / "r000002")
