"""Annotation store: time to save a corrected case, and store growth over 100 revisions.

    python benchmarks/bench_store.py [--data ../shared/data] [--revisions 100] [--json out.json]

For a 400×400×80 TotalSpineSeg mask (a real lumbar mask, VB2 case-07 padded to that grid,
when ../shared/data is there; plus a synthetic phantom) the script saves a first revision
(25 points + full mask), then N corrected revisions, each moving two points by ~1 mm and
painting or erasing a brush stroke of 6×6×4 voxels. It prints, per mask and with/without
fsync: save time (median, p90, max), the cold save of a freshly opened store, the load of
the head, ``check``, and the store's growth over the N revisions against one full mask.
No thresholds: figures only.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import zarr

from napari_ivd import anatomy
from napari_ivd.io.annotations import LabelledPoint
from napari_ivd.io.geometry import VolumeGeometry
from napari_ivd.io.volume import Volume
from napari_ivd.store import AnnotationStore

SHAPE = (400, 400, 80)
AFFINE = np.diag([0.6, 0.6, 3.0, 1.0])
#: 25 structures T7 ... S1, as a full lumbar + lower thoracic annotation.
LEVELS = [s.name for s in anatomy.STRUCTURES if s.order >= anatomy.structure("T7").order][:25]


def phantom_mask() -> np.ndarray:
    """Ellipsoid vertebral bodies and discs down a 400×400×80 grid (axis 0 cranio-caudal)."""
    zz, yy, xx = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    mask = np.zeros(SHAPE, np.uint8)
    for n, centre in enumerate(range(30, 380, 50)):
        body = ((zz - centre) / 18.0) ** 2 + ((yy - 200) / 45.0) ** 2 + ((xx - 40) / 30.0) ** 2 < 1
        disc = ((zz - centre - 25) / 5.0) ** 2 + ((yy - 200) / 40.0) ** 2 + ((xx - 40) / 26.0) ** 2 < 1
        mask[body] = 41 + n % 5
        mask[disc] = 92 + n % 4
    return mask


def real_mask(data: Path) -> np.ndarray | None:
    """VB2 case-07's TotalSpineSeg mask (381×381×77, T11-L5 bodies) padded to 400×400×80."""
    path = data / "lumbar/VB2/case-07/mask_tss.nii.gz"
    if not path.is_file():
        return None
    mask = np.asanyarray(nib.load(path).dataobj).astype(np.uint8)
    out = np.zeros(SHAPE, np.uint8)
    out[: mask.shape[0], : mask.shape[1], : mask.shape[2]] = mask
    return out


def _points(rng: np.random.Generator) -> list[LabelledPoint]:
    return [LabelledPoint(level, (12.0 + 15 * i, 200.0 + rng.normal(), 40.0)) for i, level in enumerate(LEVELS)]


def _bytes(root: Path, pattern: str = "**/*") -> int:
    return sum(p.stat().st_size for p in root.glob(pattern) if p.is_file())


def _blocks(root: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in root.rglob("*") if p.is_file())


