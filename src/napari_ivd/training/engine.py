"""Training engine: fits a registered model on labelled cases, yielding progress as it goes.

The CLI drives :func:`fit` with a plain ``for`` loop; the viewer will drive the same
generator from a napari ``thread_worker`` (stop = stop iterating). Validation runs the real
prediction pipeline (:func:`napari_ivd.inference.predict`) on held-out cases, so the
figures it reports are the ones a user gets.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_ivd.inference import predict, resolve_device
from napari_ivd.metrics import dice_rows, keypoint_rows, summarize_dice, summarize_keypoints
from napari_ivd.models import build, load_checkpoint, registry, save_checkpoint
from napari_ivd.models.losses import IvdLoss
from napari_ivd.skeleton import SkeletonPrior
from napari_ivd.training.cases import LabelledCase
from napari_ivd.training.data import SampleConfig, SliceDataset

log = logging.getLogger(__name__)

#: Error charged to an annotated structure whose level was not predicted (validation score).
MISSED_STRUCTURE_MM = 20.0


@dataclass(frozen=True)
class TrainConfig:
    """How to train: model, optimiser, budget. Defaults train on 2 CPU cores in minutes."""

    model: str = "ivdnet"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 4
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    minutes: float = 10.0
    max_epochs: int = 10_000
    samples_per_epoch: int = 64
    validate_every_min: float = 4.0
    patience: int = 6
    device: str = "auto"
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, for the model card."""
        return asdict(self)


@dataclass(frozen=True)
class TrainProgress:
    """Reported every epoch (and after each validation)."""

    epoch: int
    step: int
    elapsed_s: float
    budget_s: float
    loss: float
    parts: dict[str, float]
    validation: dict[str, Any] | None = None
    improved: bool = False


def in_plane_mm(case: LabelledCase) -> dict[str, tuple[float, float]]:
    """A case's keypoints as (row_mm, col_mm) in its sagittal display plane (for the skeleton)."""
    view = case.volume.view
    spacing = view.spacing_mm
    out = {}
    for name, ijk in case.keypoints_vox.items():
        _, j, k = view.vox_to_display(np.asarray(ijk)[None])[0]
        out[name] = (float(j * spacing[1]), float(k * spacing[2]))
    return out


def fit_skeleton(cases: Sequence[LabelledCase], labels: Sequence[str]) -> SkeletonPrior:
    """The mean normalised skeleton of the training cases' keypoints, over ``labels``."""
    shapes = [{n: p for n, p in in_plane_mm(c).items() if n in labels} for c in cases]
    return SkeletonPrior.fit([s for s in shapes if len(s) >= 3])


def evaluate_cases(
    model: torch.nn.Module, card: dict[str, Any], cases: Sequence[LabelledCase], device: torch.device
) -> dict[str, Any]:
    """Predict every case and summarise the papers' metrics (keypoints per kind, Dice) and latency.

    Only the levels the model names are judged; Dice only for the kinds each case's mask
    annotates. ``predict_seconds`` holds each case's prediction time (model already loaded).
    """
    point_rows, mask_rows, seconds = [], [], []
    for case in cases:
        start = time.perf_counter()
        prediction = predict(case.volume, model, card, device)
        seconds.append(time.perf_counter() - start)
        geometry = case.volume.geometry
        gt_mm = {n: geometry.vox_to_mm(np.asarray(p)[None])[0] for n, p in case.keypoints_vox.items()}
        gt_mm = {n: p for n, p in gt_mm.items() if n in card["labels"]}
        point_rows += keypoint_rows(case.name, {s.name: s.xyz_mm for s in prediction.structures}, gt_mm)
        if case.mask_tss is not None:
            mask_rows += dice_rows(case.name, prediction.mask_tss, case.mask_tss)
    gt = [r for r in point_rows if r.role == "gt"]
    errors = [MISSED_STRUCTURE_MM if r.distance_mm is None else min(r.distance_mm, MISSED_STRUCTURE_MM) for r in gt]
    return {
        "keypoints": summarize_keypoints(point_rows),
        "dice": summarize_dice(mask_rows),
        "error_mm": float(np.mean(errors)) if errors else None,
        "cases": [c.name for c in cases],
        "predict_seconds": [round(t, 3) for t in seconds],
    }


