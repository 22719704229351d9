"""Adaptation to a source no model here has seen: leave one source out, fine-tune on k of its corrected cases.

    python benchmarks/bench_adapt.py [--sources IVD VB1 VB2 VB3] [--ks 0 1 2 4 8] [--seeds 0 1]
                                     [--bases DIR] [--base-minutes 20] [--minutes 5] [--max-epochs 80]
                                     [--names-unsure VB1/case-16] [--device cpu] [--workers 1] [--out docs/adapt]

For each left-out source of ``../shared/data/lumbar`` (IVD T2w, VB1 T1w, VB2 T2w, VB3 water):

1. **Base**: a model trained from scratch on every case of the *other* sources (their
   train/dev split, seed 0; labels: every level those cases annotate). Kept in ``--bases``
   and reused when present.
2. **Corrected cases**: per seed, the source's cases in a random order; the first k
   (k = 0, 1, 2, 4, 8, as many as leave at least one case to score) are the researcher's
   corrections, imported as verified revisions into a fresh store, and the cases after the
   largest usable k are scored, the same ones for every k of that seed — except another
   series of a corrected case's exam (VB1's case-10 and case-11), which would be scored on
   an image of what the model just learnt.
3. **Fine-tuned**: the viewer's Train on that store
   (:func:`napari_ivd.training.finetune.finetune_steps`, its defaults: 5-minute budget, its
   own held-out case and early stopping), starting from the base. ``--max-epochs`` caps the
   epochs at what 2 CPU cores reach in those 5 minutes, so a run on a GPU gets the same
   budget as the button on a laptop. The store also holds the scored cases' images, without
   annotations, as a lab's store holds the scans still to correct: Train compares the new
   version's names with its parent's on them before making it active
   (:mod:`napari_ivd.training.promotion`); the table counts the runs it activated. Scores
   do not depend on it: every fine-tuned version is scored, active or not.
   ``--names-unsure`` marks the named cases "level names unsure" in every store that holds
   them (corrected: they teach masks only; waiting: no comparison on them), to measure what
   the mark does when a case's level count is in doubt.
4. **From scratch**: the same k cases, the same held-out split, labels and budget, from
   random weights (the engine's from-scratch learning rate and warm-up).

Every reference level of a scored case is judged, including levels the model does not
know (they count as missed): identification (own level within 5 mm) and distance to
target per kind, FPR; and identification of the levels the model can name (those among its
labels), since a base that never saw a source may lack some of its levels. Prints a table,
writes ``<out>.json`` (every run) and ``<out>.png`` (identification and disc distance
against k, mean ± sd over seeds). Figures only; the issue holds the targets.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_ivd.errors import IvdError
from napari_ivd.io.annotations import LabelledPoint
from napari_ivd.model_versions import model_folder
from napari_ivd.models import load_checkpoint, read_card, resolve_device, usable_cpus
from napari_ivd.store import AnnotationStore
from napari_ivd.training.cases import LabelledCase, labels_of, load_lumbar_cases, split_cases
from napari_ivd.training.data import AUGMENTATIONS, SampleConfig, with_augmentation
from napari_ivd.training.engine import TrainConfig, evaluate_cases, fit
from napari_ivd.training.finetune import FineTuneConfig, finetune_steps, parent_sample_config
from napari_ivd.training.store_cases import load_planned_cases, plan_training
from napari_ivd.worklist import run_steps

DATA = Path(__file__).resolve().parents[2] / "shared/data/lumbar"
SOURCES = ("IVD", "VB1", "VB2", "VB3")


@dataclass(frozen=True)
class Settings:
    """What every worker needs to know (plain values: it crosses process boundaries)."""

    data: Path
    bases: Path
    device: str
    threads: int
    base_minutes: float
    minutes: float
    max_epochs: int
    start_before: float | None = None  # time.time() after which runs are not started any more
    base: str | None = None  # a given model (bundled name or folder) instead of trained bases
    names_unsure: tuple[str, ...] = ()  # cases marked "level names unsure" wherever a store holds them
    patience: int = FineTuneConfig.patience  # stale validations before a fine-tune stops


@dataclass(frozen=True)
class Job:
    """One fine-tuning (or from-scratch) run: a source, a seed's case order, k corrected cases."""

    recipe: str
    source: str
    seed: int
    k: int
    mode: str  # "base" (k = 0), "fine-tuned" or "scratch"
    corrected: tuple[str, ...]
    scored: tuple[str, ...]