def run(name: str, mask0: np.ndarray, revisions: int, fsync: bool, workdir: Path) -> dict:
    """Save 1 + ``revisions`` revisions of ``mask0`` with small edits; time and measure the store."""
    location = workdir / f"{name}-{'fsync' if fsync else 'nofsync'}.zarr"
    shutil.rmtree(location, ignore_errors=True)
    rng = np.random.default_rng(0)
    store = AnnotationStore.open(location, create=True, fsync=fsync)
    image = (mask0.astype(np.int16) * 7 + rng.integers(0, 50, SHAPE, dtype=np.int16)).astype(np.int16)
    store.add_case(Volume(image, VolumeGeometry(AFFINE, SHAPE, name), Path(f"{name}.nii.gz")), "case")
    case_dir = location / "cases" / "case"
    masks_dir = case_dir / "revisions" / "masks"
    points, mask = _points(rng), mask0.copy()

    t0 = time.perf_counter()
    store.save_revision("case", points, mask, note="imported")
    first_s = time.perf_counter() - t0
    full_mask = _bytes(masks_dir, "c.1.*")
    base_total, base_blocks = _bytes(case_dir), _blocks(case_dir)
    base_records = _bytes(case_dir / "revisions", "r*/zarr.json") + _bytes(case_dir, "HEAD")

    times = []
    for _ in range(revisions):
        for idx in rng.choice(len(points), size=2, replace=False):  # two points moved by ~1 mm
            p = points[idx]
            points[idx] = LabelledPoint(p.level, tuple(float(v + rng.normal(0, 0.7)) for v in p.ijk_vox))
        i, j, k = rng.integers(0, SHAPE[0] - 6), rng.integers(150, 250), rng.integers(10, 70)
        mask[i : i + 6, j : j + 6, k : k + 4] = rng.choice([0, 41, 42, 93])  # a brush stroke
        t0 = time.perf_counter()
        store.save_revision("case", points, mask, note="corrected")
        times.append(time.perf_counter() - t0)

    cold = AnnotationStore.open(location, fsync=fsync)  # nothing cached: rebuilds the parent mask
    mask[10:16, 190:196, 30:34] = 44
    t0 = time.perf_counter()
    cold.save_revision("case", points, mask, note="cold")
    cold_save_s = time.perf_counter() - t0
    reader = AnnotationStore.open(location)
    t0 = time.perf_counter()
    loaded = reader.load("case")
    load_s = time.perf_counter() - t0
    assert np.array_equal(loaded.mask_tss, mask)
    t0 = time.perf_counter()
    ok = reader.check(["case"]).ok
    check_s = time.perf_counter() - t0

    mask_growth = _bytes(masks_dir) - full_mask
    records_growth = _bytes(case_dir / "revisions", "r*/zarr.json") + _bytes(case_dir, "HEAD") - base_records
    storage = [r.mask_storage for r in reader.revisions("case")]
    return {
        "mask": name,
        "fsync": fsync,
        "revisions": revisions,
        "first_save_s": first_s,
        "save_median_s": statistics.median(times),
        "save_p90_s": float(np.percentile(times, 90)),
        "save_max_s": max(times),
        "cold_save_s": cold_save_s,
        "load_head_s": load_s,
        "check_s": check_s,
        "check_ok": ok,
        "full_mask_bytes": full_mask,
        "mask_growth_bytes": mask_growth,
        "records_growth_bytes": records_growth,
        "total_growth_bytes": _bytes(case_dir) - base_total,
        "disk_growth_bytes": _blocks(case_dir) - base_blocks,
        "keyframes": storage.count("full"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--revisions", type=int, default=100)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()

    masks = {"phantom": phantom_mask()}
    real = real_mask(args.data)
    if real is not None:
        masks["VB2_case-07"] = real
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        for name, mask in masks.items():
            for fsync in (True, False):
                rows.append(run(name, mask, args.revisions, fsync, Path(tmp)))
    print(
        f"napari-ivd store, mask {'×'.join(map(str, SHAPE))} uint8, 25 points; "
        f"{platform.processor() or platform.machine()}, python {platform.python_version()}, "
        f"zarr {zarr.__version__}, numpy {np.__version__}"
    )
    head = (
        f"{'mask':12s} {'fsync':5s} {'1st s':>6s} {'save med':>8s} {'p90':>6s} {'max':>6s} {'cold':>6s} "
        f"{'load':>6s} {'check':>6s} {'full KB':>8s} {'+masks KB':>9s} {'ratio':>6s} {'+records':>8s} "
        f"{'+total':>7s} {'+disk':>7s} {'keyfr':>5s}"
    )
    print(head)
    for r in rows:
        ratio = r["mask_growth_bytes"] / r["full_mask_bytes"]
        print(
            f"{r['mask']:12s} {'yes' if r['fsync'] else 'no':5s} {r['first_save_s']:6.3f} {r['save_median_s']:8.3f} "
            f"{r['save_p90_s']:6.3f} {r['save_max_s']:6.3f} {r['cold_save_s']:6.3f} {r['load_head_s']:6.3f} "
            f"{r['check_s']:6.2f} {r['full_mask_bytes'] / 1e3:8.1f} {r['mask_growth_bytes'] / 1e3:9.1f} "
            f"{ratio:5.2f}× {r['records_growth_bytes'] / 1e3:8.1f} {r['total_growth_bytes'] / 1e3:7.1f} "
            f"{r['disk_growth_bytes'] / 1e3:7.1f} {r['keyframes']:5d}"
        )
    print(
        f"(times in s; growth in kB over {args.revisions} revisions after the first; ratio = mask growth / one "
        "full mask; +total counts every byte of the case; +disk counts file-system blocks)"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
