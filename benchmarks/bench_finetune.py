"""What one click of Train buys: fine-tune on a handful of corrected cases of one contrast, measure before/after.

    python benchmarks/bench_finetune.py [--base MODEL] [--contrast water] [--cases 5]
                                        [--minutes 5] [--device cpu] [--json out.json]

A researcher corrects ``--cases`` scans of ``--contrast`` (here the reference annotations
play the corrections: they are imported into a fresh store as hand-saved revisions), then
clicks Train: :func:`napari_ivd.training.finetune.finetune_steps` with its defaults and a
``--minutes`` budget, exactly the viewer's run (it holds one of those cases out for its own
validation and early stopping). The figures are measured on OTHER cases of that contrast,
the dev cases of the training split (seed 0), which neither model trained on: distance to
target, identification, FNR/FPR and Dice, before (``--base``) and after (the new version).
Figures only; the issue holds the targets.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_ivd._cli_predict import format_report
from napari_ivd.io.annotations import LabelledPoint
from napari_ivd.model_versions import model_folder
from napari_ivd.models import load_checkpoint, resolve_device
from napari_ivd.progress import Progress
from napari_ivd.store import AnnotationStore
from napari_ivd.training.cases import LabelledCase, load_lumbar_cases, split_cases
from napari_ivd.training.engine import evaluate_cases
from napari_ivd.training.finetune import FineTuneConfig, finetune_steps
from napari_ivd.worklist import run_steps

DATA = Path(__file__).resolve().parents[2] / "shared/data/lumbar"


def _corrections(case: LabelledCase) -> list[LabelledPoint]:
    """The case's reference points, as an annotator would have saved them."""
    return [LabelledPoint(name, tuple(float(v) for v in ijk)) for name, ijk in case.keypoints_vox.items()]


def _store_of(cases: list[LabelledCase], folder: Path) -> AnnotationStore:
    store = AnnotationStore.open(folder / "annotations.zarr", create=True, fsync=False)
    for case in cases:
        store.add_case(case.volume, case.name.replace("/", "-"), points=_corrections(case), mask=case.mask_tss)
    return store


def _summary(report: dict) -> dict:
    k = report["keypoints"]
    return {
        kind: {
            "distance_mm": (k[kind]["dtt_mean_mm"], k[kind]["dtt_sd_mm"]),
            "identification": k[kind]["identification"],
            "fnr": k[kind]["fnr"],
            "fpr": k[kind]["fpr"],
            "dice": report["dice"][kind]["per_structure"],
        }
        for kind in ("disc", "vertebra")
    } | {"error_mm": report["error_mm"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=None, help="model folder or bundled name (default: the starter model)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--contrast", default="water", choices=["T1w", "T2w", "water"])
    parser.add_argument("--cases", type=int, default=5, help="corrected cases to fine-tune on")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    device = resolve_device(args.device)
    base_dir = model_folder(None, args.base)
    base, base_card = load_checkpoint(base_dir, device=device)
    train, dev = split_cases(load_lumbar_cases(args.data), seed=0)
    held_out = [c for c in dev if c.contrast == args.contrast]
    pool = [c for c in train if c.contrast == args.contrast and c.keypoints_vox]
    rng = np.random.default_rng(args.seed)
    corrected = [pool[i] for i in sorted(rng.choice(len(pool), size=min(args.cases, len(pool)), replace=False))]
    seen = set(base_card.get("trained_on", []))
    print(
        f"base {base_dir.name}: saw {sum(c.seen_in(seen) for c in train + dev if c.contrast == args.contrast)} "
        f"{args.contrast} cases in training; torch {torch.__version__}, {platform.machine()}, "
        f"{torch.get_num_threads()} threads, {device}"
    )
    print(f"fine-tune on {len(corrected)} corrected cases: {', '.join(c.name for c in corrected)}")
    print(f"measure on {len(held_out)} held-out cases: {', '.join(c.name for c in held_out)}")
    before = evaluate_cases(base, base_card, held_out, device)
    print("\n== before (base model)\n" + format_report(before))

    with tempfile.TemporaryDirectory() as tmp:
        store = _store_of(corrected, Path(tmp))
        if args.base is not None:
            store.add_model(base_dir, model_id="base")
            store.set_active_model("base", stored=True, reason="benchmark base")
        cfg = FineTuneConfig(minutes=args.minutes, device=args.device, seed=args.seed)
        start = time.perf_counter()

        def show(report: Progress) -> None:
            phase = report.detail
            if phase.name != "training" or phase.epoch.validation is not None:
                print(f"  [{time.perf_counter() - start:6.1f} s] {report.message}", flush=True)

        result = run_steps(finetune_steps(store, cfg), show)
        seconds = time.perf_counter() - start
        tuned, tuned_card = load_checkpoint(model_folder(store, result.model.model_id), device=device)
    after = evaluate_cases(tuned, tuned_card, held_out, device)
    print(f"\nfine-tuning took {seconds / 60:.1f} min ({tuned_card['steps']} steps); {result.reason}")
    print("\n== after (fine-tuned version)\n" + format_report(after))
    b, a = _summary(before), _summary(after)
    print(f"\n{'':18}{'before':>12}{'after':>12}")
    for kind in ("disc", "vertebra"):
        for key in ("distance_mm", "identification", "dice"):
            fmt = (lambda v: "–" if v is None else f"{v:.3f}") if key != "distance_mm" else _mean_sd
            print(f"{kind + ' ' + key:18}{fmt(b[kind][key]):>12}{fmt(a[kind][key]):>12}")
    if args.json:
        payload = {"args": {k: str(v) for k, v in vars(args).items()}, "before": before, "after": after}
        payload |= {"reason": result.reason, "activated": result.activated, "seconds": seconds}
        args.json.write_text(json.dumps(payload, indent=2))


def _mean_sd(value: tuple[float | None, float | None]) -> str:
    mean, sd = value
    return "–" if mean is None else f"{mean:.2f}±{sd:.2f}"


if __name__ == "__main__":
    main()