@cache
def _cases(data: Path) -> dict[str, LabelledCase]:
    """Every labelled case under ``data``, read once per process."""
    return {c.name: c for c in load_lumbar_cases(data) if c.keypoints_vox}


def _source(case_name: str) -> str:
    return case_name.split("/")[0]


def _setup(settings: Settings) -> None:
    torch.set_num_threads(settings.threads)


def sample_config(recipe: str, labels: Sequence[str]) -> SampleConfig:
    """Training samples of an augmentation recipe (:data:`napari_ivd.training.data.AUGMENTATIONS`)."""
    return with_augmentation(SampleConfig(labels=tuple(labels)), recipe)


def base_dir(settings: Settings, recipe: str, source: str) -> Path:
    """Where the base without ``source`` is kept (the ``--base`` model when one is given)."""
    if settings.base is not None:
        return model_folder(None, settings.base)
    return settings.bases / f"ivdnet-{recipe}-no-{source}"


def train_base(settings: Settings, recipe: str, source: str) -> dict[str, Any]:
    """Train (or reuse) the base model on every case of the other sources."""
    _setup(settings)
    out = base_dir(settings, recipe, source)
    if settings.base is not None or (out / "card.json").is_file():
        return {"recipe": recipe, "source": source, "reused": str(out)}
    others = [c for name, c in _cases(settings.data).items() if _source(name) != source]
    train, dev = split_cases(others, seed=0)
    cfg = TrainConfig(
        model="ivdnet",
        minutes=settings.base_minutes,
        validate_every_min=settings.base_minutes / 6,
        device=settings.device,
        seed=0,
    )
    start = time.perf_counter()
    extra = {"left_out": source, "recipe": recipe}
    saved = run_steps(fit(cfg, sample_config(recipe, labels_of(train)), train, dev, out, card_extra=extra))
    if saved is None:
        raise RuntimeError(f"base without {source}: no validation ran within {settings.base_minutes} min")
    seconds = round(time.perf_counter() - start, 1)
    return {"recipe": recipe, "source": source, "seconds": seconds, "steps": saved["steps"]}


def plan_jobs(
    cases: Sequence[str],
    source: str,
    ks: Sequence[int],
    seeds: Sequence[int],
    recipe: str,
    seen: Iterable[str] = (),
    same_session: Mapping[str, Sequence[str]] | None = None,
) -> list[Job]:
    """The runs of one source: per seed a random case order, nested corrected sets, one scored set.

    A case the base trained on (``seen``) may be corrected but is never scored, nor is a case
    whose other series of the same exam (``same_session``) is corrected at some k.

    Raises
    ------
    SystemExit
        A seed leaves no case to score (its rows would read 0 %); the message names the seeds that do.
    """
    names = sorted(cases)
    usable = [k for k in ks if k <= len(names) - 1]
    seen, same_session = set(seen), same_session or {}
    jobs = []
    for seed in seeds:
        order, scored = _draw(names, seed, max(usable), seen, same_session)
        if not scored:
            scoring = [s for s in range(20) if _draw(names, s, max(usable), seen, same_session)[1]]
            raise SystemExit(
                f"{source} seed {seed}: no case left to score after correcting {', '.join(order[: max(usable)])} "
                f"(the rest the base saw or share an exam with them); seeds below 20 that score a {source} "
                f"case: {' '.join(map(str, scoring)) or 'none (use a smaller largest k)'}"
            )
        for k in usable:
            corrected = tuple(order[:k])
            modes = ("base",) if k == 0 else ("fine-tuned", "scratch")
            jobs += [Job(recipe, source, seed, k, mode, corrected, scored) for mode in modes]
    return jobs


