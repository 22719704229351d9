"""Simulated active learning: does picking cases by uncertainty beat picking them at random?

    pip install -e .[benchmarks]        # matplotlib, for the figure
    python benchmarks/bench_active_learning.py [--lumbar ../shared/data/lumbar] [--base MODEL] [--contrast water]
        [--pool-source VB1|VB3|IVD|VB2] [--val-fraction 0.4] [--max-pool N]
        [--start 2] [--k 2] [--rounds 4] [--minutes 2] [--max-epochs N] [--patience N] [--seeds 0 1 2 3 4]
        [--strategies random uncertainty uncertainty+diversity] [--device cpu|cuda] [--workers 1]
        [--work /tmp/napari-ivd-active-learning] [--png FIGURE.png] [--report-only]

**In pieces**: each seed is written to its own file once complete,
``<work>/<key>/seed-<n>.json``, where the key is a hash of every setting that makes seeds
comparable (``active_learning_runs.experiment_settings``: the pool source or contrast, the
base model's weights sha256, the fractions, sizes and budgets, the strategies, cpu or
cuda). Re-issue the same command in each session: the seeds complete for that key are
skipped, a seed killed midway resumes at its last finished round (while the models of its
rounds are still in ``--work``), and the table and plot are built from every seed complete
so far. ``--report-only`` runs nothing and only builds them. Keep ``--work`` somewhere that
lasts (the default is a temporary folder): the README's experiment lives in git, in
``benchmarks/active-learning-vb3`` (its ``base`` model and every complete seed; the
fine-tuned models and half-run seeds are ignored), so a fresh clone rebuilds its table with
``--report-only`` and a session on another machine adds seeds to it.

**Leave one source out** (``--pool-source``, the adaptation benchmark's setting,
``benchmarks/bench_adapt.py``): the pool and the validation set are the cases of one
source the ``--base`` model never saw (e.g. ``bench-adapt-bases/ivdnet-default-no-VB1``);
a fixed ``--val-fraction`` of them (drawn with seed 0, the same for every seed and
strategy) validates, the rest is the pool. Each round fine-tunes the base with the
viewer's own Train (:func:`napari_ivd.training.finetune.finetune_steps` on a store holding
the annotated cases as verified revisions, ``--minutes``, at most ``--max-epochs`` and its
early stopping on a held-out fifth of them, ``--patience`` validations without gain) and
judges every validation case's reference levels as ``bench_adapt.py`` does:
identification (own level within 5 mm) and distance to target per kind. The table gives,
per strategy, the mean ± sd over seeds per number of annotated cases and how many cases
the strategy needs to reach random's final identification and distance. Cases of the pool source the
base trained on (its card's ``trained_on``) are left out of pool and validation, so the
bundled starter can be used on VB1 (it saw only VB1/case-02).

**One contrast** (no ``--pool-source``, the earlier experiment):
the ground truth plays the annotator. The cases of one contrast are split as
``napari-ivd train`` splits them (seed 0): the dev cases are the fixed validation set, the
rest is the pool. Per seed, ``--start`` pool cases drawn at random are "annotated"; then for
each round every strategy picks ``--k`` more from the pool (the uncertainty strategies score
the pool with the model of the previous round, as the plugin would), and a model is
fine-tuned from ``--base`` on every case annotated so far for ``--minutes`` (learning rate
5e-4, one validation at the end) and evaluated on the validation cases. All strategies of a
seed start from the same cases and the same first model. The budget is wall-clock time, so
run it on an otherwise idle machine: a busy CPU trains fewer steps per round.

Writes the learning curves (mean ± sd over seeds per strategy, the base model as a dashed
line, this command in the figure) to ``--png`` (default: ``<work>/<key>/report.png``, so no run
overwrites a figure the README shows unless asked to), and beside it the results with the same
name: ``.csv`` (one row per seed, strategy and round: cases annotated, distance to target
with missed structures charged 20 mm, mean Dice per structure, the cases annotated) and
``.json`` (the rows, the picks, the base model's figures, the settings). The table ends with
the issue's target: the cases each strategy needs until its mean over seeds reaches
random's final figures, as a share of random's cases (target ≤ 70 %), and from how many cases
on it stays there (a noisy early peak is not a saving). The fine-tuned models
stay in ``<work>/<key>/models``.

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
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from active_learning_runs import (
    EXPERIMENT_FILE,
    ROUND_LOGIC,
    experiment_key,
    experiment_settings,
    merge,
    other_experiments,
    plan_seeds,
    progress_path,
    read_progress,
    resumable,
    seed_path,
    seeds_line,
    table,
    write_json_atomic,
)
from bench_adapt import SOURCES, _store_with, score

from napari_ivd.active import (
    STRATEGIES,
    CaseRecord,
    embed_volume,
    points_mid_sagittal_mm,
    rank,
    score_volume_steps,
)
from napari_ivd.metrics import mean_structure_dice
from napari_ivd.model_versions import model_folder
from napari_ivd.models import find_model_dir, load_checkpoint, read_card, resolve_device, usable_cpus
from napari_ivd.training.cases import LabelledCase, load_lumbar_cases, split_cases
from napari_ivd.training.data import SampleConfig
from napari_ivd.training.engine import TrainConfig, evaluate_cases, fit
from napari_ivd.training.finetune import FineTuneConfig, finetune_steps
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
            records.append(CaseRecord.from_score(case.name, "new", scored, embedding))
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


def _judge(model_dir: Path, val: Sequence[LabelledCase], device: torch.device) -> dict[str, Any]:
    """Every validation case's reference levels judged as ``bench_adapt.py`` does (identification, distance)."""
    model, card = load_checkpoint(model_dir, device=device)
    metrics = score(model, card, val, device)
    distances = [metrics[k]["dtt_mean_mm"] for k in ("disc", "vertebra") if metrics.get(k, {}).get("dtt_mean_mm")]
    return {
        "identification": metrics["identification"],
        "error_mm": float(np.mean(distances)) if distances else None,
        "dice": None,
    }


