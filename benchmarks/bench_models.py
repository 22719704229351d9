"""Every registered architecture trained on the same split with the same budget, compared in one table.

    python benchmarks/bench_models.py [--models ivdnet unet ...] [--minutes 6]
                                      [--no-ablations | --ablate hcanet:skeleton_loss ...]
                                      [--device cpu|cuda|auto] [--out /tmp/napari-ivd-models-bench]
                                      [--json out.json] [--markdown table.md]

Each architecture of :func:`napari_ivd.models.available` (or ``--models``) is trained with
:func:`napari_ivd.training.engine.fit` from its default config, on the train cases of
``../shared/data/lumbar`` (``split_cases(seed=0)``), with ``--minutes`` of training each and
otherwise identical settings (``TrainConfig`` and ``SampleConfig`` defaults, except that
the engine validates only once, when the budget is spent, so no model loses training time to
validation and no checkpoint is picked on the dev cases). Each saved model is then measured
on the dev cases with :func:`~napari_ivd.training.engine.evaluate_groups`, overall (the
engine's own final validation of the saved checkpoint) and per contrast: disc and vertebra distance to
target (mean ± sd, mm), identification rate and FPR at 5 mm, Dice per structure, latency
per volume (model loaded; mean s), parameters and GFLOPs (1x1x256x256).

Ablations (``--ablations``, the default), trained with the same budget:

* every boolean flag of :data:`ABLATION_FLAGS` that a model's config has and enables by
  default (``attention``, ``skeleton_loss``, ``spine_region``, ``objective_association``)
  gets a row with that flag off, or only the ``MODEL:FLAG`` pairs given to ``--ablate``
  (each costs another ``--minutes`` of training);
* skeleton post-processing: every trained model is evaluated again with a copy of its card
  without ``"skeleton"``, so inference keeps the best candidate per label instead of the
  skeleton search (Azad 2021).

``--resume`` keeps the models an interrupted run already trained in ``--out``.
``--from-json OUT.json`` re-reads a finished run's ``--json`` (and its ``--out`` folders)
instead of training: to print the table again, write ``--markdown`` or ``--bundle``.
``--bundle DIR`` copies every default run's trained model (the starter ``ivdnet`` aside: it
has its own, longer-trained ``ivdnet-lumbar``) to ``DIR/<model>-lumbar`` with a
``MODEL_CARD.md`` holding its rows of the table, so each seed architecture ships as a real,
trained entry of the viewer's Model list and of ``predict --model``.

Figures only: no targets, no pass/fail. A full run trains (models + ablations) x ``--minutes``
plus two passes of prediction over the dev cases per row; the plan is printed first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_ivd.models import (
    BUNDLED_MODELS_DIR,
    CARD_NAME,
    DEFAULT_MODEL,
    WEIGHTS_NAME,
    available,
    config_class,
    load_checkpoint,
    resolve_device,
)
from napari_ivd.training.cases import LabelledCase, load_lumbar_cases, split_cases
from napari_ivd.training.data import SampleConfig
from napari_ivd.training.engine import TrainConfig, evaluate_groups, fit

DATA = Path(__file__).resolve().parents[2] / "shared/data/lumbar"
#: Config flags that switch off a paper's component, with the paper's name for it.
ABLATION_FLAGS = {
    "attention": "attention",
    "skeleton_loss": "skeleton loss",
    "spine_region": "spine-region focus",
    "objective_association": "objective association",
}
NO_SKELETON = "no skeleton search"
KINDS = ("disc", "vertebra")


@dataclasses.dataclass(frozen=True)
class Run:
    """One table entry: a model trained from ``overrides`` (or reused from ``weights_of``) and how it is evaluated."""

    model: str
    variant: str = "default"
    overrides: tuple[tuple[str, Any], ...] = ()
    skeleton_search: bool = True
    weights_of: str | None = None  # slug of the run whose trained folder this one evaluates

    @property
    def slug(self) -> str:
        """Folder name under ``--out``."""
        if self.weights_of is not None:
            return self.weights_of
        return "-".join([self.model, *(f"no-{k.replace('_', '-')}" for k, _ in self.overrides)])


def ablation_flags(model: str) -> list[str]:
    """The :data:`ABLATION_FLAGS` that ``model``'s config has and enables by default."""
    return [f.name for f in dataclasses.fields(config_class(model)) if f.name in ABLATION_FLAGS and f.default is True]


