"""Simulated active learning: does picking cases by uncertainty beat picking them at random?

    pip install -e .[benchmarks]        # matplotlib, for the figure
    python benchmarks/bench_active_learning.py [--lumbar ../shared/data/lumbar] [--base MODEL] [--contrast water]
        [--start 2] [--k 2] [--rounds 4] [--minutes 2] [--seeds 0 1 2]
        [--strategies random uncertainty uncertainty+diversity] [--device cpu]
        [--work /tmp/napari-ivd-active-learning] [--png docs/active-learning.png]

The ground truth plays the annotator. The cases of one contrast are split as
``napari-ivd train`` splits them (seed 0): the dev cases are the fixed validation set, the
rest is the pool. Per seed, ``--start`` pool cases drawn at random are "annotated"; then for
each round every strategy picks ``--k`` more from the pool (the uncertainty strategies score
the pool with the model of the previous round, as the plugin would), and a model is
fine-tuned from ``--base`` on every case annotated so far for ``--minutes`` (learning rate
5e-4, one validation at the end) and evaluated on the validation cases. All strategies of a
seed start from the same cases and the same first model. The budget is wall-clock time, so
run it on an otherwise idle machine: a busy CPU trains fewer steps per round.

Writes the learning curves (mean ± sd over seeds per strategy, the base model as a dashed
line, this command in the figure) to ``--png``, and beside it the results with the same
name: ``.csv`` (one row per seed, strategy and round: cases annotated, distance to target
with missed structures charged 20 mm, mean Dice per structure, the cases annotated) and
``.json`` (the rows, the picks, the base model's figures). The fine-tuned models stay in
``--work``.

The bundled starter was trained on most of the water pool, so fine-tuning it on the pool
teaches it little; pass ``--base`` a model that has not seen the contrast (e.g. one from
``napari-ivd train --lumbar ../shared/data/lumbar --contrasts T1w T2w``) to measure
adaptation to a new contrast.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_ivd.active import (
    STRATEGIES,
    CaseRecord,
    embed_volume,
    points_mid_sagittal_mm,
    rank,
    score_volume_steps,
)
from napari_ivd.inference import find_model_dir, resolve_device
from napari_ivd.metrics import mean_structure_dice
from napari_ivd.models import load_checkpoint
from napari_ivd.training.cases import LabelledCase, load_lumbar_cases, split_cases
from napari_ivd.training.data import SampleConfig
from napari_ivd.training.engine import TrainConfig, evaluate_cases, fit
from napari_ivd.worklist import run_steps

REPO = Path(__file__).resolve().parents[1]
LEARNING_RATE = 5e-4


def _pick(
    strategy: str,
    pool: Sequence[LabelledCase],
    annotated: Sequence[LabelledCase],
    model_dir: Path,
    device: torch.device,
    k: int,
    seed: int,
) -> tuple[list[LabelledCase], float]:
    """The ``k`` pool cases the strategy picks with the model in ``model_dir``, and the seconds spent scoring."""
    start = time.perf_counter()
    records = [CaseRecord(c.name) for c in pool]
    if strategy != "random":
        model, card = load_checkpoint(model_dir, device=device)
        records = []
        for case in pool:
            scored = run_steps(score_volume_steps(case.volume, model, card, device))
            embedding = embed_volume(case.volume, model, card, device, scored.mid_sagittal_mm)
            records.append(CaseRecord(case.name, "new", scored.score, scored.reason, embedding))
        if strategy == "uncertainty+diversity":
            for case in annotated:
                mid_mm = points_mid_sagittal_mm(case.volume.view, np.array(list(case.keypoints_vox.values())))
                records.append(
                    CaseRecord(case.name, "verified", embedding=embed_volume(case.volume, model, card, device, mid_mm))
                )
    by_name = {c.name: c for c in pool}
    chosen = [by_name[row.case_id] for row in rank(records, strategy, seed)[:k]]
    return chosen, time.perf_counter() - start


def _fine_tune(
    annotated: Sequence[LabelledCase],
    val: Sequence[LabelledCase],
    base: Path,
    out: Path,
    args: argparse.Namespace,
    seed: int,
) -> dict[str, Any]:
    """Fine-tune ``base`` on ``annotated`` for the budget; returns the final validation figures."""
    cfg = TrainConfig(
        minutes=args.minutes,
        lr=LEARNING_RATE,
        validate_every_min=args.minutes + 1.0,  # one validation, when the budget is spent
        device=args.device,
        seed=seed,
    )
    card = run_steps(fit(cfg, SampleConfig(), annotated, val, out, init_from=base))
    if card is None:
        raise SystemExit(f"{out}: fine-tuning saved nothing (no validation ran)")
    return card["metrics"]["validation"]


def _train_round(
    seed: int,
    strategy: str,
    round_: int,
    annotated: Sequence[LabelledCase],
    val: Sequence[LabelledCase],
    base: Path,
    out: Path,
    args: argparse.Namespace,
    scoring_s: float,
) -> dict[str, Any]:
    """Fine-tune on the cases annotated so far, evaluate, print and return the round's row."""
    started = time.perf_counter()
    validation = _fine_tune(annotated, val, base, out, args, seed)
    row = {
        "seed": seed,
        "strategy": strategy,
        "round": round_,
        "n_annotated": len(annotated),
        "error_mm": validation["error_mm"],
        "dice": mean_structure_dice(validation["dice"]),
        "scoring_s": round(scoring_s, 1),
        "training_s": round(time.perf_counter() - started, 1),
        "annotated": " ".join(c.name for c in annotated),
    }
    print(
        f"seed {seed} {strategy:22s} round {round_}: {row['n_annotated']:2d} cases, error {row['error_mm']:.2f} mm, "
        f"Dice {row['dice']:.3f}  (scoring {row['scoring_s']:.0f} s, training {row['training_s']:.0f} s)",
        flush=True,
    )
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole experiment; returns what the ``.json`` holds."""
    device = resolve_device(args.device)
    base = find_model_dir(args.base)
    cases = [c for c in load_lumbar_cases(args.lumbar) if c.contrast == args.contrast and c.keypoints_vox]
    rest, val = split_cases(cases, seed=0)
    pool_all = sorted(rest, key=lambda c: c.name)
    print(f"{args.contrast}: pool {len(pool_all)} cases, validation {', '.join(c.name for c in val)}; base {base}")
    base_model, base_card = load_checkpoint(base, device=device)
    base_validation = evaluate_cases(base_model, base_card, val, device)
    base_row = {"error_mm": base_validation["error_mm"], "dice": mean_structure_dice(base_validation["dice"])}
    print(f"base model: error {base_row['error_mm']:.2f} mm, Dice {base_row['dice']}")

    rows, picks = [], []
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        start = [pool_all[i] for i in sorted(rng.choice(len(pool_all), args.start, replace=False))]
        first_dir = args.work / f"seed{seed}-start"
        first = _train_round(seed, "start", 0, start, val, base, first_dir, args, 0.0)  # shared by every strategy
        for strategy in args.strategies:
            rows.append({**first, "strategy": strategy})
            annotated, model_dir = list(start), first_dir
            for round_ in range(1, args.rounds + 1):
                pool = [c for c in pool_all if c not in annotated]
                chosen, scoring_s = _pick(strategy, pool, annotated, model_dir, device, args.k, seed * 100 + round_)
                annotated += chosen
                picks.append({"seed": seed, "strategy": strategy, "round": round_, "picked": [c.name for c in chosen]})
                model_dir = args.work / f"seed{seed}-{strategy}-round{round_}"
                rows.append(_train_round(seed, strategy, round_, annotated, val, base, model_dir, args, scoring_s))
    return {
        "command": args.command,
        "contrast": args.contrast,
        "validation": [c.name for c in val],
        "base": {"model": str(base), **base_row},
        "rows": rows,
        "picks": picks,
        "device": str(device),
        "torch": torch.__version__,
    }


def plot(results: dict[str, Any], png: Path) -> None:
    """Learning curves: distance to target and Dice vs cases annotated, mean ± sd over seeds per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    panels = (("error_mm", "distance to target (mm; missed = 20 mm)"), ("dice", "Dice per structure"))
    strategies = list(dict.fromkeys(r["strategy"] for r in results["rows"]))
    for axis, (key, label) in zip(axes, panels, strict=True):
        for strategy in strategies:
            rows = [r for r in results["rows"] if r["strategy"] == strategy and r[key] is not None]
            sizes = sorted({r["n_annotated"] for r in rows})
            values = [[r[key] for r in rows if r["n_annotated"] == n] for n in sizes]
            mean = np.array([np.mean(v) for v in values])
            sd = np.array([np.std(v) for v in values])
            axis.plot(sizes, mean, marker="o", label=f"{strategy} ({len(values[0])} seeds)")
            axis.fill_between(sizes, mean - sd, mean + sd, alpha=0.2)
        if results["base"][key] is not None:
            axis.axhline(results["base"][key], color="grey", linestyle="--", label="base model")
        axis.set_xlabel("cases annotated")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    n_val = len(results["validation"])
    figure.suptitle(f"Simulated active learning on {results['contrast']} cases ({n_val} fixed validation cases)")
    figure.text(0.01, 0.01, results["command"], fontsize=6, family="monospace")
    figure.tight_layout(rect=(0, 0.04, 1, 0.95))
    figure.savefig(png, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lumbar", type=Path, default=REPO.parent / "shared/data/lumbar")
    parser.add_argument("--base", help="model folder or bundled name to fine-tune from (default: the starter)")
    parser.add_argument("--contrast", default="water", choices=["T1w", "T2w", "water"])
    parser.add_argument("--start", type=int, default=2, help="cases annotated before the first pick")
    parser.add_argument("--k", type=int, default=2, help="cases picked per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=2.0, help="fine-tuning budget per round")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "napari-ivd-active-learning")
    parser.add_argument("--png", type=Path, default=REPO / "docs/active-learning.png")
    args = parser.parse_args()
    args.command = "python benchmarks/bench_active_learning.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    results = run(args)
    args.png.parent.mkdir(parents=True, exist_ok=True)
    args.png.with_suffix(".json").write_text(json.dumps(results, indent=2))
    with open(args.png.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(results["rows"][0]))
        writer.writeheader()
        writer.writerows(results["rows"])
    plot(results, args.png)
    print(f"wrote {args.png} and its .csv and .json")


if __name__ == "__main__":
    main()
