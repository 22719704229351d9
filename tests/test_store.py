"""The annotation store as an annotator, a trainer and a lab admin use it.

Unit tests on a synthetic phantom with a known oblique affine; real scans are in
``test_store_roundtrip.py``, crashes in ``test_store_crash.py``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_ivd.errors import (
    CheckpointError,
    GeometryMismatchError,
    StoreError,
    StoreLockedError,
    StoreVersionError,
    UnknownLevelError,
)
from napari_ivd.io.annotations import LabelledPoint
from napari_ivd.io.geometry import VolumeGeometry
from napari_ivd.io.volume import Volume
from napari_ivd.store import AnnotationStore, image_sha256
from napari_ivd.store.content import sha256_hex
from napari_ivd.store.lock import LockHolder

SHAPE = (48, 40, 24)
AFFINE = np.array([[0.0, 0.1, 1.5, -20.0], [-0.8, 0.0, 0.0, 30.0], [0.0, -0.8, 0.05, 12.0], [0, 0, 0, 1]])


def _volume(seed: int = 0, shape: tuple[int, int, int] = SHAPE) -> Volume:
    geometry = VolumeGeometry(AFFINE, shape, "phantom")
    image = np.random.default_rng(seed).integers(0, 1000, size=shape).astype(np.int16)
    return Volume(image, geometry, Path(f"phantom{seed}.nii.gz"))


def _points() -> list[LabelledPoint]:
    return [
        LabelledPoint("L3", (10.0, 20.0, 12.0)),
        LabelledPoint("L3-L4", (17.25, 19.5, 12.0), 0.9),
        LabelledPoint("L4", (24.0, 19.0, 11.5)),
    ]


def _mask(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[6:14, 12:28, 6:18] = 43  # L3
    mask[15:19, 12:28, 6:18] = 94  # L3-L4
    mask[20:28, 12:28, 6:18] = 44  # L4
    return mask


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def store(tmp_path) -> AnnotationStore:
    store = AnnotationStore.open(tmp_path / "annotations.zarr", create=True, mask_chunk_vox=(16, 16, 8))
    store.add_case(_volume(), "L3_017")
    return store


def test_annotator_saves_revisions_and_loads_each_back(store):
    first = store.save_revision("L3_017", _points(), _mask(), author="ann", note="from SCT")
    edited = _mask()
    edited[20:22, 12:28, 6:18] = 0  # trims L4's upper end
    moved = [*_points()[:2], LabelledPoint("L4", (25.0, 19.0, 11.5))]
    second = store.save_revision("L3_017", moved, edited, author="bob", note="trimmed L4", parent=first.revision_id)

    assert (first.revision_id, second.revision_id, second.parent) == ("r000001", "r000002", "r000001")
    assert (first.mask_storage, second.mask_storage) == ("full", "delta")
    assert second.voxels_changed == 2 * 16 * 12 and second.chunks_written == 2 * 3  # chunks it touches
    head = store.load("L3_017")
    assert head.entry_id == "r000002" and head.points == tuple(moved)
    np.testing.assert_array_equal(head.mask_tss, edited)
    old = store.load("L3_017", "r000001")
    assert old.points == tuple(_points())
    np.testing.assert_array_equal(old.mask_tss, _mask())
    assert store.case("L3_017").status == "in progress"
    mm = head.points_mm()["L4"]
    np.testing.assert_allclose(mm, AFFINE[:3, :3] @ [25.0, 19.0, 11.5] + AFFINE[:3, 3])


def test_loaded_mask_is_the_callers_to_edit(store):
    mask = _mask()
    store.save_revision("L3_017", _points(), mask)
    assert mask.flags.writeable  # the store keeps its own copy
    loaded = store.load("L3_017").mask_tss
    loaded[:] = 0
    np.testing.assert_array_equal(store.load("L3_017").mask_tss, _mask())


def test_case_status_moves_from_new_through_proposed_to_verified(store):
    assert store.case("L3_017").status == "new"
    with pytest.raises(StoreError, match="no revision to verify"):
        store.set_status("L3_017", "verified")
    proposal = store.add_proposal("L3_017", "ivdnet@3f2a", _points(), _mask())
    assert store.case("L3_017").status == "proposed" and proposal.proposal_id == "p000001"
    accepted = store.load_proposal("L3_017")
    store.save_revision("L3_017", accepted.points, accepted.mask_tss, source="model:ivdnet@3f2a")
    assert store.case("L3_017").status == "in progress"
    assert store.set_status("L3_017", "verified").status == "verified"
    assert store.revisions("L3_017")[0].source == "model:ivdnet@3f2a"


def test_history_diff_reports_moved_added_removed_points_and_voxels_per_structure(store):
    store.save_revision("L3_017", _points(), _mask())
    mask = _mask()
    mask[20:22, 12:28, 6:18] = 94  # L3-L4 grows into L4: 384 voxels
    points = [LabelledPoint("L3", (10.0, 20.0, 14.0)), LabelledPoint("L4", (24.0, 19.0, 11.5))]
    points.append(LabelledPoint("L4-L5", (30.0, 19.0, 11.0)))
    store.save_revision("L3_017", points, mask)

    diff = store.diff("L3_017", "r000001", "r000002")
    changes = {p.level: p for p in diff.points}
    assert changes["L3"].change == "moved"
    assert changes["L3"].distance_mm == pytest.approx(np.linalg.norm(AFFINE[:3, :3] @ [0, 0, 2.0]))
    assert changes["L3-L4"].change == "removed" and changes["L4-L5"].change == "added"
    assert changes["L4"].change == "unchanged"
    by_name = {s.name: s for s in diff.structures}
    assert by_name["L3-L4"].gained_vox == 384 and by_name["L4"].lost_vox == 384
    assert diff.voxels_changed == 384
    assert "moved" in diff.format() and "L3-L4" in diff.format()
    assert [r.revision_id for r in store.revisions("L3_017")] == ["r000001", "r000002"]


def test_restoring_an_old_revision_appends_it_as_a_new_one(store):
    store.save_revision("L3_017", _points(), _mask())
    store.save_revision("L3_017", _points()[:1], np.zeros(SHAPE, np.uint8), note="oops")
    restored = store.restore("L3_017", "r000001", author="ann")
    assert (restored.revision_id, restored.parent, restored.restored_from) == ("r000003", "r000002", "r000001")
    again = store.load("L3_017")
    assert again.points == tuple(_points())
    np.testing.assert_array_equal(again.mask_tss, _mask())
    assert len(store.revisions("L3_017")) == 3  # nothing was rewritten
    assert store.check().ok


def test_unchanged_points_are_stored_once_and_revisions_without_mask_work(store):
    store.save_revision("L3_017", _points(), None)
    store.save_revision("L3_017", _points(), _mask())
    store.save_revision("L3_017", _points(), None)
    records = [store.reader.record("L3_017", "revisions", r) for r in ("r000001", "r000002", "r000003")]
    assert records[0]["points"] is not None
    assert records[1]["points"] is None and records[1]["points_from"] == "r000001"
    assert records[2]["points_from"] == "r000001"
    assert store.load("L3_017").mask_tss is None and store.load("L3_017").points == tuple(_points())
    assert store.revision("L3_017", 2).mask_storage == "full"  # no parent mask: a keyframe


def test_keyframes_bound_the_delta_chain(tmp_path):
    store = AnnotationStore.open(tmp_path / "k.zarr", create=True, mask_chunk_vox=(16, 16, 8), keyframe_every=3)
    store.add_case(_volume(), "c")
    masks = []
    for i in range(7):
        mask = _mask()
        mask[30 + i, 0:4, 0:4] = 45
        masks.append(mask)
        store.save_revision("c", _points(), mask)
    storage = [r.mask_storage for r in store.revisions("c")]
    assert storage == ["full", "delta", "delta", "full", "delta", "delta", "full"]
    fresh = AnnotationStore.open(tmp_path / "k.zarr")
    for i, mask in enumerate(masks, start=1):
        np.testing.assert_array_equal(fresh.load("c", i).mask_tss, mask)


def test_hundred_small_mask_edits_cost_less_than_three_full_masks(tmp_path):
    shape = (160, 160, 40)
    store = AnnotationStore.open(tmp_path / "g.zarr", create=True, fsync=False)
    store.add_case(_volume(shape=shape), "c")
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    mask = np.zeros(shape, np.uint8)
    for n, centre in enumerate(range(20, 150, 26)):
        mask[((zz - centre) / 10.0) ** 2 + ((yy - 80) / 30.0) ** 2 + ((xx - 20) / 14.0) ** 2 < 1] = 41 + n
    store.save_revision("c", _points(), mask)
    masks_dir = tmp_path / "g.zarr" / "cases" / "c" / "revisions" / "masks"
    full = sum(p.stat().st_size for p in masks_dir.glob("c.1.*"))
    rng = np.random.default_rng(0)
    for _ in range(100):  # brush strokes of a few hundred voxels
        i, j, k = rng.integers(10, 150), rng.integers(40, 120), rng.integers(5, 35)
        mask[i : i + 6, j : j + 6, k : k + 4] = rng.choice([0, 42, 43])
        store.save_revision("c", _points(), mask)
    growth = sum(p.stat().st_size for p in masks_dir.glob("c.*")) - full
    assert growth < 3 * full, (growth, full)
    np.testing.assert_array_equal(AnnotationStore.open(tmp_path / "g.zarr").load("c").mask_tss, mask)


def test_store_works_the_same_through_a_memory_url():
    url = f"memory://napari-ivd-test-{uuid.uuid4().hex}/annotations.zarr"
    store = AnnotationStore.open(url, create=True)
    store.add_case(_volume(), "L3_017")
    store.save_revision("L3_017", _points(), _mask())
    store.add_proposal("L3_017", "ivdnet", _points()[:2], None)
    reopened = AnnotationStore.open(url)
    assert reopened.case_ids() == ["L3_017"]
    np.testing.assert_array_equal(reopened.load("L3_017").mask_tss, _mask())
    assert reopened.check().ok
    assert reopened._lock.holder() is None
    assert reopened.info()["cases"][0]["proposals"] == 1


def test_groups_and_arrays_are_plain_zarr_v3(store):
    store.save_revision("L3_017", _points(), _mask(), note="hello")
    root = zarr.open_group(store.location, mode="r")
    assert root.attrs["napari_ivd"]["format_version"] == 1
    case = root["cases/L3_017"]
    assert case.attrs["image"]["sha256"] == image_sha256(_volume().array)
    np.testing.assert_array_equal(case["image"][...], _volume().array)
    assert case["revisions/r000001"].attrs["note"] == "hello"
    np.testing.assert_array_equal(case["revisions/masks"][1], _mask())  # a keyframe is the mask itself


def test_case_record_keeps_the_image_and_source_fields_stores_are_read_by(store):
    """The case record's JSON as every store written so far holds it: a changed key would orphan them."""
    record = json.loads((Path(store.location) / "cases" / "L3_017" / "zarr.json").read_text())["attributes"]
    assert set(record) == {"case_id", "format_version", "created_utc", "image", "source"}
    assert (record["case_id"], record["format_version"]) == ("L3_017", 1)
    assert record["image"] == {
        "sha256": image_sha256(_volume().array),
        "dtype": "<i2",
        "shape": list(SHAPE),
        "affine": AFFINE.tolist(),
        "axcodes": "".join(VolumeGeometry(AFFINE, SHAPE).axcodes),
        "spacing_mm": list(VolumeGeometry(AFFINE, SHAPE).spacing_mm),
    }
    assert record["source"] == {
        "path": str(Path("phantom0.nii.gz").resolve()),
        "name": "phantom0",
        "file_sha256": None,
    }
    assert store.case("L3_017").geometry.source == record["source"]["path"]