def finetune_config(args: argparse.Namespace, seed: int) -> FineTuneConfig:
    """The viewer's fine-tuning settings for one round: its defaults, the budget and ``--patience`` if given."""
    patience = {} if args.patience is None else {"patience": args.patience}
    return FineTuneConfig(minutes=args.minutes, epochs=args.max_epochs, device=args.device, seed=seed, **patience)


def _fine_tune_viewer(
    annotated: Sequence[LabelledCase],
    val: Sequence[LabelledCase],
    base: Path,
    out: Path,
    args: argparse.Namespace,
    seed: int,
) -> dict[str, Any]:
    """The viewer's Train from ``base`` on a store of the annotated cases (verified); judged on ``val``."""
    keep = out.with_name(out.name + "-store")  # the store; ``out`` becomes a link to the fine-tuned model
    keep.mkdir(parents=True)
    store = _store_with(annotated, keep)
    store.add_model(base, model_id="base")
    store.set_active_model("base", stored=True, reason="active-learning benchmark base")
    result = run_steps(finetune_steps(store, finetune_config(args, seed), author="bench_active_learning"))
    folder = model_folder(store, result.model.model_id)
    out.unlink(missing_ok=True)
    out.symlink_to(folder.resolve())
    return _judge(folder, val, resolve_device(args.device))


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
    for left in (out, out.with_name(out.name + "-store")):  # what a killed run left of this round
        if left.is_symlink() or left.is_file():
            left.unlink()
        elif left.is_dir():
            shutil.rmtree(left)
    started = time.perf_counter()
    if args.pool_source:
        validation = _fine_tune_viewer(annotated, val, base, out, args, seed)
    else:
        validation = _fine_tune(annotated, val, base, out, args, seed)
        validation = {**validation, "dice": mean_structure_dice(validation["dice"]), "identification": None}
    row = {
        "seed": seed,
        "strategy": strategy,
        "round": round_,
        "n_annotated": len(annotated),
        "error_mm": validation["error_mm"],
        "identification": validation["identification"],
        "dice": validation["dice"],
        "scoring_s": round(scoring_s, 1),
        "training_s": round(time.perf_counter() - started, 1),
        "annotated": " ".join(c.name for c in annotated),
    }
    print(f"seed {seed} {strategy:22s} round {round_}: {row['n_annotated']:2d} cases, {_figures(row)}", flush=True)
    return row


def _figures(row: dict[str, Any]) -> str:
    """A row's figures in words."""
    shown = [f"distance {row['error_mm']:.2f} mm" if row["error_mm"] is not None else "distance –"]
    if row.get("identification") is not None:
        shown.append(f"identification {100 * row['identification']:.1f} %")
    if row.get("dice") is not None:
        shown.append(f"Dice {row['dice']:.3f}")
    if "training_s" in row:
        shown.append(f"(scoring {row['scoring_s']:.0f} s, training {row['training_s']:.0f} s)")
    return ", ".join(shown)


