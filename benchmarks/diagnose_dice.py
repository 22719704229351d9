"""Where a model loses mask Dice on the held-out dev cases: per structure, centre vs sides, boundary vs far.

    python benchmarks/diagnose_dice.py [--model ivdnet-lumbar] [--data ../shared/data/lumbar]
                                       [--device cpu|cuda]

For every reference structure of every dev case it prints: Dice; predicted / reference
volume; Dice on the central half of the structure's left-right extent and on the rest (the
outer sagittal slices, cut obliquely); voxels predicted beyond the reference's left-right
extent; and the share of false-positive voxels within one voxel of the reference (a boundary
a voxel too far out) rather than farther away (a wrong or extra blob). Figures only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_ivd.inference import predict
from napari_ivd.metrics import dice
from napari_ivd.models import find_model_dir, load_checkpoint, resolve_device
from napari_ivd.training.cases import load_lumbar_cases, split_cases


def _figure(value: float | None) -> str:
    return "  -  " if value is None else f"{value:.3f}"


def structure_row(pred: np.ndarray, ref: np.ndarray) -> str:
    """One structure's figures; ``pred`` and ``ref`` are boolean (left-right, S-I, A-P) volumes."""
    on_slice = np.flatnonzero(ref.any(axis=(1, 2)))
    first, last = on_slice[0], on_slice[-1]
    quarter = (last - first + 1) / 4
    central = np.zeros(ref.shape[0], bool)
    central[int(np.ceil(first + quarter)) : int(np.floor(last - quarter)) + 1] = True
    outside = np.ones(ref.shape[0], bool)
    outside[first : last + 1] = False
    false_positive = pred & ~ref
    near = false_positive & ndimage.binary_dilation(ref)
    parts = [
        f"dice {dice(pred, ref):.3f}",
        f"volume x{pred.sum() / ref.sum():.2f}",
        f"centre {_figure(dice(pred[central], ref[central]))}",
        f"sides {_figure(dice(pred[~central & ~outside], ref[~central & ~outside]))}",
        f"beyond {int(pred[outside].sum())} vox",
        f"FP near {near.sum() / max(1, false_positive.sum()):.0%}",
    ]
    return "  ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder or bundled name (default: starter model)")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/lumbar")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    model, card = load_checkpoint(find_model_dir(args.model), device=device)
    _, dev = split_cases(load_lumbar_cases(args.data), seed=card.get("train_config", {}).get("seed", 0))
    for case in dev:
        if case.mask_tss is None:
            continue
        view = case.volume.view
        pred = view.to_display(predict(case.volume, model, card, device).mask_tss)
        ref = view.to_display(case.mask_tss)
        print(case.name)
        for value in sorted(set(np.unique(ref).tolist()) - {0}):
            print(f"  {value:4d}  {structure_row(pred == value, ref == value)}")


if __name__ == "__main__":
    main()