def test_read_image_returns_the_stored_copy_and_its_grid(store):
    image = store.read_image("L3_017")
    np.testing.assert_array_equal(image.array, _volume().array)
    assert image.geometry == _volume().geometry and image.array.dtype == np.int16


def test_image_digest_is_about_voxels_not_byte_order():
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    assert image_sha256(data) == image_sha256(data.astype(">i2"))
    assert image_sha256(data) != image_sha256(data.astype(np.int32))


# ----------------------------------------------------------------- bad input: typed error, store unchanged
def _bad_mask_values() -> np.ndarray:
    mask = _mask()
    mask[0, 0, 0] = 7
    return mask


BAD_SAVES = {
    "mask of another shape": (dict(mask=np.zeros((48, 40, 23), np.uint8)), GeometryMismatchError, "mask shape"),
    "unknown level": (dict(points=[LabelledPoint("L7", (1.0, 1.0, 1.0))]), UnknownLevelError, "L7"),
    "point outside": (dict(points=[LabelledPoint("L4", (47.0, 45.0, 3.0))]), GeometryMismatchError, "outside"),
    "point just outside": (dict(points=[LabelledPoint("L4", (-0.51, 2.0, 3.0))]), GeometryMismatchError, "outside"),
    "non-TSS mask values": (dict(mask=_bad_mask_values()), StoreError, r"\[7\]"),
    "float mask": (dict(mask=_mask().astype(np.float32)), StoreError, "not integer"),
    "level twice": (dict(points=[*_points(), LabelledPoint("l3", (3.0, 3.0, 3.0))]), StoreError, "twice"),
    "NaN point": (dict(points=[LabelledPoint("L4", (np.nan, 1.0, 1.0))]), StoreError, "non-finite"),
    "another image": (dict(image_sha256="0" * 64), StoreError, "another image"),
    "unknown status": (dict(status="done"), StoreError, "unknown case status"),
    "unknown source": (dict(source="robot"), StoreError, "model:<name>"),
    "stale parent": (dict(parent="r000000"), StoreError, "reload the case"),
}


