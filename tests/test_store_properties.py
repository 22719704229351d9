"""Property tests: whatever an annotator saves, in whatever order, loads back exactly.

Random grids, chunk sizes, keyframe intervals and histories of point sets and mask edits
(including revisions without a mask, full rewrites and single-voxel touches), saved into
``memory://`` stores; every revision must load back bit for bit from a fresh handle, and
``check`` must pass. Export followed by import must also give back what was saved.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import fsspec
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from napari_ivd import anatomy
from napari_ivd.io import write_nifti
from napari_ivd.io.annotations import LabelledPoint
from napari_ivd.io.geometry import VolumeGeometry
from napari_ivd.io.volume import Volume
from napari_ivd.store import AnnotationStore, diff_annotations, export_revision, import_case
from napari_ivd.store.content import TSS_VALUES

LEVELS = [s.name for s in anatomy.STRUCTURES]
VALUES = sorted(TSS_VALUES)
AFFINE = np.array([[0.0, 0.0, -2.0, 40.0], [1.1, 0.0, 0.0, -3.0], [0.0, -0.7, 0.0, 9.0], [0, 0, 0, 1]])
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _volume(shape: tuple[int, int, int]) -> Volume:
    image = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    return Volume(image, VolumeGeometry(AFFINE, shape, "phantom"), Path("phantom.nii.gz"))


@st.composite
def _points(draw, shape: tuple[int, int, int], integer: bool = False) -> list[LabelledPoint]:
    levels = draw(st.lists(st.sampled_from(LEVELS), unique=True, max_size=8))
    if integer:
        coord = [st.integers(0, n - 1).map(float) for n in shape]
    else:
        coord = [st.floats(-0.5, n - 0.5, allow_nan=False) for n in shape]
    return [LabelledPoint(level, tuple(draw(c) for c in coord), draw(st.floats(0, 1))) for level in levels]


@st.composite
def _mask_edit(draw, mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    for _ in range(draw(st.integers(1, 3))):
        lo = [draw(st.integers(0, n - 1)) for n in mask.shape]
        hi = [draw(st.integers(low + 1, n)) for low, n in zip(lo, mask.shape, strict=True)]
        out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = draw(st.sampled_from(VALUES))
    return out


@st.composite
def _histories(draw):
    shape = tuple(draw(st.integers(2, 9)) for _ in range(3))
    chunk = tuple(draw(st.integers(1, 5)) for _ in range(3))
    keyframe_every = draw(st.integers(1, 4))
    steps, mask = [], None
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["none", "edit", "edit", "random", "same"]))
        if kind == "none":
            mask = None
        elif kind == "random" or mask is None:
            mask = draw(arrays(np.uint8, shape, elements=st.sampled_from(VALUES)))
        elif kind == "edit":
            mask = draw(_mask_edit(mask))
        steps.append((draw(_points(shape)), None if mask is None else mask.copy()))
    return shape, chunk, keyframe_every, steps


def _canonical(points: list[LabelledPoint]) -> tuple[LabelledPoint, ...]:
    named = [LabelledPoint(anatomy.structure(p.level).name, p.ijk_vox, p.score) for p in points]
    return tuple(sorted(named, key=lambda p: anatomy.structure(p.level).order))


def _memory_store(**kwargs) -> tuple[str, AnnotationStore]:
    url = f"memory://napari-ivd-prop-{uuid.uuid4().hex}/s.zarr"
    return url, AnnotationStore.open(url, create=True, **kwargs)


def _drop(url: str) -> None:
    fs = fsspec.filesystem("memory")
    fs.rm(url.removeprefix("memory://").rsplit("/", 1)[0], recursive=True)


@SETTINGS
@given(_histories())
def test_every_saved_revision_loads_back_exactly(history):
    shape, chunk, keyframe_every, steps = history
    url, store = _memory_store(mask_chunk_vox=chunk, keyframe_every=keyframe_every)
    try:
        store.add_case(_volume(shape), "c")
        for points, mask in steps:
            store.save_revision("c", points, mask)
        fresh = AnnotationStore.open(url)
        for number, (points, mask) in enumerate(steps, start=1):
            loaded = fresh.load("c", number)
            assert loaded.points == _canonical(points)
            if mask is None:
                assert loaded.mask_tss is None
            else:
                np.testing.assert_array_equal(loaded.mask_tss, mask)
        report = fresh.check()
        assert report.ok, report.format()
    finally:
        _drop(url)


@SETTINGS
@given(_histories())
def test_diff_counts_exactly_the_voxels_and_points_that_changed(history):
    shape, chunk, _, steps = history
    url, store = _memory_store(mask_chunk_vox=chunk)
    try:
        store.add_case(_volume(shape), "c")
        for points, mask in steps:
            store.save_revision("c", points, mask)
        a, b = store.load("c", 1), store.load("c")
        diff = diff_annotations(a, b)
        ma = a.mask_tss if a.mask_tss is not None else np.zeros(shape, np.uint8)
        mb = b.mask_tss if b.mask_tss is not None else np.zeros(shape, np.uint8)
        assert diff.voxels_changed == int(np.count_nonzero(ma != mb))
        for s in diff.structures:
            assert s.gained_vox - s.lost_vox == int(np.count_nonzero(mb == s.value)) - int(
                np.count_nonzero(ma == s.value)
            )
        assert {p.level for p in diff.changed_points("added")} == {p.level for p in b.points} - {
            p.level for p in a.points
        }
    finally:
        _drop(url)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_export_then_import_gives_back_the_revision(data):
    shape = tuple(data.draw(st.integers(2, 8)) for _ in range(3))
    points = data.draw(_points(shape, integer=True))  # SCT label files hold whole voxels, one label each
    points = list({p.ijk_vox: p for p in points}.values())
    mask = data.draw(arrays(np.uint8, shape, elements=st.sampled_from(VALUES)))
    url, store = _memory_store()
    other_url, other = _memory_store()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            image = write_nifti(Path(tmp) / "image.nii.gz", _volume(shape).array, _volume(shape).geometry)
            store.add_case(_volume(shape), "c")
            store.save_revision("c", points, mask)
            files = export_revision(store, "c", Path(tmp) / "out")
            import_case(
                other, image, case_id="c", points=files.get("discs"), levels=files.get("levels"), mask=files["mask"]
            )
            back = other.load("c")
        assert {(p.level, p.ijk_vox) for p in back.points} == {(p.level, p.ijk_vox) for p in _canonical(points)}
        np.testing.assert_array_equal(back.mask_tss, mask)
    finally:
        _drop(url)
        _drop(other_url)
