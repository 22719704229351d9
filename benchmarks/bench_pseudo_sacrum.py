"""Teaching S1 where the references stop at L5: the sacrum proposed by a model, then fine-tuning with it.

    python benchmarks/bench_pseudo_sacrum.py [--model ivdnet-lumbar] [--data ../shared/data/lumbar]
                                             [--min-score 0.2] [--json proposals.json]
                                             [--train OUT [--without] [--minutes 50] [--lr 2.5e-4]]

VB2 and VB3 label neither S1 nor L5-S1 although both are usually in view, so those levels are
unknown there and never taught; models fine-tuned on VB3 name the S1 body L5 on scans that end
right under it. This proposes the S1 body on every case that annotates L4 and L5 but not S1:
the strongest point of the model's S1 heatmap (mean over the slices within 3 mm of the
reference L5) where the sacrum must lie, 0.6 to 1.15 L4→L5 spacings below the reference L5
and within 65° of that direction, inside the image. The L5-S1 disc goes midway, as the
references derive their discs. It prints each proposal's score and, on cases that do label
S1 (VB1), how far the same rule lands from it, so the rule is judged where the truth exists.

``--train OUT`` fine-tunes the model on its own split (``split_cases`` seed 0, the cases it
trained on back in training), with the ``robust`` augmentation and ``--keep last``, the
proposals scoring at least ``--min-score`` added to the training cases only (never to the
cases held out); ``--without`` trains the same run without them, the control. Judge both with
``bench_predict.py --all-held-out --model OUT --per-case``. Figures only.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from judged_scans import DATA

from napari_ivd.models import find_model_dir, load_checkpoint
from napari_ivd.preprocess import ModelInput, channel_picks, network_input, pad_to_multiple
from napari_ivd.progress import Progress, run_steps
from napari_ivd.training.cases import LabelledCase, load_lumbar_cases, split_cases, unseen_by_parent
from napari_ivd.training.data import with_augmentation
from napari_ivd.training.engine import TrainConfig, fit
from napari_ivd.training.finetune import parent_sample_config

#: Where the S1 body may lie, in L4→L5 spacings below the reference L5, and at most this far off that direction.
NEAREST, FARTHEST, MAX_ANGLE_DEG = 0.6, 1.15, 65.0
SLAB_MM, EDGE_MM = 3.0, 4.0


def _display_index(case: LabelledCase, level: str) -> np.ndarray:
    """The (lr, si, ap) display index of a reference level."""
    view = case.volume.view
    return view.vox_to_display(case.keypoints_vox[level][None])[0]


@torch.inference_mode()
def s1_heatmap(model: torch.nn.Module, card: dict[str, Any], case: LabelledCase) -> np.ndarray:
    """The model's S1 heatmap, mean over the display slices within ``SLAB_MM`` of the reference L5."""
    model_input = ModelInput.from_card(card)
    view = case.volume.view
    centre, n_slices = round(float(_display_index(case, "L5")[0])), view.display.shape[0]
    half = max(1, math.ceil(SLAB_MM / view.spacing_mm[0]))
    picks = [
        channel_picks(i, n_slices, model_input.in_channels)
        for i in range(max(0, centre - half), min(n_slices, centre + half + 1))
    ]
    needed = sorted({int(i) for pick in picks for i in pick})  # only the slab's slices are resampled
    resampled = network_input(case.volume, model_input, needed)
    at = {index: k for k, index in enumerate(needed)}
    x = np.stack([pad_to_multiple(resampled[[at[int(i)] for i in pick]], model_input.multiple) for pick in picks])
    heat = torch.sigmoid(model(torch.from_numpy(x.astype(np.float32)))["heatmap"]).numpy()
    return heat[:, list(card["labels"]).index("S1")].mean(axis=0)


def propose_s1(case: LabelledCase, heat: np.ndarray, card: dict[str, Any]) -> tuple[np.ndarray, float] | None:
    """The S1 body's display index (on the reference L5's slice) and the heatmap's value there, or None."""
    model_input = ModelInput.from_card(card)
    view = case.volume.view
    spacing = np.asarray(view.spacing_mm[1:])
    l4, l5 = (_display_index(case, level) for level in ("L4", "L5"))
    l5_mm = l5[1:] * spacing
    step = l5_mm - l4[1:] * spacing
    length = float(np.linalg.norm(step))
    rows, cols = np.mgrid[0 : heat.shape[0], 0 : heat.shape[1]]
    stride, pixel_mm = model_input.output_stride, model_input.spacing_mm
    at_mm = np.stack([(rows + 0.5) * stride - 0.5, (cols + 0.5) * stride - 0.5], axis=-1) * pixel_mm
    away = at_mm - l5_mm
    distance = np.linalg.norm(away, axis=-1)
    cosine = (away @ (step / length)) / np.maximum(distance, 1e-6)
    extent_mm = np.array(view.display.shape[1:]) * spacing
    allowed = (distance >= NEAREST * length) & (distance <= FARTHEST * length)
    allowed &= cosine >= math.cos(math.radians(MAX_ANGLE_DEG))
    allowed &= np.all(at_mm < extent_mm - EDGE_MM, axis=-1)
    if not allowed.any():
        return None
    best = np.unravel_index(np.argmax(np.where(allowed, heat, -1.0)), heat.shape)
    return np.array([l5[0], *(at_mm[best] / spacing)]), float(heat[best])