@pytest.mark.parametrize("name", list(BAD_SAVES))
def test_bad_revision_is_refused_with_a_clear_error_and_changes_nothing(store, name):
    store.save_revision("L3_017", _points(), _mask())
    kwargs, error, words = BAD_SAVES[name]
    args = {"points": _points(), "mask": _mask(), **kwargs}
    before = _snapshot(Path(store.location))
    with pytest.raises(error, match=words):
        store.save_revision("L3_017", args.pop("points"), args.pop("mask"), **args)
    assert _snapshot(Path(store.location)) == before


def test_another_image_under_an_existing_case_id_is_refused(store):
    before = _snapshot(Path(store.location))
    with pytest.raises(StoreError, match="another image"):
        store.add_case(_volume(seed=1), "L3_017", points=_points())
    assert _snapshot(Path(store.location)) == before


def test_the_same_voxels_on_another_grid_under_an_existing_case_id_are_refused(store):
    volume = _volume()
    shifted = AFFINE.copy()
    shifted[:3, 3] += 5.0  # the same voxels, 5 mm elsewhere: points would land on other anatomy
    moved = Volume(volume.array, VolumeGeometry(shifted, volume.geometry.shape, "phantom"), volume.path)
    before = _snapshot(Path(store.location))
    with pytest.raises(StoreError, match=r"same voxels but another affine.*another case id"):
        store.add_case(moved, "L3_017", points=_points())
    assert _snapshot(Path(store.location)) == before