def _cases(args: argparse.Namespace) -> tuple[list[LabelledCase], list[LabelledCase], Path]:
    """The pool, the fixed validation cases and the base model's folder, as the options choose them."""
    base = find_model_dir(args.base)
    cases = [c for c in load_lumbar_cases(args.lumbar) if c.keypoints_vox]
    if args.contrast:
        cases = [c for c in cases if c.contrast == args.contrast]
    if not args.pool_source:
        rest, val = split_cases(cases, seed=0)
        return sorted(rest, key=lambda c: c.name)[: args.max_pool], val, base
    cases = sorted((c for c in cases if c.name.split("/")[0] == args.pool_source), key=lambda c: c.name)
    seen = set(read_card(base).get("trained_on", []))
    if any(c.seen_in(seen) for c in cases):
        dropped = sorted(c.name for c in cases if c.seen_in(seen))
        print(f"{base} trained on {len(dropped)} {args.pool_source} cases, left out of pool and validation: {dropped}")
        cases = [c for c in cases if not c.seen_in(seen)]
    order = np.random.default_rng(0).permutation(len(cases))
    n_val = max(1, round(args.val_fraction * len(cases)))
    val = [cases[i] for i in sorted(order[:n_val])]
    pool = [cases[i] for i in sorted(order[n_val:])][: args.max_pool]
    if len(pool) < args.start + args.k * args.rounds:
        raise SystemExit(f"{args.pool_source}: {len(pool)} pool cases, fewer than --start + --k x --rounds")
    return pool, val, base


def _settings(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    """The experiment's settings (what makes seeds comparable) from the options and the base model's card."""
    return experiment_settings(
        pool_source=args.pool_source,
        contrast=args.contrast,
        base_sha256=str(read_card(base).get("weights_sha256", "")),
        val_fraction=args.val_fraction,
        start=args.start,
        k=args.k,
        rounds=args.rounds,
        minutes=args.minutes,
        max_epochs=args.max_epochs,
        strategies=args.strategies,
        max_pool=args.max_pool,
        device=resolve_device(args.device).type,
        patience=args.patience,
        round_logic=args.round_logic,
    )


def _read_experiment(path: Path) -> dict[str, Any]:
    """The experiment file, or a clear exit when it cannot be read."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SystemExit(
            f"{path} is unreadable ({type(exc).__name__}); delete it and run again (the seed files stay valid)"
        ) from None


def _experiment(
    args: argparse.Namespace,
    folder: Path,
    key: str,
    settings: dict[str, Any],
    cases: tuple[list[LabelledCase], list[LabelledCase], Path],
    device: torch.device,
) -> dict[str, Any]:
    """The experiment's fixed part (cases, base model's figures): read from ``folder``, or measured and written once."""
    pool, val, base = cases
    names = {"validation": [c.name for c in val], "pool": [c.name for c in pool]}
    what = args.pool_source or args.contrast
    print(f"{what}: pool {len(pool)} cases, validation {len(val)}: {', '.join(names['validation'])}; base {base}")
    path = folder / EXPERIMENT_FILE
    if path.exists():
        experiment = _read_experiment(path)
        changed = [name for name in names if experiment.get(name) != names[name]]
        if changed:
            raise SystemExit(
                f"{path}: the {' and '.join(changed)} cases differ from those of the seeds run before "
                f"(the data under --lumbar changed); use another --work, or move {folder} away to start over"
            )
        print(f"base model: {_figures(experiment['base'])} (judged earlier)")
        return experiment
    if args.pool_source:
        base_row = _judge(base, val, device)
    else:
        base_model, base_card = load_checkpoint(base, device=device)
        base_validation = evaluate_cases(base_model, base_card, val, device)
        base_row = {
            "error_mm": base_validation["error_mm"],
            "dice": mean_structure_dice(base_validation["dice"]),
            "identification": None,
        }
    print(f"base model: {_figures(base_row)}")
    experiment = {
        "key": key,
        "settings": settings,
        "command": args.command,
        **names,
        "base": {"model": str(base), **base_row},
    }
    write_json_atomic(path, experiment)
    return experiment


def _commit() -> str | None:
    """The checkout's commit, to tell later which code ran a seed (``None`` outside a git checkout)."""
    try:
        done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    except OSError:
        return None
    return done.stdout.strip() or None


