"""``napari-ivd train``: fit a model on labelled cases headless, with the viewer's engine."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def run_train(args: argparse.Namespace) -> int:
    """Train on a labelled lumbar data folder; print progress; save the best model in ``--out``."""
    from napari_ivd.training.cases import load_lumbar_cases, split_cases
    from napari_ivd.training.data import SampleConfig
    from napari_ivd.training.engine import TrainConfig, fit

    cases = load_lumbar_cases(args.lumbar)
    train, dev = split_cases(cases, dev_fraction=args.dev_fraction, seed=args.seed)
    print(f"training on {len(train)} cases, validating on {len(dev)}: {', '.join(c.name for c in dev)}")
    cfg = TrainConfig(model=args.model, minutes=args.minutes, device=args.device, seed=args.seed, lr=args.lr)
    command = "napari-ivd " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    steps = fit(cfg, SampleConfig(), train, dev, args.out, init_from=args.init, card_extra={"command": command})
    card = None
    while True:
        try:
            p = next(steps)
        except StopIteration as done:
            card = done.value
            break
        minutes = f"{p.elapsed_s / 60:5.1f}/{p.budget_s / 60:.0f} min"
        line = f"epoch {p.epoch:4d}  step {p.step:6d}  {minutes}  loss {p.loss:.4f}"
        if p.validation is not None:
            k = p.validation["keypoints"]
            line += (
                f"  | val error {p.validation['error_mm']:.2f} mm, disc id {k['disc']['identification']}, "
                f"vertebra id {k['vertebra']['identification']}{'  (saved)' if p.improved else ''}"
            )
        print(line, flush=True)
    if card is None:
        print("no validation ran (no dev cases or no time); nothing saved", file=sys.stderr)
        return 2
    print(json.dumps(card["metrics"], indent=2))
    print(f"saved {args.out}")
    return 0


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register ``train`` on the main parser."""
    train = sub.add_parser(
        "train",
        help="train a model on labelled cases (headless)",
        description="Train on labelled cases, validate on held-out ones, keep the best model folder in --out.",
    )
    train.add_argument("--lumbar", type=Path, required=True, help="a folder laid out like shared/data/lumbar")
    train.add_argument("--out", type=Path, required=True, help="model folder to write")
    train.add_argument("--model", default="ivdnet", help="architecture (default: %(default)s)")
    train.add_argument("--init", type=Path, help="start from this model folder (fine-tuning)")
    train.add_argument("--minutes", type=float, default=10.0, help="time budget (default: %(default)s)")
    train.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default: %(default)s)")
    train.add_argument("--dev-fraction", type=float, default=0.2, help="held-out share per contrast")
    train.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(func=run_train)
