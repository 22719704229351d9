"""``napari-ivd train``: fit a model headless with the viewer's engine.

Two sources of cases: ``--store S`` fine-tunes the store's active model (or ``--model``) on
its corrected cases and writes a new model version into the store, exactly as the viewer's
Train button does; ``--data DIR --out DIR`` trains from scratch (or ``--init``) on a
labelled data folder, learning the levels its cases name (``--lumbar`` is its old name).
Either runs under ``torchrun --nproc_per_node=N`` with DistributedDataParallel (gloo on CPU,
NCCL on GPUs); only rank 0 prints and writes.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from napari_ivd.progress import Progress, run_steps

log = logging.getLogger(__name__)


def _validation_line(validation: dict[str, Any]) -> str:
    k = validation["keypoints"]
    error = validation["error_mm"]
    return (
        f"val error {'n/a' if error is None else f'{error:.2f} mm'}, "
        f"disc id {k['disc']['identification']}, vertebra id {k['vertebra']['identification']}"
    )


def _train_from_store(args: argparse.Namespace, main: bool) -> int:
    from napari_ivd.store import AnnotationStore
    from napari_ivd.training.finetune import FineTuneConfig, finetune_steps

    store = AnnotationStore.open(args.store)
    cfg = FineTuneConfig(
        minutes=args.minutes if args.minutes is not None else (600.0 if args.epochs else 5.0),
        epochs=args.epochs,
        lr=args.lr if args.lr is not None else FineTuneConfig.lr,
        device=args.device,
        seed=args.seed,
    )

    phases: list[str] = []

    def show(report: Progress) -> None:  # each phase's first line, then every training report
        phase = report.detail.name
        if main and (phase == "training" or phase not in phases):
            print(f"[{phase}] {report.message}", flush=True)
        phases.append(phase)

    result = run_steps(finetune_steps(store, cfg, parent=args.model, author=args.author), show)
    if not main:
        return 0
    print(f"new model version {result.model.model_id} (parent {result.parent})")
    print(("ACTIVE: " if result.activated else "not active: ") + result.reason)
    return 0


def _train_from_folder(args: argparse.Namespace, main: bool) -> int:
    from napari_ivd.models import find_model_dir, read_card
    from napari_ivd.training.cases import labels_of, load_lumbar_cases, split_cases, unseen_by_parent
    from napari_ivd.training.data import SampleConfig, with_augmentation
    from napari_ivd.training.engine import TrainConfig, fit
    from napari_ivd.training.finetune import parent_sample_config

    if args.out is None:
        print("--data needs --out (the model folder to write)", file=sys.stderr)
        return 2
    if args.init is not None and args.in_channels is not None:
        print("--in-channels cannot change a model given with --init (it keeps the parent's)", file=sys.stderr)
        return 2
    cases = load_lumbar_cases(args.data)
    if args.contrasts:
        cases = [c for c in cases if c.contrast in args.contrasts]
        if not cases:
            print(f"no case of contrast {', '.join(args.contrasts)} under {args.data}", file=sys.stderr)
            return 2
    train, dev = split_cases(cases, dev_fraction=args.dev_fraction, seed=args.seed)
    if args.init is not None:  # the parent's slices and channels, which its weights expect; its labels grown
        split = len(dev)
        train, dev = unseen_by_parent(train, dev, read_card(find_model_dir(args.init)).get("trained_on", []))
        if split and not dev:
            print(
                f"every dev case of this split is one {args.init} trained on, so none could judge the new model; "
                "pass another --seed or a larger --dev-fraction",
                file=sys.stderr,
            )
            return 2
        if main and len(dev) < split:
            print(f"{split - len(dev)} dev cases train instead of validating: {args.init} trained on them")
        sample_cfg = parent_sample_config(args.init, train)
        if args.augmentation is not None:
            sample_cfg = with_augmentation(sample_cfg, args.augmentation)
    elif not labels_of(train):
        print(f"no training case under {args.data} names a level (points or a labelled mask)", file=sys.stderr)
        return 2
    else:
        try:
            sample_cfg = with_augmentation(
                SampleConfig(
                    labels=labels_of(train),
                    in_channels=SampleConfig.in_channels if args.in_channels is None else args.in_channels,
                ),
                args.augmentation or "default",
            )
        except ValueError as exc:
            print(f"--in-channels: {exc}", file=sys.stderr)
            return 2
    if main:
        print(f"training on {len(train)} cases, validating on {len(dev)}: {', '.join(c.name for c in dev)}")
        print(f"levels: {', '.join(sample_cfg.labels)}")
    cfg = TrainConfig(
        model=args.model or "ivdnet",
        minutes=args.minutes if args.minutes is not None else (600.0 if args.epochs else 10.0),
        max_epochs=args.epochs or TrainConfig.max_epochs,
        device=args.device,
        seed=args.seed,
        lr=args.lr if args.lr is not None else TrainConfig.lr,
        model_overrides={"in_channels": args.in_channels} if args.in_channels else {},
        keep=args.keep,
    )
    command = "napari-ivd " + " ".join(shlex.quote(a) for a in sys.argv[1:])

    def show(report: Progress) -> None:
        p = report.detail  # the epoch's figures
        if not main:
            return
        minutes = f"{p.elapsed_s / 60:5.1f}/{p.budget_s / 60:.0f} min"
        line = f"epoch {p.epoch:4d}  step {p.step:6d}  {minutes}  loss {p.loss:.4f}"
        if p.validation is not None:
            line += f"  | {_validation_line(p.validation)}{'  (saved)' if p.improved else ''}"
        print(line, flush=True)

    steps = fit(cfg, sample_cfg, train, dev, args.out, init_from=args.init, card_extra={"command": command})
    card = run_steps(steps, show)
    if not main:
        return 0
    if card is None:
        print("no validation ran (no dev cases or no time); nothing saved", file=sys.stderr)
        return 2
    print(json.dumps(card["metrics"], indent=2))
    print(f"saved {args.out}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    """Fine-tune from a store or train on a data folder; under torchrun, inside the process group."""
    from napari_ivd.training import ddp

    with ddp.process_group(args.device) as ranks:
        if args.store is not None:
            return _train_from_store(args, ranks.main)
        return _train_from_folder(args, ranks.main)


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register ``train`` on the main parser."""
    train = sub.add_parser(
        "train",
        help="fine-tune on a store's corrected cases, or train on a labelled folder (headless)",
        description=(
            "--store S: fine-tune the store's active model (or --model) on its corrected and verified cases, "
            "validate on held-out ones, and add the result to the store as a new model version (active only "
            "if it validates better than its parent and names no structure differently from it on up to six other "
            "cases of the store). --data DIR --out DIR: train a model folder on a "
            "labelled data folder; it learns every level its cases name (with --init: the parent's grown to them). "
            "Runs under `torchrun --nproc_per_node=N` too (gloo on CPU, NCCL on GPUs)."
        ),
    )
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--store", help="annotation store (folder or fsspec URL) to fine-tune from and write to")
    source.add_argument(
        "--data", type=Path, help="a labelled data folder laid out like shared/data/lumbar (<set>/<case>/image.nii.gz)"
    )
    source.add_argument("--lumbar", type=Path, dest="data", help=argparse.SUPPRESS)  # the old name of --data
    train.add_argument(
        "--model",
        help="--store: parent model (stored id or bundled name; default: the active one); --data: architecture",
    )
    train.add_argument("--out", type=Path, help="with --data: model folder to write")
    train.add_argument(
        "--init", type=Path, help="with --data: start from this model folder (grown to the data's levels)"
    )
    train.add_argument(
        "--in-channels",
        type=int,
        help="with --data: adjacent sagittal slices stacked as the input (odd; default 1, the slice alone)",
    )
    budget = train.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, help="time budget (default: 5 with --store, 10 with --data)")
    budget.add_argument("--epochs", type=int, help="number of epochs instead of a time budget")
    train.add_argument("--lr", type=float, help="peak learning rate (default: 5e-4 with --store, 2e-3 with --data)")
    train.add_argument("--author", help="with --store: recorded in the model card (default: login name)")
    train.add_argument(
        "--contrasts", nargs="+", choices=["T1w", "T2w", "water"], help="with --data: only cases of these contrasts"
    )
    train.add_argument("--dev-fraction", type=float, default=0.2, help="with --data: held-out share per contrast")
    train.add_argument(
        "--augmentation",
        choices=["default", "robust", "robust-fov"],
        help="with --data: 'robust' adds other sites' looks (intensity curves, inversion, bias field, blur); "
        "'robust-fov' also ends some fields of view above the sacrum (default: 'default', or with --init the "
        "parent's)",
    )
    train.add_argument(
        "--keep",
        default="best",
        choices=["best", "last"],
        help="with --data: keep the weights that validate best, or the last ones "
        "(then the dev cases only report, and their figures are honest)",
    )
    train.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(func=run_train)
