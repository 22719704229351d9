"""What the benchmarks that judge a model on labelled scans share: the options that choose both, and loading them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from napari_ivd.errors import CheckpointError
from napari_ivd.models import find_model_dir, load_checkpoint, resolve_device
from napari_ivd.training.cases import LabelledCase, judged_cases, load_lumbar_cases

#: The labelled scans beside the repository (``../shared/data/lumbar``).
DATA = Path(__file__).resolve().parents[2] / "shared/data/lumbar"


def add_model_and_scan_options(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--data``, ``--all-held-out``, ``--sources`` and ``--device``."""
    parser.add_argument("--model", default=None, help="model folder or bundled name (default: starter model)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--all-held-out", action="store_true", help="every case not in the card's trained_on")
    parser.add_argument("--sources", nargs="+", help="only cases of these sources (e.g. VB1 VB3)")
    parser.add_argument("--device", default="auto")


def load_model(args: argparse.Namespace) -> tuple[torch.nn.Module, dict[str, Any], torch.device]:
    """The model the options name, on their device; one that cannot be loaded exits in words."""
    device = resolve_device(args.device)
    try:
        model, card = load_checkpoint(find_model_dir(args.model), device=device)
    except CheckpointError as exc:
        raise SystemExit(str(exc)) from None
    return model, card, device


def scans_to_judge(args: argparse.Namespace, card: dict[str, Any]) -> list[LabelledCase]:
    """The held-out dev cases of the card's split, or every case it did not train on; none left exits in words."""
    try:
        cases = judged_cases(load_lumbar_cases(args.data), card, unseen=args.all_held_out, sources=args.sources or ())
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    if not cases:
        which = f" of {', '.join(args.sources)}" if args.sources else ""
        raise SystemExit(f"no labelled scan{which} under {args.data} is left to judge {card['name']} on")
    return cases