def plan_runs(models: list[str], ablations: bool, only: set[tuple[str, str]] | None = None) -> list[Run]:
    """Per model: its default run, then (with ``ablations``) one run per flag off and the skeleton-search one.

    ``only`` limits the trained ablations to those ``(model, flag)`` pairs.
    """
    runs = []
    for model in models:
        runs.append(Run(model))
        if ablations:
            flags = [f for f in ablation_flags(model) if only is None or (model, f) in only]
            runs += [Run(model, f"{ABLATION_FLAGS[flag]} off", ((flag, False),)) for flag in flags]
            runs.append(Run(model, NO_SKELETON, skeleton_search=False, weights_of=model))
    return runs


def parse_ablations(pairs: list[str], models: list[str]) -> set[tuple[str, str]]:
    """``["hcanet:attention", ...]`` -> ``{("hcanet", "attention")}``; an unknown pair raises ``ValueError``."""
    parsed = set()
    for pair in pairs:
        model, _, flag = pair.partition(":")
        if model not in models or flag not in ablation_flags(model):
            valid = [f"{m}:{f}" for m in models for f in ablation_flags(m)]
            raise ValueError(f"--ablate {pair!r}: not one of {', '.join(valid)}")
        parsed.add((model, flag))
    return parsed


def _clear_model_folder(folder: Path) -> None:
    """Remove a previous run's model files, so a run that saves nothing is not judged on old weights."""
    for name in (CARD_NAME, WEIGHTS_NAME):
        (folder / name).unlink(missing_ok=True)