def _draw(
    names: Sequence[str], seed: int, k: int, seen: Iterable[str], same_session: Mapping[str, Sequence[str]]
) -> tuple[list[str], tuple[str, ...]]:
    """A seed's case order and the cases it scores once the first ``k`` are corrected."""
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    twins = {twin for name in order[:k] for twin in same_session.get(name, ())}
    return order, tuple(sorted(set(order[k:]) - set(seen) - twins))


def store_case_id(name: str) -> str:
    """The store's id of a data case (``VB1/case-16`` -> ``VB1-case-16``)."""
    return name.replace("/", "-")


def _store_with(
    cases: Sequence[LabelledCase],
    folder: Path,
    waiting: Sequence[LabelledCase] = (),
    names_unsure: Collection[str] = (),
) -> AnnotationStore:
    """A fresh store holding ``cases`` with their references as verified revisions, and ``waiting``'s images only.

    The cases named in ``names_unsure`` are marked "level names unsure" (masks only, never judge).
    """
    store = AnnotationStore.open(folder / "annotations.zarr", create=True, fsync=False)
    for case in cases:
        points = [LabelledPoint(n, tuple(float(v) for v in ijk)) for n, ijk in case.keypoints_vox.items()]
        case_id = store_case_id(case.name)
        store.add_case(case.volume, case_id, points=points, mask=case.mask_tss, author="reference")
        store.set_status(case_id, "verified")
    for case in waiting:
        store.add_case(case.volume, store_case_id(case.name))
    for case in (*cases, *waiting):
        if case.name in names_unsure:
            store.set_names_unsure(store_case_id(case.name))
    return store


def score(model: torch.nn.Module, card: dict[str, Any], cases: Sequence[LabelledCase], device: torch.device) -> dict:
    """Identification, distance and FPR per kind, and identification overall, from the engine's validation.

    :func:`~napari_ivd.training.engine.evaluate_cases` judges every reference level, also one the
    model cannot name (it counts as missed). ``identification_nameable`` is the share
    identified of the levels among the model's labels: a base that never saw VB1 has no T10,
    T10-T11 or S1, so 12 of VB1's 94 levels are out of its reach whatever it learns.
    """
    summary = evaluate_cases(model, card, cases, device)["keypoints"]
    annotated = sum(figures["n_annotated"] for figures in summary.values())
    identified = sum(figures["n_annotated"] * (figures["identification"] or 0.0) for figures in summary.values())
    unnameable = sum(level not in card["labels"] for case in cases for level in case.keypoints_vox)
    return {
        kind: {k: figures[k] for k in ("n_annotated", "dtt_mean_mm", "dtt_sd_mm", "identification", "fpr")}
        for kind, figures in summary.items()
    } | {
        "identification": identified / max(1, annotated),
        "identification_nameable": identified / max(1, annotated - unnameable),
    }


def _finetune_config(settings: Settings, seed: int) -> FineTuneConfig:
    """The viewer's Train settings with this benchmark's budget, epoch cap and patience."""
    return FineTuneConfig(
        minutes=settings.minutes,
        epochs=settings.max_epochs,
        patience=settings.patience,
        device=settings.device,
        seed=seed,
    )


def _finetune(job: Job, settings: Settings, store: AnnotationStore) -> tuple[Path, dict[str, Any]]:
    store.add_model(base_dir(settings, job.recipe, job.source), model_id="base")
    store.set_active_model("base", stored=True, reason="benchmark base")
    result = run_steps(finetune_steps(store, _finetune_config(settings, job.seed), author="bench_adapt"))
    folder = model_folder(store, result.model.model_id)
    return folder, {"activated": result.activated, "reason": result.reason}


def _scratch(job: Job, settings: Settings, store: AnnotationStore, out: Path) -> tuple[Path, dict[str, Any]]:
    """The fine-tune's cases, split, labels and budget, from random weights."""
    plan = plan_training(store, FineTuneConfig.validation_fraction)
    train, val = run_steps(load_planned_cases(store, plan))
    # the fine-tune's sampling and labels exactly: the base's settings, grown to the training cases' levels
    sample_cfg = parent_sample_config(base_dir(settings, job.recipe, job.source), train)
    fine = _finetune_config(settings, job.seed)
    cfg = replace(fine.train_config(), lr=TrainConfig.lr, warmup_steps=TrainConfig.warmup_steps)
    saved = run_steps(fit(cfg, sample_cfg, train, val, out))
    if saved is None:
        raise RuntimeError("no validation ran within the budget")
    return out, {}


