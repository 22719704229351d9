"""SIGKILL during case import, model save and store creation: what was acknowledged is whole, the rest redoable.

A writer process (``_store_kill_writer.py``) imports cases, stores a model or creates stores
in a loop and acknowledges each after the call returns; it is killed at random instants.
After every kill the store opens and ``check`` passes (after a case import it may report a
``COMMITTED`` mark the kill left unwritten, which loses nothing, and pass after ``repair``);
every acknowledged case, model or store is there and whole; and what the kill interrupted
can simply be done again (the same import, the same model id, the same store location).
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from _store_crash_writer import GEOMETRY, check_after_kill, content
from _store_kill_writer import image
from napari_ivd.io.volume import Volume
from napari_ivd.store import AnnotationStore

pytestmark = pytest.mark.slow

WRITER = Path(__file__).with_name("_store_kill_writer.py")
KILLS = 8


def _kill_at_random(mode: str, workdir: Path, run: int, rng: random.Random) -> list[str]:
    """Start the writer, kill it at a random instant after it is ready; the names it acknowledged."""
    acks = workdir / f"acks-{mode}-{run}.txt"
    with acks.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(WRITER), mode, str(workdir), str(run)], stdout=out, stderr=subprocess.PIPE
        )
    deadline = time.monotonic() + 60
    while "READY" not in acks.read_text():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "writer never got ready"
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 0.4))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    proc.stderr.close()
    return [line.split()[1] for line in acks.read_text().splitlines() if line.startswith("DONE ")]


def _next(acked: list[str], prefix: str, suffix: str = "") -> str:
    """The name the killed writer was working on."""
    return f"{prefix}{len(acked)}{suffix}"


def test_a_case_import_killed_at_any_instant(tmp_path):
    rng, location = random.Random(1), tmp_path / "store.zarr"
    AnnotationStore.open(location, create=True)
    for run in range(KILLS):
        acked = _kill_at_random("import", tmp_path, run, rng)
        store = check_after_kill(location)
        for i, case_id in enumerate(acked):
            points, mask = content(run * 1000 + i)
            loaded = store.load(case_id)
            assert loaded.points == points
            np.testing.assert_array_equal(loaded.mask_tss, mask)
        interrupted, seq = _next(acked, f"c{run}_"), run * 1000 + len(acked)
        points, mask = content(seq)  # the import the kill interrupted goes through when redone
        store.add_case(Volume(image(seq), GEOMETRY, Path("x.nii.gz")), interrupted, points=points, mask=mask)
        np.testing.assert_array_equal(store.load(interrupted).mask_tss, mask)
        assert store.check().ok


def test_a_model_save_killed_at_any_instant(tmp_path):
    rng, location = random.Random(2), tmp_path / "store.zarr"
    AnnotationStore.open(location, create=True)
    model = tmp_path / "model"
    model.mkdir()
    weights = np.random.default_rng(0).bytes(8_000_000)  # big enough that kills land mid-write
    (model / "weights.safetensors").write_bytes(weights)
    (model / "card.json").write_text(
        json.dumps({"name": "killnet", "weights_sha256": hashlib.sha256(weights).hexdigest()})
    )
    for run in range(KILLS):
        acked = _kill_at_random("model", tmp_path, run, rng)
        store = AnnotationStore.open(location)
        report = store.check()  # an upload the kill cut is a note, whatever it had written
        assert report.ok, report.format()
        listed = {m.model_id for m in store.list_models()}
        assert set(acked) <= listed
        for model_id in acked:
            out = store.export_model(model_id, tmp_path / "export" / model_id)
            assert (out / "weights.safetensors").read_bytes() == weights
        interrupted = _next(acked, f"m{run}-")
        assert store.add_model(model, interrupted).model_id == interrupted
        assert store.check().ok


def test_store_creation_killed_at_any_instant(tmp_path):
    rng = random.Random(3)
    for run in range(KILLS):
        acked = _kill_at_random("create", tmp_path, run, rng)
        for name in acked:
            assert AnnotationStore.open(tmp_path / name).check().ok
        interrupted = tmp_path / _next(acked, f"s{run}_", ".zarr")
        store = AnnotationStore.open(interrupted, create=True)  # a creation the kill interrupted is redone
        assert store.check().ok and store.case_ids() == []