def _lr_at(cfg: TrainConfig, step: int, fraction_done: float) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, fraction_done)))


def fit(
    cfg: TrainConfig,
    sample_cfg: SampleConfig,
    train_cases: Sequence[LabelledCase],
    dev_cases: Sequence[LabelledCase],
    out_dir: Path,
    init_from: Path | None = None,
    card_extra: dict[str, Any] | None = None,
) -> Iterator[TrainProgress]:
    """Train, validating on ``dev_cases`` every few minutes; keep the best model in ``out_dir``.

    Yields a :class:`TrainProgress` per epoch; returns the saved card (``None`` if no
    validation ever ran). Stopping the iteration early leaves the best model saved so far.
    """
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    if init_from is not None:
        model, parent_card = load_checkpoint(init_from, device=device)
        cfg = replace(cfg, model=parent_card["name"])
        config = registry.config_class(cfg.model).from_dict(parent_card["config"])
    else:
        config_cls = registry.config_class(cfg.model)
        overrides = {"labels": list(sample_cfg.labels), **cfg.model_overrides}
        config = config_cls.from_dict({**config_cls().to_dict(), **overrides})
        model = build(cfg.model, config).to(device)
    labels = list(config.labels)
    if list(sample_cfg.labels) != labels:
        raise ValueError(f"sample labels {sample_cfg.labels} differ from the model's {labels}")
    skeleton = fit_skeleton(train_cases, labels)
    card = {
        "name": cfg.model,
        "labels": labels,
        "input": {"spacing_mm": sample_cfg.spacing_mm, "in_channels": sample_cfg.in_channels, "output_stride": 2},
        "skeleton": skeleton.to_dict(),
    }
    dataset = SliceDataset(train_cases, sample_cfg, samples_per_epoch=cfg.samples_per_epoch, seed=cfg.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, num_workers=0)
    loss_fn = IvdLoss()
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    budget_s = cfg.minutes * 60
    start = last_validation = time.perf_counter()
    best: dict[str, Any] | None = None
    saved_card = None
    stale = step = 0
    for epoch in range(cfg.max_epochs):
        model.train()
        dataset.set_epoch(epoch)
        losses, parts_sum = [], {}
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            for group in optimiser.param_groups:
                group["lr"] = _lr_at(cfg, step, (time.perf_counter() - start) / budget_s)
            total, parts = loss_fn(model(batch["image"]), batch)
            if not torch.isfinite(total):
                raise FloatingPointError(f"loss became {total.item()} at step {step}; lower the learning rate")
            optimiser.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimiser.step()
            step += 1
            losses.append(float(total.detach()))
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + float(v)
        now = time.perf_counter()
        out_of_time = now - start >= budget_s
        validation, improved = None, False
        if dev_cases and (out_of_time or now - last_validation >= cfg.validate_every_min * 60):
            model.eval()
            validation = evaluate_cases(model, card, dev_cases, device)
            last_validation = time.perf_counter()
            improved = best is None or validation["error_mm"] < best["error_mm"]
            if improved:
                best, stale = validation, 0
                extra = {
                    "skeleton": card["skeleton"],
                    **(card_extra or {}),
                    "metrics": {"validation": validation},
                    "train_config": cfg.to_dict(),
                    "sample_config": sample_cfg.to_dict(),
                    "trained_on": [c.name for c in train_cases],
                    "training_seconds": round(time.perf_counter() - start, 1),
                    "steps": step,
                    "device": str(device),
                    "torch": torch.__version__,
                }
                save_checkpoint(out_dir, model, cfg.model, config, labels=labels, input_spec=card["input"], extra=extra)
                saved_card = extra
            else:
                stale += 1
        n = max(1, len(losses))
        yield TrainProgress(
            epoch=epoch,
            step=step,
            elapsed_s=time.perf_counter() - start,
            budget_s=budget_s,
            loss=float(np.mean(losses)) if losses else float("nan"),
            parts={k: v / n for k, v in parts_sum.items()},
            validation=validation,
            improved=improved,
        )
        if out_of_time or stale >= cfg.patience:
            break
    return saved_card