def run_job(job: Job, settings: Settings) -> dict[str, Any]:
    """Run one job and score it on its source's scored cases; failures are recorded, not raised."""
    _setup(settings)
    cases = _cases(settings.data)
    device = resolve_device(settings.device)
    row: dict[str, Any] = {"recipe": job.recipe, "source": job.source, "seed": job.seed, "k": job.k, "mode": job.mode}
    row |= {"corrected": list(job.corrected), "scored": list(job.scored)}
    if settings.names_unsure:
        row["names_unsure"] = list(settings.names_unsure)
    if settings.start_before is not None and time.time() > settings.start_before:
        return row | {"error": "not started: --stop-after-minutes reached", "seconds": 0.0}
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-adapt-") as tmp:
            if job.mode == "base":
                folder, extra = base_dir(settings, job.recipe, job.source), {}
            else:
                waiting = [cases[n] for n in job.scored] if job.mode == "fine-tuned" else []
                store = _store_with([cases[n] for n in job.corrected], Path(tmp), waiting, settings.names_unsure)
                run = _finetune if job.mode == "fine-tuned" else _scratch
                args = (job, settings, store) if job.mode == "fine-tuned" else (job, settings, store, Path(tmp) / "m")
                folder, extra = run(*args)
            trained = time.perf_counter() - start
            model, card = load_checkpoint(folder, device=device)
            row |= extra | {"train_seconds": round(trained, 1), "steps": card.get("steps"), "labels": card["labels"]}
            row["metrics"] = score(model, card, [cases[n] for n in job.scored], device)
    except (IvdError, RuntimeError, ValueError) as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{np.mean(values):.2f}" + (f" ± {np.std(values):.2f}" if len(values) > 1 else "")


