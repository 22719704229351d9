"""Time to open each real scan in ../shared/data as napari-ivd shows it (read + sagittal view).

    python benchmarks/bench_io.py [--data ../shared/data] [--json out.json]
    python benchmarks/bench_io.py --large [--dtype int16] [--shape 1024x1024x768]

Prints one row per volume: orientation, shape, seconds to read (decode + checks) and to
build the Image layer data (reorientation + contrast limits). No thresholds: figures only.

``--large`` instead opens the oversized inputs of ``tests/bad_inputs.py``, each in a fresh
process so its peak resident memory is its own: a 76-byte header declaring 2000x2000x1000
int16 (refused under a 4 GB limit), a header declaring 10000³ (refused by the default,
memory-sized limit) and a valid, mostly-zero volume of ``--shape`` (written to a temporary
folder). Each row gives seconds and peak RSS after reading, after building the Image and
Labels layer data the viewer adds, and after preparing the network's input (normalised
slices resampled to 1 mm, float32: what a prediction holds besides the network's outputs),
with the peak above the interpreter's start as a multiple of the volume's own bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_ivd.errors import IvdError
from napari_ivd.io import read_volume
from napari_ivd.io.limits import MAX_IMAGE_GB_ENV
from napari_ivd.layer_data import image_layer_data

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bad_inputs import write_header_only, write_large_volume


def _peak_rss_bytes() -> int:
    """This process's peak resident memory: VmHWM on Linux (ru_maxrss there keeps the parent's peak)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]


def _open_one(path: Path) -> dict:
    """Open ``path`` as the viewer and a prediction would; report seconds and peak RSS per stage (child process)."""
    from napari_ivd._widgets._case_layers import prepare_labels
    from napari_ivd.preprocess import ModelInput, network_input

    start_rss = _peak_rss_bytes()
    row: dict = {"start_rss_gb": start_rss / 1e9}
    t0 = time.perf_counter()
    try:
        volume = read_volume(path)
    except IvdError as exc:
        row.update(read_s=time.perf_counter() - t0, read_rss_gb=_peak_rss_bytes() / 1e9, refused=str(exc))
        return row
    nbytes = volume.array.nbytes
    row.update(volume_gb=nbytes / 1e9, read_s=time.perf_counter() - t0, read_rss_gb=_peak_rss_bytes() / 1e9)
    t1 = time.perf_counter()
    shown = image_layer_data(volume)
    labels = prepare_labels(None, volume)
    row.update(layers_s=time.perf_counter() - t1, layers_rss_gb=_peak_rss_bytes() / 1e9)
    t2 = time.perf_counter()
    normalised = network_input(volume, ModelInput(spacing_mm=1.0))  # the bundled models' 1 mm
    row.update(normalise_s=time.perf_counter() - t2, normalise_rss_gb=_peak_rss_bytes() / 1e9)
    row["peak_over_volume"] = (_peak_rss_bytes() - start_rss) / nbytes
    del shown, labels, normalised
    return row


def _large(args: argparse.Namespace) -> None:
    shape = tuple(int(n) for n in args.shape.split("x"))
    dtype = np.dtype(args.dtype)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = {
            "header-2000x2000x1000": (write_header_only(Path(tmp) / "h2000.nii.gz", (2000, 2000, 1000)), "4"),
            "header-10000-cubed": (write_header_only(Path(tmp) / "h10000.nii.gz", (10000,) * 3), None),
        }
        t = time.perf_counter()
        paths["valid-volume"] = (write_large_volume(Path(tmp) / "large.nii.gz", shape, dtype), None)  # type: ignore[arg-type]
        print(f"wrote {args.shape} {dtype.name} in {time.perf_counter() - t:.1f} s")
        print(
            f"{'case':24s} {'file B':>10s} {'vol GB':>7s} {'read s':>7s} {'RSS GB':>7s} {'layers s':>8s} "
            f"{'RSS GB':>7s} {'input s':>7s} {'RSS GB':>7s} {'peak/vol':>8s}"
        )
        for name, (path, limit) in paths.items():
            env = dict(os.environ)
            env.pop(MAX_IMAGE_GB_ENV, None)
            if limit:
                env[MAX_IMAGE_GB_ENV] = limit
            out = subprocess.run(
                [sys.executable, __file__, "--one", str(path)], env=env, capture_output=True, text=True, check=True
            )
            row = {"case": name, "file_bytes": path.stat().st_size, **json.loads(out.stdout.strip().splitlines()[-1])}
            rows.append(row)

            def cell(key: str, width: int, fmt: str = ".2f", row: dict = row) -> str:
                return f"{row[key]:{width}{fmt}}" if key in row else " " * (width - 1) + "-"

            print(
                f"{name:24s} {row['file_bytes']:10d} {cell('volume_gb', 7)} {cell('read_s', 7, '.3f')} "
                f"{cell('read_rss_gb', 7)} {cell('layers_s', 8)} {cell('layers_rss_gb', 7)} "
                f"{cell('normalise_s', 7)} {cell('normalise_rss_gb', 7)} {cell('peak_over_volume', 8)}"
            )
            if "refused" in row:
                print(f"    refused: {row['refused']}")
    print(f"on {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    if args.json:
        args.json.write_text(json.dumps({"python": platform.python_version(), "rows": rows}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    parser.add_argument("--large", action="store_true", help="oversized headers and a large volume instead")
    parser.add_argument("--shape", default="1024x1024x768", help="shape of the large valid volume")
    parser.add_argument("--dtype", default="int16", help="voxel type of the large valid volume")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # child process of --large
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_open_one(args.one)))
        return
    if args.large:
        _large(args)
        return

    not_scans = re.compile(r"mask|disc|label|seg|levels|cord")  # annotations on the same grids
    paths = sorted(p for p in args.data.rglob("*.nii.gz") if not not_scans.search(p.name))
    rows = []
    print(f"{'volume':70s} {'orient':6s} {'shape':>16s} {'read s':>7s} {'layer s':>7s}")
    for path in paths:
        t0 = time.perf_counter()
        volume = read_volume(path)
        t1 = time.perf_counter()
        image_layer_data(volume)
        t2 = time.perf_counter()
        row = {
            "volume": str(path.relative_to(args.data)),
            "orientation": "".join(volume.geometry.axcodes),
            "shape": list(volume.geometry.shape),
            "read_s": round(t1 - t0, 4),
            "layer_s": round(t2 - t1, 4),
        }
        rows.append(row)
        print(
            f"{row['volume'][:70]:70s} {row['orientation']:6s} {'x'.join(map(str, row['shape'])):>16s} "
            f"{row['read_s']:7.3f} {row['layer_s']:7.3f}"
        )
    total = sum(r["read_s"] + r["layer_s"] for r in rows)
    print(f"{len(rows)} volumes, {total:.2f} s in all, on {platform.processor() or platform.machine()}")
    if args.json:
        args.json.write_text(json.dumps({"python": platform.python_version(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