def test_a_second_copy_of_a_stored_scan_is_refused_naming_the_case_that_holds_it(store):
    before = _snapshot(Path(store.location))
    with pytest.raises(StoreError, match=r"is already in the store as case L3_017 .*open and annotate case L3_017"):
        store.add_case(_volume(), "L3_017-again", points=_points())
    assert _snapshot(Path(store.location)) == before
    store.add_case(_volume(seed=1), "other")  # another image: added
    store.add_case(_volume(), "L3_017-again", allow_copy=True)  # asked for: kept, training holds copies out together
    assert store.case_ids() == ["L3_017", "L3_017-again", "other"]


def test_store_of_a_newer_format_is_refused(store):
    root = Path(store.location) / "zarr.json"
    meta = json.loads(root.read_text())
    meta["attributes"]["napari_ivd"]["format_version"] = 2
    root.write_text(json.dumps(meta))
    before = _snapshot(Path(store.location))
    with pytest.raises(StoreVersionError, match=r"format_version 2.*Upgrade napari-ivd"):
        AnnotationStore.open(store.location)
    assert _snapshot(Path(store.location)) == before


def test_case_committed_by_a_newer_format_is_refused(store):
    head = Path(store.location) / "cases" / "L3_017" / "HEAD"
    head.write_text(head.read_text().replace('"format_version": 1', '"format_version": 7'))
    with pytest.raises(StoreVersionError, match="format_version 7"):
        store.load("L3_017")
    with pytest.raises(StoreVersionError):
        store.save_revision("L3_017", _points(), _mask())
    assert "format_version 7" in store.check().format()


