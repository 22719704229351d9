"""Accuracy and speed of a model on the held-out dev cases, overall and per contrast.

    python benchmarks/bench_predict.py [--model ivdnet-lumbar] [--data ../shared/data/lumbar]
                                       [--device cpu|cuda] [--json out.json]

The dev cases are the ones `napari-ivd train` held out (same split, same seed); a model
trained on some of them is refused. Prints, per contrast and overall: disc and vertebra
distance to target (mean ± sd, mm), FNR/FPR at 5 mm, identification rate, PCK, Dice per
structure, and prediction latency per volume (model loading excluded). Figures only — the
targets live in the issue, not here.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from napari_ivd._cli_predict import format_report
from napari_ivd.inference import find_model_dir, resolve_device
from napari_ivd.models import load_checkpoint
from napari_ivd.training.cases import load_lumbar_cases, split_cases
from napari_ivd.training.engine import evaluate_cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder or bundled name (default: starter model)")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/lumbar")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    device = resolve_device(args.device)
    t0 = time.perf_counter()
    model, card = load_checkpoint(find_model_dir(args.model), device=device)
    load_s = time.perf_counter() - t0
    seed = card.get("train_config", {}).get("seed", 0)
    _, dev = split_cases(load_lumbar_cases(args.data), seed=seed)
    leaked = sorted({c.name for c in dev} & set(card.get("trained_on", [])))
    if leaked:
        raise SystemExit(f"the model was trained on dev cases {leaked}; pass a model trained with this split")
    evaluate_cases(model, card, dev[:1], device)  # warm-up (first-call allocations), not timed
    print(
        f"model {card['name']} ({card['params']:,} parameters, {card['gflops']:.2f} GFLOPs at 256x256), "
        f"loaded in {load_s:.2f} s on {device}; torch {torch.__version__}, {platform.machine()}, "
        f"{torch.get_num_threads()} threads"
    )
    results = {}
    groups = {"all": dev} | {c: [d for d in dev if d.contrast == c] for c in sorted({d.contrast for d in dev})}
    for name, cases in groups.items():
        report = evaluate_cases(model, card, cases, device)
        results[name] = report
        seconds = np.array(report["predict_seconds"])
        shapes = sorted({"x".join(map(str, c.volume.geometry.shape)) for c in cases})
        print(f"\n== {name}: {len(cases)} cases ({', '.join(c.name for c in cases)}); shapes {', '.join(shapes)}")
        print(format_report(report))
        print(f"latency per volume: mean {seconds.mean():.2f} s, max {seconds.max():.2f} s")
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "load_s": load_s, "results": results}, indent=2))


if __name__ == "__main__":
    main()