def _active_identification(row: dict[str, Any], rows: Sequence[dict[str, Any]]) -> float | None:
    """Identification (%) of the model the store uses after a fine-tuned run, None for other rows.

    That is the new version where Train made it active, else the base (the row of the same
    source, seed and recipe; None without one).
    """
    if row["mode"] != "fine-tuned":
        return None
    if row.get("activated"):
        return 100 * row["metrics"]["identification"]
    same = ("source", "seed", "recipe")
    base = [r for r in rows if r["mode"] == "base" and "metrics" in r and all(r[k] == row[k] for k in same)]
    return 100 * base[0]["metrics"]["identification"] if base else None


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: per source and k, identification (%) and disc / vertebra distance (mm), mean ± sd over seeds.

    For fine-tuned rows also the identification of the model the store's users get after the
    run: the new version where Train made it active, the base where it did not.
    """
    lines = [
        "| left out | k | model | augmentation | identification % | disc distance mm | vertebra distance mm "
        "| runs | active model's identification % | identification of the levels it can name % |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def key(r: dict[str, Any]) -> tuple:
        return r["source"], r["k"], r["mode"], r["recipe"]

    for source, k, mode, recipe in sorted({key(r) for r in rows}, key=lambda t: (t[0], t[1], t[2] == "scratch", t[3])):
        done = [r for r in rows if key(r) == (source, k, mode, recipe) and "metrics" in r]
        failed = sum(key(r) == (source, k, mode, recipe) and "error" in r for r in rows)
        ident = [100 * r["metrics"]["identification"] for r in done]
        disc = [r["metrics"]["disc"]["dtt_mean_mm"] for r in done if r["metrics"]["disc"]["dtt_mean_mm"] is not None]
        vert = [
            r["metrics"]["vertebra"]["dtt_mean_mm"] for r in done if r["metrics"]["vertebra"]["dtt_mean_mm"] is not None
        ]
        activated = sum(bool(r.get("activated")) for r in done)
        runs = f"{len(done)}" + (f", {activated} activated" if mode == "fine-tuned" else "")
        runs += f" ({failed} failed)" if failed else ""
        figures = f"{_mean_sd(ident)} | {_mean_sd(disc)} | {_mean_sd(vert)}"
        active = [a for a in (_active_identification(r, rows) for r in done) if a is not None]
        nameable = [
            100 * r["metrics"]["identification_nameable"] for r in done if "identification_nameable" in r["metrics"]
        ]
        lines.append(
            f"| {source} | {k} | {mode} | {recipe} | {figures} | {runs} | {_mean_sd(active)} | {_mean_sd(nameable)} |"
        )
    return "\n".join(lines)


def plot(rows: Sequence[dict[str, Any]], out: Path, recipe: str) -> None:
    """Identification and disc distance against k, one column per left-out source (bases of ``recipe``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["recipe"] == recipe]
    sources = sorted({r["source"] for r in rows})
    fig, axes = plt.subplots(2, len(sources), figsize=(3.2 * len(sources), 5.4), squeeze=False, sharex=False)
    for col, source in enumerate(sources):
        base = [r for r in rows if r["source"] == source and r["mode"] == "base" and "metrics" in r]
        for mode, colour in (("fine-tuned", "tab:blue"), ("scratch", "tab:grey")):
            own = [r for r in rows if r["source"] == source and r["mode"] == mode and "metrics" in r]
            runs = own if mode == "scratch" else base + own
            label = mode if own else "base (k = 0)"  # a k = 0-only run fine-tuned nothing
            ks = sorted({r["k"] for r in runs})
            for row, (what, fetch) in enumerate(
                (
                    ("identification %", lambda r: 100 * r["metrics"]["identification"]),
                    ("disc distance mm", lambda r: r["metrics"]["disc"]["dtt_mean_mm"]),
                )
            ):
                values = [[fetch(r) for r in runs if r["k"] == k and fetch(r) is not None] for k in ks]
                kept = [(k, v) for k, v in zip(ks, values, strict=True) if v]
                if not kept:
                    continue
                ax = axes[row, col]
                x = [k for k, _ in kept]
                mean = np.array([np.mean(v) for _, v in kept])
                sd = np.array([np.std(v) for _, v in kept])
                ax.errorbar(x, mean, yerr=sd, marker="o", color=colour, label=label, capsize=3)
                ax.set_xticks(sorted({r["k"] for r in rows if r["source"] == source}))
                ax.set_ylabel(what) if col == 0 else None
                if row == 0:
                    ax.set_title(f"left out: {source}")
                    ax.axhline(95, color="tab:green", lw=0.8, ls="--")
                else:
                    ax.axhline(2, color="tab:green", lw=0.8, ls="--")
                    ax.set_xlabel("corrected cases k")
        in_use: dict[int, list[float]] = {0: [100 * r["metrics"]["identification"] for r in base]} if base else {}
        for r in rows:
            active = _active_identification(r, rows) if r["source"] == source and "metrics" in r else None
            if active is not None:
                in_use.setdefault(r["k"], []).append(active)
        if len(in_use) > 1:
            ks = sorted(in_use)
            mean, sd = (np.array([f(in_use[k]) for k in ks]) for f in (np.mean, np.std))
            axes[0, col].errorbar(
                ks, mean, yerr=sd, marker="s", ls=":", color="tab:orange", label="in use after Train", capsize=3
            )
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("k corrected cases of a source\nthe base never saw (dashed: targets)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES)
    parser.add_argument("--ks", nargs="+", type=int, default=[0, 1, 2, 4, 8])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--modes", nargs="+", default=["fine-tuned", "scratch"], choices=["fine-tuned", "scratch"])
    parser.add_argument(
        "--recipes",
        nargs="+",
        default=["default"],
        choices=sorted(AUGMENTATIONS),
        help="augmentation of the bases; every recipe is scored at k = 0, the first one is fine-tuned",
    )
    parser.add_argument("--bases", type=Path, default=Path("bench-adapt-bases"), help="kept base models (reused)")
    parser.add_argument(
        "--base",
        help="use this model (bundled name or folder) as every source's base instead of training one; "
        "the cases its card says it trained on are never scored",
    )
    parser.add_argument("--base-minutes", type=float, default=20.0, help="training budget of each base")
    parser.add_argument("--minutes", type=float, default=FineTuneConfig.minutes, help="fine-tuning budget")
    parser.add_argument(
        "--max-epochs", type=int, default=80, help="epoch cap of each fine-tune: what 2 CPU cores reach in 5 minutes"
    )
    parser.add_argument(
        "--patience",
        type=int,
        default=FineTuneConfig.patience,
        help="validations without improvement before a fine-tune stops (the viewer's Train uses the default)",
    )
    parser.add_argument(
        "--names-unsure",
        nargs="+",
        default=[],
        metavar="CASE",
        help="mark these cases' level names unsure in every store that holds them (they then train masks only)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=1, help="runs in parallel (processes)")
    parser.add_argument(
        "--stop-after-minutes", type=float, help="start no run after this time (a lent machine's limit); none: all runs"
    )
    parser.add_argument("--out", type=Path, default=Path("docs/adapt"), help="writes OUT.json and OUT.png")
    parser.add_argument("--replot", type=Path, help="print the table and draw OUT.png from an earlier OUT.json")
    args = parser.parse_args()
    if args.replot is not None:
        runs = json.loads(args.replot.read_text())["runs"]
        print(table(runs))
        plot(runs, args.out.with_suffix(".png"), runs[0]["recipe"])
        return

    threads = max(1, usable_cpus() // args.workers)
    stop = None if args.stop_after_minutes is None else time.time() + 60 * args.stop_after_minutes
    settings = Settings(
        args.data,
        args.bases,
        args.device,
        threads,
        args.base_minutes,
        args.minutes,
        args.max_epochs,
        stop,
        args.base,
        tuple(args.names_unsure),
        args.patience,
    )
    cases = _cases(args.data)
    names = list(cases)
    trained_on = read_card(model_folder(None, args.base)).get("trained_on", []) if args.base else []
    seen = [name for name, case in cases.items() if case.seen_in(trained_on)]
    same_session = {name: case.same_session for name, case in cases.items()}
    jobs = [
        job
        for recipe in args.recipes
        for source in args.sources
        for job in plan_jobs(
            [n for n in names if _source(n) == source],
            source,
            args.ks,
            args.seeds,
            recipe,
            seen,
            same_session,
        )
        if job.mode == "base" or (job.mode in args.modes and recipe == args.recipes[0])
    ]
    jobs.sort(key=lambda job: (job.seed, job.k))  # every source's small k first, should time run out
    print(
        f"{len(jobs)} runs over {', '.join(args.sources)}; torch {torch.__version__}, {platform.machine()}, "
        f"{args.device}, {args.workers} workers x {threads} threads; fine-tune {args.minutes} min, "
        f"at most {args.max_epochs} epochs, patience {args.patience}",
        flush=True,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    log_file = args.out.with_suffix(".jsonl")
    with ProcessPoolExecutor(args.workers, mp_context=torch.multiprocessing.get_context("spawn")) as pool:
        bases = [(recipe, source) for recipe in args.recipes for source in args.sources]
        for report in pool.map(train_base, [settings] * len(bases), *zip(*bases, strict=True)):
            print(f"base: {report}", flush=True)
        with log_file.open("w") as log:
            for row in pool.map(run_job, jobs, [settings] * len(jobs)):
                rows.append(row)
                log.write(json.dumps(row) + "\n")
                log.flush()
                shown = row.get("error") or f"identification {100 * row['metrics']['identification']:.1f} %"
                run = f"{row['recipe']} {row['source']} seed {row['seed']} k={row['k']} {row['mode']}"
                print(f"{run}: {shown} ({row['seconds']} s)", flush=True)
    payload = {"args": {k: str(v) for k, v in vars(args).items()}, "torch": torch.__version__, "runs": rows}
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=1))
    print("\n" + table(rows))
    plot(rows, args.out.with_suffix(".png"), args.recipes[0])
    print(f"\nwrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
