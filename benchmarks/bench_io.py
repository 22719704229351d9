"""Time to open each real scan in ../shared/data as napari-ivd shows it (read + sagittal view).

    python benchmarks/bench_io.py [--data ../shared/data] [--json out.json]

Prints one row per volume: orientation, shape, seconds to read (decode + checks) and to
build the Image layer data (reorientation + contrast limits). No thresholds: figures only.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from pathlib import Path

from napari_ivd.io import read_volume
from napari_ivd.layer_data import image_layer_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()

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
