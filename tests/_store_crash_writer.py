"""A writer process for the store's crash tests: saves revisions in a loop until it is killed.

    python tests/_store_crash_writer.py STORE RUN N_SAVES

Each save's content is a pure function of a sequence number (:func:`content`), so the test
can recompute what every acknowledged revision must hold. After each save *returns*, one
line ``REV <revision id> <seq>`` (or ``PROP <proposal id> <seq>``, ``STATUS <status>``) is
written to stdout, flushed and fsynced: that is the acknowledgement the test relies on.
:func:`check_after_kill` is how the tests check a store after a kill.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import numpy as np

from napari_ivd.io.annotations import LabelledPoint
from napari_ivd.io.geometry import VolumeGeometry
from napari_ivd.io.volume import Volume
from napari_ivd.store import AnnotationStore

CASE = "crash"
SHAPE = (40, 36, 20)
GEOMETRY = VolumeGeometry(np.array([[0.0, 0, 1.2, -10], [-0.9, 0, 0, 20], [0, -0.9, 0, 5], [0, 0, 0, 1]]), SHAPE, "x")
LEVELS = ("T12", "T12-L1", "L1", "L1-L2", "L2", "L2-L3", "L3", "L3-L4", "L4", "L4-L5", "L5", "L5-S1", "S1")
VALUES = (0, 1, 2, 41, 42, 43, 44, 45, 92, 93, 94, 95, 100)


def make_store(location: str) -> AnnotationStore:
    """The store and case the writer appends to (small chunks and keyframes: every code path is hit)."""
    store = AnnotationStore.open(location, create=True, mask_chunk_vox=(8, 8, 8), keyframe_every=4)
    if not store.has_case(CASE):
        image = (np.arange(np.prod(SHAPE)) % 251).reshape(SHAPE).astype(np.int16)
        store.add_case(Volume(image, GEOMETRY, Path("crash.nii.gz")), CASE)
    return store


def content(seq: int) -> tuple[tuple[LabelledPoint, ...], np.ndarray | None]:
    """The points and mask of save number ``seq``: a fixed base plus a few random boxes."""
    rng = np.random.default_rng(seq)
    n = int(rng.integers(0, len(LEVELS) + 1))
    levels = sorted(rng.choice(len(LEVELS), size=n, replace=False))
    points = tuple(
        LabelledPoint(LEVELS[i], tuple(float(v) for v in rng.uniform(0, np.array(SHAPE) - 1).round(3)), 1.0)
        for i in levels
    )
    if seq % 11 == 5:
        return points, None
    mask = np.zeros(SHAPE, np.uint8)
    mask[5:30, 10:20, 5:15] = 42
    for _ in range(int(rng.integers(1, 4))):
        lo = rng.integers(0, np.array(SHAPE) - 2)
        hi = lo + rng.integers(1, 10, size=3)
        mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = VALUES[int(rng.integers(len(VALUES)))]
    return points, mask


def check_after_kill(location: str | Path) -> AnnotationStore:
    """The store a writer was killed in, checked: clean, or with only problems that lose nothing, then repaired.

    A kill right after a commit leaves its ``COMMITTED`` mark unwritten: ``check`` calls that
    a problem that loses nothing, and after ``repair`` the store must check clean.
    """
    store = AnnotationStore.open(location)
    report = store.check()
    if not report.ok:
        assert all("Nothing is lost" in p for p in report.problems), report.format()
        store.repair()
        store = AnnotationStore.open(location)
        report = store.check()
        assert report.ok, report.format()
    return store


def _ack(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    with contextlib.suppress(OSError):  # a pipe cannot be fsynced; the tests pass a file
        os.fsync(sys.stdout.fileno())


def main() -> None:
    location, run, n_saves = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store = make_store(location)
    _ack("READY")
    for i in range(n_saves):
        seq = run * 100_000 + i
        points, mask = content(seq)
        if seq % 13 == 7:
            info = store.add_proposal(CASE, "crashnet", points, mask, note=f"seq={seq}")
            _ack(f"PROP {info.proposal_id} {seq}")
        elif seq % 17 == 3:
            status = ("in progress", "verified")[seq % 2] if store.case(CASE).head else "new"
            store.set_status(CASE, status)
            _ack(f"STATUS {status}")
        else:
            info = store.save_revision(CASE, points, mask, author="crash-test", note=f"seq={seq}")
            _ack(f"REV {info.revision_id} {seq}")


if __name__ == "__main__":
    main()