def proposals(model: torch.nn.Module, card: dict[str, Any], cases: Sequence[LabelledCase]) -> dict[str, dict[str, Any]]:
    """Per case that annotates L4 and L5 but not S1: the proposed S1 and L5-S1 (file voxels) and the score.

    Prints every proposal, and on cases that label S1 the distance of the rule's point from it.
    """
    out: dict[str, dict[str, Any]] = {}
    for case in cases:
        if not {"L4", "L5"} <= set(case.keypoints_vox) or "S1" in case.absent:
            continue
        found = propose_s1(case, s1_heatmap(model, card, case), card)
        if found is None:
            print(f"{case.name}: no room for S1 below L5 in the image")
            continue
        s1, score = found
        view = case.volume.view
        if "S1" in case.keypoints_vox:
            truth = _display_index(case, "S1")
            error = float(np.linalg.norm((truth[1:] - s1[1:]) * np.asarray(view.spacing_mm[1:])))
            print(f"{case.name}: labels S1; the rule lands {error:.1f} mm from it (score {score:.2f})")
            continue
        disc = (s1 + _display_index(case, "L5")) / 2
        out[case.name] = {
            "S1": view.display_to_vox(s1[None])[0].tolist(),
            "L5-S1": view.display_to_vox(disc[None])[0].tolist(),
            "score": score,
        }
        print(f"{case.name}: S1 proposed, score {score:.2f}")
    return out


def with_proposals(
    cases: Sequence[LabelledCase], proposed: dict[str, dict[str, Any]], min_score: float
) -> list[LabelledCase]:
    """The cases with the proposals scoring at least ``min_score`` added as keypoints (a case's own levels win)."""
    out = []
    for case in cases:
        found = proposed.get(case.name)
        if found is not None and found["score"] >= min_score:
            added = {level: np.asarray(found[level]) for level in ("S1", "L5-S1") if level not in case.keypoints_vox}
            case = replace(case, keypoints_vox={**case.keypoints_vox, **added})
        out.append(case)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ivdnet-lumbar", help="model folder or bundled name")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--min-score", type=float, default=0.2, help="weakest proposal trained on")
    parser.add_argument("--json", type=Path, help="write the proposals here")
    parser.add_argument("--train", type=Path, metavar="OUT", help="fine-tune the model into this folder")
    parser.add_argument("--without", action="store_true", help="with --train: leave the proposals out (control)")
    parser.add_argument("--minutes", type=float, default=50.0)
    parser.add_argument("--lr", type=float, default=2.5e-4)
    args = parser.parse_args()

    model_dir = find_model_dir(args.model)
    model, card = load_checkpoint(model_dir, device="cpu")
    model.eval()
    cases = load_lumbar_cases(args.data)
    proposed = proposals(model, card, cases)
    kept = sum(p["score"] >= args.min_score for p in proposed.values())
    print(f"{len(proposed)} proposals, {kept} scoring at least {args.min_score}")
    if args.json:
        args.json.write_text(json.dumps(proposed, indent=1))
    if args.train is None:
        return
    train, dev = split_cases(cases, dev_fraction=0.2, seed=0)
    train, dev = unseen_by_parent(train, dev, card.get("trained_on", []))
    if not args.without:
        train = with_proposals(train, proposed, args.min_score)
    taught = [c.name for c in train if c.name in proposed and "S1" in c.keypoints_vox]
    print(f"training on {len(train)} cases ({len(taught)} with a proposed S1), holding out {len(dev)}")
    sample_cfg = with_augmentation(parent_sample_config(model_dir, train), "robust")
    cfg = TrainConfig(model=card["name"], minutes=args.minutes, device="cpu", seed=0, lr=args.lr, keep="last")
    extra = {"pseudo_s1": taught, "min_score": args.min_score}

    def show(report: Progress) -> None:  # a line every 25 epochs (about a minute on one CPU thread)
        if report.detail.epoch % 25 == 0:
            print(report.detail.line(), flush=True)

    saved = run_steps(fit(cfg, sample_cfg, train, dev, args.train, init_from=model_dir, card_extra=extra), show)
    print(json.dumps(saved["metrics"] if saved else None, indent=1))


if __name__ == "__main__":
    main()