def run_seed(
    seed: int,
    cases: tuple[list[LabelledCase], list[LabelledCase], Path],
    device: torch.device,
    args: argparse.Namespace,
    folder: Path,
    key: str,
) -> None:
    """One seed, every strategy, written to its file once complete (the half-run record then goes).

    Resumes at the last round an earlier, killed run finished.
    """
    pool_all, val, base = cases
    by_name = {c.name: c for c in pool_all}
    models = folder / "models" / f"seed-{seed}"
    progress = progress_path(folder, seed)
    steps = resumable(read_progress(progress, key, seed), lambda s: (folder / s["model"] / "card.json").is_file())
    finished = {(s["strategy"], s["round"]): s for s in steps}

    def step(strategy: str, round_: int, annotated: list[LabelledCase], pick_from: Path | None) -> dict[str, Any]:
        """A round: finished earlier (its picks and row), or picked with ``pick_from``'s model and trained now."""
        out = models / (f"{strategy}-round{round_}" if round_ else "start")
        if (strategy, round_) in finished:
            done = finished[(strategy, round_)]
            annotated += [by_name[name] for name in done["picked"]]
            print(f"seed {seed} {strategy:22s} round {round_}: done earlier, resumed ({_figures(done['row'])})")
            return done
        chosen, scoring_s = [], 0.0
        if pick_from is not None:
            pool = [c for c in pool_all if c not in annotated]
            chosen, scoring_s = _pick(strategy, pool, annotated, pick_from, device, args.k, seed * 100 + round_)
        annotated += chosen
        row = _train_round(seed, strategy, round_, annotated, val, base, out, args, scoring_s)
        done = {"strategy": strategy, "round": round_, "picked": [c.name for c in chosen], "row": row}
        steps.append(done | {"model": str(out.relative_to(folder))})
        write_json_atomic(progress, {"key": key, "seed": seed, "steps": steps})
        return done

    rng = np.random.default_rng(seed)
    start = [pool_all[i] for i in sorted(rng.choice(len(pool_all), args.start, replace=False))]
    first = step("start", 0, list(start), None)  # shared by every strategy
    rows, picks = [], []
    for strategy in args.strategies:
        rows.append({**first["row"], "strategy": strategy})
        annotated, model_dir = list(start), models / "start"
        for round_ in range(1, args.rounds + 1):
            done = step(strategy, round_, annotated, model_dir)
            picks.append({"seed": seed, "strategy": strategy, "round": round_, "picked": done["picked"]})
            rows.append(done["row"])
            model_dir = models / f"{strategy}-round{round_}"
    result = {
        "key": key,
        "seed": seed,
        "rows": rows,
        "picks": picks,
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "commit": _commit(),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    write_json_atomic(seed_path(folder, seed), result)
    progress.unlink(missing_ok=True)
    print(f"seed {seed}: complete, wrote {seed_path(folder, seed)}", flush=True)


def run(args: argparse.Namespace, folder: Path, key: str, settings: dict[str, Any], seeds: Sequence[int]) -> None:
    """Run ``seeds`` of the experiment, each written to its own file in ``folder`` once it is complete.

    With ``--workers`` above 1 the seeds run that many at a time, each in its own process with
    its share of the cores as torch threads (the budget is wall-clock time, so a seed's
    threads shape its rounds; each seed file records them).
    """
    device = resolve_device(args.device)
    cases = _cases(args)
    _experiment(args, folder, key, settings, cases, device)
    if args.workers == 1:
        for seed in seeds:
            run_seed(seed, cases, device, args, folder, key)
        return
    threads = max(1, usable_cpus() // args.workers)
    each = partial(_seed_in_own_process, args=args, folder=folder, key=key, threads=threads)
    with ProcessPoolExecutor(args.workers, mp_context=torch.multiprocessing.get_context("spawn")) as pool:
        list(pool.map(each, seeds))


def _seed_in_own_process(seed: int, args: argparse.Namespace, folder: Path, key: str, threads: int) -> None:
    """One seed of ``--workers``: its own torch threads, cases and device."""
    torch.set_num_threads(threads)
    run_seed(seed, _cases(args), resolve_device(args.device), args, folder, key)


def report(args: argparse.Namespace, folder: Path, key: str, settings: dict[str, Any]) -> None:
    """Table (stdout), ``.csv``, ``.json`` and plot from the seeds of the experiment finished so far."""
    path = folder / EXPERIMENT_FILE
    if not path.exists():
        others = other_experiments(args.work, key, settings)
        raise SystemExit(
            f"no seed of experiment {key} has run yet ({path} is missing): run without --report-only"
            + "".join(f"\n  other experiment in {args.work}: {line}" for line in others)
        )
    experiment = _read_experiment(path)
    _, done, problems = plan_seeds(folder, args.seeds, key)
    for problem in problems:
        print(problem)
    if not done:
        raise SystemExit(
            f"no seed of {' '.join(map(str, args.seeds))} finished yet in {folder}: run without --report-only"
        )
    results = merge(experiment, list(done.values())) | {"command": args.command}  # the figure's own command
    args.png.parent.mkdir(parents=True, exist_ok=True)
    args.png.with_suffix(".json").write_text(json.dumps(results, indent=2))
    with open(args.png.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(results["rows"][0]))
        writer.writeheader()
        writer.writerows(results["rows"])
    plot(results, args.png)
    print(f"\nexperiment {key}: {seeds_line(results['seeds'], args.seeds)}\n")
    print(table(results))
    print(f"\nwrote {args.png} and its .csv and .json")


def plot(results: dict[str, Any], png: Path) -> None:
    """Learning curves: distance to target and Dice vs cases annotated, mean ± sd over seeds per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    if results.get("pool_source"):
        panels = (("identification", "identification (own level within 5 mm)"), ("error_mm", "distance to target (mm)"))
    else:
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
        if results["base"].get(key) is not None:
            axis.axhline(results["base"][key], color="grey", linestyle="--", label="base model")
        axis.set_xlabel("cases annotated")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    n_val = len(results["validation"])
    what = f"left-out {results['pool_source']}" if results.get("pool_source") else results["contrast"]
    figure.suptitle(f"Simulated active learning on {what} cases ({n_val} fixed validation cases)")
    command = textwrap.fill(results["command"], width=190, break_on_hyphens=False)
    figure.text(0.01, 0.01, command, fontsize=6, family="monospace")
    figure.tight_layout(rect=(0, 0.04 + 0.02 * command.count("\n"), 1, 0.95))
    figure.savefig(png, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lumbar", type=Path, default=REPO.parent / "shared/data/lumbar")
    parser.add_argument("--base", help="model folder or bundled name to fine-tune from (default: the starter)")
    parser.add_argument(
        "--contrast", choices=["T1w", "T2w", "water"], help="default: water; every contrast of --pool-source"
    )
    parser.add_argument(
        "--pool-source", choices=SOURCES, help="leave this source out: its cases are pool and validation"
    )
    parser.add_argument("--val-fraction", type=float, default=0.4, help="share of --pool-source's cases that validates")
    parser.add_argument("--max-pool", type=int, help="use only the first N pool cases (quick checks)")
    parser.add_argument("--max-epochs", type=int, default=80, help="epoch cap of each viewer fine-tune (--pool-source)")
    parser.add_argument("--start", type=int, default=2, help="cases annotated before the first pick")
    parser.add_argument("--k", type=int, default=2, help="cases picked per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=2.0, help="fine-tuning budget per round")
    parser.add_argument(
        "--patience",
        type=int,
        help="validations without improvement before a viewer fine-tune stops (default: the viewer's "
        f"{FineTuneConfig.patience}); a large value trains every round for its whole budget",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--workers", type=int, default=1, help="seeds run at once, each in its own process with its share of the cores"
    )
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "napari-ivd-active-learning")
    parser.add_argument("--png", type=Path, help="where the figure goes (default: <work>/<key>/report.png)")
    parser.add_argument(
        "--report-only", action="store_true", help="run nothing: table and plot from the seeds finished so far"
    )
    parser.add_argument(
        "--round-logic",
        type=int,
        help=f"with --report-only: the seeds of an earlier round logic (today's: {ROUND_LOGIC}; its code is gone)",
    )
    args = parser.parse_args()
    if args.round_logic not in (None, ROUND_LOGIC) and not args.report_only:
        parser.error(
            f"--round-logic {args.round_logic} can only be reported (--report-only): seeds run today use {ROUND_LOGIC}"
        )
    if not args.pool_source and not args.contrast:
        args.contrast = "water"
    shown = [a for a in sys.argv[1:] if a != "--report-only"]
    args.command = "python benchmarks/bench_active_learning.py " + " ".join(shlex.quote(a) for a in shown)
    settings = _settings(args, find_model_dir(args.base))
    key = experiment_key(settings)
    folder = args.work / key
    args.png = args.png or folder / "report.png"
    print(f"experiment {key}: {folder}")
    if not args.report_only:
        todo, done, problems = plan_seeds(folder, args.seeds, key)
        for seed in done:
            print(f"seed {seed}: done earlier ({seed_path(folder, seed)}), skipped")
        for problem in problems:
            print(problem)
        if todo:
            run(args, folder, key, settings, todo)
    report(args, folder, key, settings)


if __name__ == "__main__":
    main()