def test_half_written_store_is_refused_with_advice_unless_only_its_creation_was_interrupted(tmp_path):
    half = tmp_path / "half.zarr"
    (half / "cases").mkdir(parents=True)
    (half / "cases" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    (half / "cases" / "L3").mkdir()  # more than a killed creation leaves
    with pytest.raises(StoreError, match="half-written store"):
        AnnotationStore.open(half, create=True)
    assert sorted(p.name for p in half.rglob("*")) == ["L3", "cases", "zarr.json"]
    (half / "cases" / "L3").rmdir()  # only the empty groups a killed creation leaves: created again
    assert AnnotationStore.open(half, create=True).check().ok


def test_plain_zarr_and_missing_stores_are_not_taken_for_annotation_stores(tmp_path):
    zarr.open_group(tmp_path / "other.zarr", mode="w")
    with pytest.raises(StoreError, match="not a napari-ivd annotation store"):
        AnnotationStore.open(tmp_path / "other.zarr", create=True)
    with pytest.raises(StoreError, match="no annotation store here"):
        AnnotationStore.open(tmp_path / "nothing.zarr")
    assert not (tmp_path / "nothing.zarr").exists()


def test_unknown_case_and_revision_are_named(store):
    with pytest.raises(StoreError, match=r"no case 'L9'.*L3_017"):
        store.load("L9")
    with pytest.raises(StoreError, match="no committed revision r000004"):
        store.load("L3_017", "r000004")
    with pytest.raises(StoreError, match="not usable"):
        store.add_case(_volume(), "../evil")


# ----------------------------------------------------------------- one writer, many readers
def _hold_lock(store: AnnotationStore, pid: int, hostname: str | None = None) -> None:
    holder = LockHolder(pid, hostname or socket.gethostname(), "2030-01-01T00:00:00.000000Z", "test", "foreign")
    (Path(store.location) / "LOCK").write_bytes(holder.to_json())


def test_second_writer_gets_a_clear_error_while_the_first_holds_the_lock(tmp_path, store):
    _hold_lock(store, os.getpid())  # a live process: this one, under another token
    writer = AnnotationStore.open(store.location, lock_timeout_s=0.2)
    before = _snapshot(Path(store.location))
    with pytest.raises(StoreLockedError, match=rf"being written by pid {os.getpid()} on .*\(test\)"):
        writer.save_revision("L3_017", _points(), _mask())
    assert _snapshot(Path(store.location)) == before
    assert writer.load("L3_017").entry_id is None  # readers never wait for the lock
    assert "writer lock held by" in writer.check().format()


def test_lock_of_a_crashed_writer_is_broken(store):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _hold_lock(store, int(gone.stdout))
    assert store.save_revision("L3_017", _points(), _mask()).revision_id == "r000001"
    assert not (Path(store.location) / "LOCK").exists()


def test_lock_of_another_host_is_broken_only_when_old(store):
    holder = LockHolder(1, "elsewhere", "2001-01-01T00:00:00.000000Z", "test", "x")
    (Path(store.location) / "LOCK").write_bytes(holder.to_json())
    assert store.save_revision("L3_017", _points(), None).revision_id == "r000001"
    young = LockHolder(1, "elsewhere", "2999-01-01T00:00:00.000000Z", "test", "x")
    (Path(store.location) / "LOCK").write_bytes(young.to_json())
    with pytest.raises(StoreLockedError, match="elsewhere"):
        AnnotationStore.open(store.location, lock_timeout_s=0.1).set_status("L3_017", "verified")


# ----------------------------------------------------------------- integrity check
def test_check_passes_on_a_healthy_store_and_notes_leftovers_of_an_interrupted_write(store):
    store.save_revision("L3_017", _points(), _mask())
    case = Path(store.location) / "cases" / "L3_017" / "revisions"
    (case / "r000002").mkdir()
    (case / "r000002" / "zarr.json").write_text('{"zarr_format": 3, "node_')  # half a record
    (case / "masks" / "c.2.0.0.0").write_bytes(b"garbage")
    report = store.check()
    assert report.ok, report.format()
    assert "uncommitted" in report.format() and "r000002" in report.format()
    store.save_revision("L3_017", _points()[:1], _mask())  # takes over the leftovers' place
    assert store.check().ok and "uncommitted" not in store.check().format()
    np.testing.assert_array_equal(store.load("L3_017").mask_tss, _mask())


@pytest.mark.parametrize("damage", ["chunk", "record", "missing record", "image", "parent"])
def test_check_finds_damage_and_says_where(store, damage):
    store.save_revision("L3_017", _points(), _mask())
    mask = _mask()
    mask[0:2, 0:2, 0:2] = 45
    store.save_revision("L3_017", _points(), mask)
    case = Path(store.location) / "cases" / "L3_017"
    if damage == "chunk":
        chunk = next((case / "revisions" / "masks").glob("c.2.*"))
        stored = zarr.open_array(store.location, path="cases/L3_017/revisions/masks", mode="r+")
        stored[2, 0:16, 0:16, 0:8] = 1  # a valid chunk, wrong content
        assert chunk.exists()
    elif damage in ("record", "parent"):
        path = case / "revisions" / "r000002" / "zarr.json"
        meta = json.loads(path.read_text())
        meta["attributes"]["note" if damage == "record" else "parent"] = "edited" if damage == "record" else "r000009"
        path.write_text(json.dumps(meta))
    elif damage == "missing record":
        (case / "revisions" / "r000001" / "zarr.json").unlink()
    else:
        zarr.open_array(store.location, path="cases/L3_017/image", mode="r+")[0, 0, 0] = 12345
    report = AnnotationStore.open(store.location).check()
    assert not report.ok
    assert "case L3_017" in report.format()


# ----------------------------------------------------------------- models kept in the store
def _model_dir(tmp_path: Path, weights: bytes = b"\x00safetensors-bytes" * 100) -> Path:
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / "weights.safetensors").write_bytes(weights)
    card = {"format_version": 1, "name": "ivdnet", "arch": "ivdnet", "weights_sha256": sha256_hex(weights)}
    (folder / "card.json").write_text(json.dumps(card))
    return folder