def train(run: Run, args: argparse.Namespace, train_cases: list[LabelledCase], dev: list[LabelledCase]) -> dict:
    """Train one run into ``args.out / run.slug``; returns facts about the training.

    With ``args.resume``, a folder that already holds this run's model (same architecture,
    overrides and budget) is kept instead of trained again.
    """
    folder = args.out / run.slug
    if args.resume and (folder / CARD_NAME).is_file():
        card = json.loads((folder / CARD_NAME).read_text(encoding="utf-8"))
        settings = card.get("train_config", {})
        if (card.get("name"), settings.get("model_overrides"), settings.get("minutes")) == (
            run.model,
            dict(run.overrides),
            args.minutes,
        ):
            print(f"  kept the model trained earlier in {folder}")
            return {"seconds": card.get("training_seconds"), "saved": True, "resumed": True}
    _clear_model_folder(folder)
    # validated once, when the budget is spent: every model trains for the whole budget, and
    # the checkpoint measured is the final one, not one picked on the dev cases
    cfg = TrainConfig(
        model=run.model,
        model_overrides=dict(run.overrides),
        minutes=args.minutes,
        validate_every_min=args.minutes,
        device=args.device,
    )
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    steps = iter(fit(cfg, SampleConfig(), train_cases, dev, folder, card_extra={"command": " ".join(sys.argv)}))
    while True:
        try:
            progress = next(steps).detail  # the epoch's figures
        except StopIteration as done:
            saved = done.value
            break
        if progress.validation is not None:
            error = progress.validation["error_mm"]
            print(
                f"  [{progress.elapsed_s / 60:5.1f} min] step {progress.step:5d} loss {progress.loss:.3f} "
                f"dev error {'–' if error is None else f'{error:.2f} mm'}{' (best)' if progress.improved else ''}",
                flush=True,
            )
    facts: dict[str, Any] = {"seconds": round(time.perf_counter() - start, 1), "saved": saved is not None}
    if device.type == "cuda":
        facts["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    return facts


def evaluate(run: Run, args: argparse.Namespace, dev: list[LabelledCase]) -> dict:
    """The run's saved model measured on all dev cases and per contrast (``{group: report}``), plus its card facts."""
    device = resolve_device(args.device)
    model, card = load_checkpoint(args.out / run.slug, device=device)
    if not run.skeleton_search:
        card = {k: v for k, v in card.items() if k != "skeleton"}
    groups = {c: [d for d in dev if d.contrast == c] for c in sorted({d.contrast for d in dev})}
    reports = evaluate_groups(model, card, {"all": dev, **groups}, device)
    facts = {"params": card["params"], "gflops": card["gflops"], "steps": card.get("steps")}
    return {"reports": reports, **facts}


def _mean_sd(k: dict) -> str:
    return "–" if k["dtt_mean_mm"] is None else f"{k['dtt_mean_mm']:.2f}±{k['dtt_sd_mm']:.2f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


HEADER = [
    "model",
    "variant",
    "dev cases",
    "steps",
    "disc DTT mm",
    "vert DTT mm",
    "disc id",
    "vert id",
    "disc FPR",
    "vert FPR",
    "Dice vert",
    "Dice disc",
    "s/volume",
    "params",
    "GFLOPs",
]


def table_rows(results: list[dict]) -> list[list[str]]:
    """One row per run and dev group, in :data:`HEADER` order."""
    rows = []
    for result in results:
        run: Run = result["run"]
        if "error" in result:
            rows.append([run.model, run.variant, f"failed: {result['error']}", *[""] * (len(HEADER) - 3)])
            continue
        for group, report in result["reports"].items():
            k, dice = report["keypoints"], report["dice"]
            rows.append(
                [
                    run.model,
                    run.variant,
                    f"{group} ({len(report['cases'])})",
                    str(result.get("steps") or "–"),
                    _mean_sd(k["disc"]),
                    _mean_sd(k["vertebra"]),
                    _pct(k["disc"]["identification"]),
                    _pct(k["vertebra"]["identification"]),
                    _pct(k["disc"]["fpr"]),
                    _pct(k["vertebra"]["fpr"]),
                    _num(dice["vertebra"]["per_structure"]),
                    _num(dice["disc"]["per_structure"]),
                    f"{np.mean(report['predict_seconds']):.1f}",
                    f"{result['params']:,}",
                    f"{result['gflops']:.2f}",
                ]
            )
    return rows


def format_text(rows: list[list[str]]) -> str:
    """Fixed-width columns for the terminal."""
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    lines = [
        "  ".join(cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths, strict=True)))
        for r in [HEADER, *rows]
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def format_markdown(rows: list[list[str]]) -> str:
    """A GitHub markdown table."""
    lines = [
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join("---" if i < 3 else "---:" for i in range(len(HEADER))) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def environment(args: argparse.Namespace) -> str:
    """One line saying where and how the figures were taken."""
    device = resolve_device(args.device)
    gpu = f" ({torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda})" if device.type == "cuda" else ""
    return (
        f"device {device}{gpu}; torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads; "
        f"{args.minutes:g} min of training per model; TrainConfig/SampleConfig defaults; split_cases(seed=0)"
    )


def _section(markdown: str, heading: str) -> str:
    """The text of one ``## heading`` section of a markdown document (heading included)."""
    start = markdown.index(f"## {heading}\n")
    end = markdown.find("\n## ", start + 1)
    return markdown[start : end if end >= 0 else None].strip()


def _config_words(run: Run) -> str:
    """``"default config"`` or ``"default config with skeleton_loss=False"``."""
    changes = ", ".join(f"{key}={value}" for key, value in run.overrides)
    return "default config" + (f" with {changes}" if changes else "")


def _identified(result: dict) -> float:
    """Share of the dev structures a run named at the right level (discs and vertebrae averaged)."""
    keypoints = result["reports"]["all"]["keypoints"]
    return float(np.mean([keypoints[kind]["identification"] or 0.0 for kind in KINDS]))


def _bundled_runs(results: list[dict]) -> list[dict]:
    """Per seed architecture, the run to ship: its default, else the variant naming most structures.

    The starter's architecture is left out (``ivdnet-lumbar`` is its entry); an architecture
    none of whose runs names a structure ships nothing.
    """
    chosen = []
    for model in dict.fromkeys(r["run"].model for r in results):
        trained = [r for r in results if r["run"].model == model and r["run"].weights_of is None and "error" not in r]
        naming = [r for r in trained if _identified(r) > 0]
        if model == DEFAULT_MODEL.split("-")[0] or not naming:
            if not naming:
                print(f"not bundled: no {model} run names a structure on the dev cases")
            continue
        default = [r for r in naming if r["run"].variant == "default"]
        chosen.append(default[0] if default else max(naming, key=_identified))
    return chosen


def bundle(results: list[dict], args: argparse.Namespace, rows: list[list[str]]) -> list[Path]:
    """Copy each trained default run but the starter's architecture to ``args.bundle/<model>-lumbar`` with a card."""
    starter_card = (BUNDLED_MODELS_DIR / DEFAULT_MODEL / "MODEL_CARD.md").read_text(encoding="utf-8")
    data = _section(starter_card, "Data")  # same cases, same licences and citations as the starter
    written = []
    for result in _bundled_runs(results):
        run: Run = result["run"]
        name, source = f"{run.model}-lumbar", args.out / run.slug
        target = args.bundle / name
        target.mkdir(parents=True, exist_ok=True)
        for file in (CARD_NAME, WEIGHTS_NAME):
            shutil.copyfile(source / file, target / file)
        card = json.loads((source / CARD_NAME).read_text(encoding="utf-8"))
        module = sys.modules[config_class(run.model).__module__]  # where the architecture and its docstring live
        own = [r for r in rows if r[0] == run.model]
        variant = (
            ""
            if run.variant == "default"
            else f" This is its **{run.variant}** variant: the default named nothing at this budget."
        )
        size_mb = (target / WEIGHTS_NAME).stat().st_size / 1e6
        facts = "\n".join(
            f"| {key} | {value} |"
            for key, value in [
                ("", ""),
                ("---", "---"),
                (
                    "architecture",
                    f"`{run.model}` {_config_words(run)} (`napari_ivd/models/{run.model}.py`; its docstring "
                    "says what it keeps of the paper)",
                ),
                (
                    "size",
                    f"{card['params']:,} parameters; {card['gflops']:.2f} GFLOPs per forward at 1×1×256×256; "
                    f"`weights.safetensors` {size_mb:.1f} MB",
                ),
                ("labels", f"{len(card['labels'])} levels, cranio-caudal: {', '.join(card['labels'])}"),
                (
                    "files",
                    "`card.json` (config, labels, skeleton prior, training settings, final dev figures, "
                    "weights sha256), `weights.safetensors`",
                ),
            ]
        )
        text = f"""# {name} — {(module.__doc__ or name).splitlines()[0].rstrip(".")}

The `{run.model}` row of the architecture comparison (docs/models.md): trained from scratch
with exactly the same data, split, budget and settings as every other architecture there,
so it can be picked and compared in the viewer's Model list or with
`napari-ivd predict IMAGE --out DIR --model {name}`. It is not the default model; docs/models.md
compares it with the default `{DEFAULT_MODEL}`.{variant}

{facts}

{data}

## Training

```bash
{card.get("command", "")}
```

{card.get("training_seconds", 0) / 60:.1f} minutes ({card.get("steps")} steps) on {card.get("device")} (torch
{card.get("torch")}), the registered loss of `{run.model}`, `TrainConfig`/`SampleConfig` defaults; validated
once, when the budget was spent, and that final model is the one here (no checkpoint was picked
on the dev cases).

## Dev figures

{environment(args)}

{format_markdown(own)}

Distance to target is over the levels the model named; misses count against identification.
"No skeleton search" evaluates these same weights keeping the best candidate per label.
"""
        (target / "MODEL_CARD.md").write_text(text, encoding="utf-8")
        written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, help=f"subset of {', '.join(available())}")
    parser.add_argument("--minutes", type=float, default=6.0, help="training budget per model")
    parser.add_argument("--ablations", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--ablate", nargs="+", metavar="MODEL:FLAG", help="train only these ablations")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=Path("/tmp/napari-ivd-models-bench"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path, help="also write the table as markdown (for docs/models.md)")
    parser.add_argument("--resume", action="store_true", help="keep models already trained in --out by this plan")
    parser.add_argument("--from-json", type=Path, help="tabulate/bundle a finished run instead of training")
    parser.add_argument("--bundle", type=Path, help="copy the seed architectures' trained models here, with cards")
    args = parser.parse_args()
    models = args.models or available()
    unknown = sorted(set(models) - set(available()))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; available: {', '.join(available())}")

    if args.from_json:
        saved = json.loads(args.from_json.read_text(encoding="utf-8"))["args"]
        args.minutes, args.out = float(saved["minutes"]), Path(saved["out"])
        report(load_results(args.from_json), args, set())
        return
    try:
        only = None if args.ablate is None else parse_ablations(args.ablate, models)
    except ValueError as exc:
        parser.error(str(exc))
    runs = plan_runs(models, args.ablations, only)
    trained = [r for r in runs if r.weights_of is None]
    print(environment(args))
    print(f"plan: {len(trained)} trainings x {args.minutes:g} min, {len(runs)} table entries:")
    for run in runs:
        print(f"  {run.model:12s} {run.variant:28s} -> {args.out / run.slug}")
    train_cases, dev = split_cases(load_lumbar_cases(args.data), seed=0)
    print(f"train on {len(train_cases)} cases, measure on {len(dev)}: {', '.join(c.name for c in dev)}")

    results, failed = [], set()
    for run in runs:
        print(f"\n== {run.model}, {run.variant}", flush=True)
        result: dict[str, Any] = {"run": run}
        try:
            if run.weights_of is None:
                result["training"] = train(run, args, train_cases, dev)
            elif run.weights_of in failed:
                raise RuntimeError(f"its model {run.weights_of} failed to train")
            result.update(evaluate(run, args, dev))
        except Exception as exc:  # one broken architecture must not void an hour of the others' figures
            traceback.print_exc()
            failed.add(run.slug)
            result["error"] = f"{type(exc).__name__}: {exc}"[:80]
        results.append(result)
    report(results, args, failed)


def load_results(path: Path) -> list[dict]:
    """The results of a ``--json`` file, with their :class:`Run` rebuilt."""
    results = json.loads(path.read_text(encoding="utf-8"))["results"]
    for result in results:
        run = result["run"]
        result["run"] = Run(**{**run, "overrides": tuple(tuple(pair) for pair in run["overrides"])})
    return results


def report(results: list[dict], args: argparse.Namespace, failed: set[str]) -> None:
    """Print the table; write ``--markdown``, ``--json`` and ``--bundle`` as asked; exit non-zero if a run failed."""
    rows = table_rows(results)
    print("\n" + environment(args) + "\n" + format_text(rows))
    if args.markdown:
        args.markdown.write_text(environment(args) + "\n\n" + format_markdown(rows) + "\n", encoding="utf-8")
    if args.json and not args.from_json:
        payload = {
            "environment": environment(args),
            "args": {k: str(v) for k, v in vars(args).items()},
            "results": [{**r, "run": dataclasses.asdict(r["run"])} for r in results],
        }
        args.json.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    if args.bundle:
        for folder in bundle(results, args, rows):
            print(f"bundled {folder}")
    if failed:
        sys.exit(f"failed: {', '.join(sorted(failed))}")


if __name__ == "__main__":
    main()