def test_models_are_kept_listed_and_exported_byte_for_byte(tmp_path, store):
    source = _model_dir(tmp_path)
    info = store.add_model(source)
    assert info.model_id.startswith("ivdnet-") and info.size_bytes == 1800
    assert [m.model_id for m in store.list_models()] == [info.model_id]
    assert store.add_model(source).model_id == info.model_id  # idempotent
    out = store.export_model(info.model_id, tmp_path / "exported")
    for name in ("weights.safetensors", "card.json"):
        assert (out / name).read_bytes() == (source / name).read_bytes()
    assert store.check().models == 1


def test_model_whose_weights_do_not_match_the_card_is_refused(tmp_path, store):
    source = _model_dir(tmp_path)
    (source / "weights.safetensors").write_bytes(b"other")
    with pytest.raises(CheckpointError, match="does not match"):
        store.add_model(source)
    assert store.list_models() == []


def test_check_finds_damaged_model_weights(tmp_path, store):
    info = store.add_model(_model_dir(tmp_path))
    (Path(store.location) / "models" / info.model_id / "weights.safetensors").write_bytes(b"bitrot")
    report = store.check()
    assert not report.ok and "weights.safetensors" in report.format()
    with pytest.raises(StoreError, match="damaged"):
        store.export_model(info.model_id, tmp_path / "x")
