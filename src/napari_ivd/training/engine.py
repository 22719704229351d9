"""Training engine: fits a registered model on labelled cases, a job reporting each epoch.

The CLI drives :func:`fit` with :func:`~napari_ivd.progress.run_steps`; the viewer drives
the same job from a napari worker (stop = stop iterating). Validation runs the real
prediction pipeline (:func:`napari_ivd.inference.predict`) on held-out cases, so the
figures it reports are the ones a user gets.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_ivd.errors import TrainingError
from napari_ivd.inference import Prediction, predict
from napari_ivd.metrics import (
    dice_rows,
    keypoint_rows,
    mean_structure_dice,
    summarize_dice,
    summarize_keypoints,
)
from napari_ivd.models import build, load_checkpoint, registry, resolve_device, save_checkpoint, to_device
from napari_ivd.models.grow import grow_labels
from napari_ivd.preprocess import PAD_MULTIPLE, ModelInput
from napari_ivd.progress import Job, Progress, Tally
from napari_ivd.skeleton import SkeletonPrior
from napari_ivd.training import ddp
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
    validate_every_epochs: int = 0
    patience: int = 6
    device: str = "auto"
    seed: int = 0
    #: "best": keep the weights that validate best (the dev cases then picked them, so their
    #: figures are optimistic); "last": keep where training ends and validate once, there, only
    #: to report, so the dev figures stay an honest estimate.
    keep: str = "best"

    def __post_init__(self) -> None:
        if self.keep not in ("best", "last"):
            raise ValueError(f"keep must be 'best' or 'last', got {self.keep!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, for the model card."""
        return asdict(self)


@dataclass(frozen=True)
class Epoch:
    """The figures of one epoch (and of its validation, when one ran): each training report's ``detail``."""

    epoch: int
    step: int
    elapsed_s: float
    budget_s: float
    loss: float
    parts: dict[str, float]
    validation: dict[str, Any] | None = None
    improved: bool = False
    batch_size: int = 0

    @property
    def fraction(self) -> float:
        """Share of the time budget spent."""
        return self.elapsed_s / self.budget_s if self.budget_s else 1.0

    def line(self) -> str:
        """The epoch in a line of text."""
        text = f"epoch {self.epoch + 1}, step {self.step}, loss {self.loss:.3f}"
        return text if self.validation is None else f"{text}; validated{' (best)' if self.improved else ''}"


def in_plane_mm(case: LabelledCase) -> dict[str, tuple[float, float]]:
    """A case's keypoints as (row_mm, col_mm) in its sagittal display plane (for the skeleton)."""
    view = case.volume.view
    out = {}
    for name, ijk in case.keypoints_vox.items():
        _, row_mm, col_mm = view.vox_to_display_mm(np.asarray(ijk)[None])[0]
        out[name] = (float(row_mm), float(col_mm))
    return out


def _shapes(cases: Sequence[LabelledCase], labels: Sequence[str]) -> list[dict[str, tuple[float, float]]]:
    """Each case's named keypoints in-plane; a case whose names are unsure shapes no skeleton."""
    return [{n: p for n, p in in_plane_mm(c).items() if n in labels} for c in cases if not c.names_unsure]


def fit_skeleton(cases: Sequence[LabelledCase], labels: Sequence[str]) -> SkeletonPrior:
    """The mean normalised skeleton of the training cases' keypoints, over ``labels``."""
    return SkeletonPrior.fit([s for s in _shapes(cases, labels) if len(s) >= 3])


def starting_skeleton(
    parent_card: dict[str, Any] | None, cases: Sequence[LabelledCase], labels: Sequence[str]
) -> dict[str, Any]:
    """The skeleton prior a run starts with: the parent's, grown to ``labels`` from ``cases``; else fitted on them.

    Why keep the parent's: it was learnt from more cases than a handful of corrections; only
    levels it lacks are placed from the training cases that show them.
    """
    if parent_card is None or not parent_card.get("skeleton"):
        return fit_skeleton(cases, labels).to_dict()
    prior = SkeletonPrior.from_dict(parent_card["skeleton"])
    return prior.grown(labels, _shapes(cases, labels)).to_dict()


def evaluate_cases(
    model: torch.nn.Module,
    card: dict[str, Any],
    cases: Sequence[LabelledCase],
    device: torch.device,
    on_prediction: Callable[[LabelledCase, Prediction], None] | None = None,
) -> dict[str, Any]:
    """Predict every case and summarise the papers' metrics (keypoints per kind, Dice) and latency.

    Every level a case annotates is judged, also one the model has no label for (it counts
    as missed), so a parent and a child grown to more levels are compared on the same
    references; Dice only for the kinds each case's mask annotates. ``predict_seconds``
    holds each case's prediction time (model already loaded). ``on_prediction`` sees each
    case's prediction, for figures beyond these without predicting twice.
    """
    return evaluate_groups(model, card, {"all": cases}, device, on_prediction)["all"]


def evaluate_groups(
    model: torch.nn.Module,
    card: dict[str, Any],
    groups: Mapping[str, Sequence[LabelledCase]],
    device: torch.device,
    on_prediction: Callable[[LabelledCase, Prediction], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """:func:`evaluate_cases` for groups of cases that may share cases (all, per source): each predicted once."""
    judged: dict[str, tuple[list, list, float]] = {}
    for case in {c.name: c for cases in groups.values() for c in cases}.values():
        start = time.perf_counter()
        prediction = predict(case.volume, model, card, device)
        seconds = time.perf_counter() - start
        if on_prediction is not None:
            on_prediction(case, prediction)
        geometry = case.volume.geometry
        gt_mm = {n: geometry.vox_to_mm(np.asarray(p)[None])[0] for n, p in case.keypoints_vox.items()}
        points = keypoint_rows(case.name, {s.name: s.xyz_mm for s in prediction.structures}, gt_mm)
        masks = dice_rows(case.name, prediction.mask_tss, case.mask_tss) if case.mask_tss is not None else []
        judged[case.name] = (points, masks, seconds)
    return {name: _summarize([judged[c.name] for c in cases], cases) for name, cases in groups.items()}


def _summarize(judged: Sequence[tuple[list, list, float]], cases: Sequence[LabelledCase]) -> dict[str, Any]:
    point_rows = [row for points, _, _ in judged for row in points]
    mask_rows = [row for _, masks, _ in judged for row in masks]
    gt = [r for r in point_rows if r.role == "gt"]
    errors = [MISSED_STRUCTURE_MM if r.distance_mm is None else min(r.distance_mm, MISSED_STRUCTURE_MM) for r in gt]
    return {
        "keypoints": summarize_keypoints(point_rows),
        "dice": summarize_dice(mask_rows),
        "error_mm": float(np.mean(errors)) if errors else None,
        "cases": [c.name for c in cases],
        "predict_seconds": [round(seconds, 3) for _, _, seconds in judged],
    }


def validation_key(validation: dict[str, Any]) -> tuple[float, float]:
    """Sort key of validation figures, lower is better: keypoint error (mm), then 1 - mean Dice.

    Keypoint error charges each missed structure :data:`MISSED_STRUCTURE_MM`, so a model
    that names fewer levels does not look better; cases with masks only compare by Dice.
    """
    error = validation.get("error_mm")
    dice = mean_structure_dice(validation.get("dice") or {})
    return (math.inf if error is None else float(error), 1.0 - (0.0 if dice is None else float(dice)))


def _lr_at(cfg: TrainConfig, step: int, fraction_done: float) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, fraction_done)))


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed precision on CUDA (bf16 where supported, else fp16); full precision on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _starting_model(
    cfg: TrainConfig, sample_cfg: SampleConfig, init_from: Path | None, device: torch.device
) -> tuple[TrainConfig, Any, torch.nn.Module, dict[str, Any] | None]:
    """(config with the model's name, model config, model on ``device``, parent card or None).

    A parent is grown to the sample labels when they hold levels it lacks (:func:`grow_labels`).
    """
    if init_from is not None:
        model, parent_card = load_checkpoint(init_from, device=device)
        cfg = replace(cfg, model=parent_card["name"])
        if set(model.config.labels) <= set(sample_cfg.labels):
            model = grow_labels(model, sample_cfg.labels)
        return cfg, model.config, model, parent_card
    config_cls = registry.config_class(cfg.model)
    overrides = {"labels": list(sample_cfg.labels), **cfg.model_overrides}
    config = config_cls.from_dict({**config_cls().to_dict(), **overrides})
    return cfg, config, to_device(build(cfg.model, config), device), None


def trained_on(parent_card: dict[str, Any] | None, train_cases: Sequence[LabelledCase]) -> list[str]:
    """Every case whose labels shaped the weights: the parent's (its card's ``trained_on``), then this run's.

    A model fine-tuned or grown from a parent has seen what the parent saw, so judging it
    "on cases it never saw" (``judged_cases(..., unseen=True)``) must leave those out too.
    """
    inherited = list((parent_card or {}).get("trained_on", []))
    known = set(inherited)
    return inherited + [c.name for c in train_cases if c.name not in known]


def initialised_from(init_from: Path | None, parent_card: dict[str, Any] | None) -> dict[str, Any]:
    """The card entry naming the weights a run started from (folder and sha256); empty from scratch.

    Written by the engine so a model grown or continued from another (``train --init``) says
    which one without a hand-edited card; a store's fine-tune adds its own ``parent`` entry.
    """
    if init_from is None or parent_card is None:
        return {}
    return {"init_from": {"folder": Path(init_from).name, "weights_sha256": parent_card.get("weights_sha256")}}


def fit(
    cfg: TrainConfig,
    sample_cfg: SampleConfig,
    train_cases: Sequence[LabelledCase],
    dev_cases: Sequence[LabelledCase],
    out_dir: Path,
    init_from: Path | None = None,
    card_extra: dict[str, Any] | None = None,
) -> Job[dict[str, Any] | None]:
    """Train, validating on ``dev_cases``; keep the best (or, ``cfg.keep == "last"``, the last) model in ``out_dir``.

    Validation runs every ``validate_every_epochs`` epochs (or, when that is 0, every
    ``validate_every_min`` minutes), after the last epoch and when the time budget is spent
    (with ``keep == "last"`` only then); training stops early after ``patience`` validations
    worse than the best (one as good as the best replaces it and resets the count). Fine-tuning
    (``init_from``) keeps the parent's skeleton prior, learnt from more cases than a
    handful of corrections; when ``sample_cfg.labels`` hold levels the parent lacks, the
    parent's heads and prior grow to them (:func:`starting_skeleton`), and the card's
    ``trained_on`` lists the parent's cases before this run's (:func:`trained_on`). On CUDA the forward
    pass runs in mixed precision and an out-of-memory step halves the batch and goes on. Under ``torchrun`` (see
    :mod:`napari_ivd.training.ddp`) every rank trains and only rank 0 validates and saves.

    A job of one step, measured by its budget: it reports every epoch (its :class:`Epoch`
    as the report's ``detail``, the share of the time or epoch budget spent as its
    progress); its result is the saved card (``None`` if no validation ever ran). Stopping
    the iteration early leaves the best model saved so far.
    Without ``dev_cases`` the model is saved once, when training ends, un-judged (its card's
    ``metrics.validation`` is ``None``).

    Raises
    ------
    TrainingError
        The loss became NaN or infinite (nothing more is saved).
    """

    def body(tally: Tally) -> Generator[Progress, None, dict[str, Any] | None]:
        return (yield from _fit(tally, cfg, sample_cfg, train_cases, dev_cases, out_dir, init_from, card_extra))

    return Job(1, body)


def _fit(
    tally: Tally,
    cfg: TrainConfig,
    sample_cfg: SampleConfig,
    train_cases: Sequence[LabelledCase],
    dev_cases: Sequence[LabelledCase],
    out_dir: Path,
    init_from: Path | None,
    card_extra: dict[str, Any] | None,
) -> Generator[Progress, None, dict[str, Any] | None]:
    """The body of :func:`fit`."""
    ranks = ddp.current()
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    cfg, config, model, parent_card = _starting_model(cfg, sample_cfg, init_from, device)
    labels = list(config.labels)
    if list(sample_cfg.labels) != labels:
        raise ValueError(f"sample labels {sample_cfg.labels} differ from the model's {labels}")
    skeleton = starting_skeleton(parent_card, train_cases, labels)
    seen = trained_on(parent_card, train_cases)
    card = {
        "name": cfg.model,
        "labels": labels,
        "input": ModelInput(
            spacing_mm=sample_cfg.spacing_mm,
            in_channels=sample_cfg.in_channels,
            multiple=int(getattr(model, "input_multiple", PAD_MULTIPLE)),
        ).to_dict(),
        "skeleton": skeleton,
    }
    per_rank = math.ceil(cfg.samples_per_epoch / ranks.world)
    dataset = SliceDataset(train_cases, sample_cfg, samples_per_epoch=per_rank, seed=cfg.seed + 7919 * ranks.rank)
    batch_size = cfg.batch_size
    trained = ddp.wrap(model, device)
    loss_fn = registry.loss_for(cfg.model, config).to(device)
    # a loss may learn too (HCA-Net's skeleton-loss weight), so its parameters are optimised with the model's
    learnable = [*trained.parameters(), *loss_fn.parameters()]
    optimiser = torch.optim.AdamW(learnable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    amp_dtype = _autocast_dtype(device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    budget_s = cfg.minutes * 60
    start = last_validation = time.perf_counter()
    best: dict[str, Any] | None = None
    saved_card = None
    stale = step = 0

    def save(validation: dict[str, Any] | None) -> dict[str, Any]:
        extra = {
            "skeleton": card["skeleton"],
            **initialised_from(init_from, parent_card),
            **(card_extra or {}),
            "metrics": {"validation": validation},
            "train_config": cfg.to_dict(),
            "sample_config": sample_cfg.to_dict(),
            "trained_on": seen,
            "training_seconds": round(time.perf_counter() - start, 1),
            "steps": step,
            "device": str(device),
            "processes": ranks.world,
            "torch": torch.__version__,
        }
        save_checkpoint(out_dir, model, cfg.model, config, labels=labels, input_spec=card["input"], extra=extra)
        return extra

    for epoch in range(cfg.max_epochs):
        trained.train()
        dataset.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
        losses, parts_sum = [], {}
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            for group in optimiser.param_groups:
                group["lr"] = _lr_at(cfg, step, (time.perf_counter() - start) / budget_s)
            try:
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    output = trained(batch["image"])
                total, parts = loss_fn({k: v.float() for k, v in output.items()}, batch)
                if not torch.isfinite(total):
                    raise TrainingError(
                        f"the training loss became {total.item()} at step {step}; nothing more was saved. "
                        "Lower the learning rate, or check the corrected cases for broken masks or points"
                    )
                optimiser.zero_grad(set_to_none=True)
                scaler.scale(total).backward()
                scaler.unscale_(optimiser)
                torch.nn.utils.clip_grad_norm_(learnable, 5.0)
                scaler.step(optimiser)
                scaler.update()
            except RuntimeError as exc:
                if not _is_out_of_memory(exc) or batch_size == 1 or ranks.world > 1:
                    raise
                optimiser.zero_grad(set_to_none=True)
                batch_size //= 2
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                log.warning("out of memory at step %d; going on with batches of %d", step, batch_size)
                break  # the next epoch uses the smaller batch
            step += 1
            losses.append(float(total.detach()))
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + float(v)
        now = time.perf_counter()
        out_of_time = now - start >= budget_s
        last_epoch = epoch == cfg.max_epochs - 1
        if cfg.keep == "last":  # the dev cases only report: once, where training ends
            due = False
        elif cfg.validate_every_epochs:
            due = (epoch + 1) % cfg.validate_every_epochs == 0
        else:
            due = now - last_validation >= cfg.validate_every_min * 60
        validation, improved = None, False
        if ranks.main and dev_cases and (out_of_time or last_epoch or due):
            model.eval()
            validation = evaluate_cases(model, card, dev_cases, device)
            last_validation = time.perf_counter()
            # a tie replaces the best (longer training on the same evidence) and is not counted as
            # stale: held-out figures that cannot move (a case at the missed-structure cap) must not
            # end the run after a few validations
            improved = cfg.keep == "last" or best is None or validation_key(validation) <= validation_key(best)
            if improved:
                best, stale = validation, 0
                saved_card = save(validation)
            else:
                stale += 1
        n = max(1, len(losses))
        figures = Epoch(
            epoch=epoch,
            step=step,
            elapsed_s=time.perf_counter() - start,
            budget_s=budget_s,
            loss=float(np.mean(losses)) if losses else float("nan"),
            parts={k: v / n for k, v in parts_sum.items()},
            validation=validation,
            improved=improved,
            batch_size=batch_size,
        )
        yield tally.partial(max(figures.fraction, (epoch + 1) / cfg.max_epochs), figures.line(), figures)
        if ddp.agree(out_of_time or (cfg.keep == "best" and stale >= cfg.patience)):
            break
    if ranks.main and not dev_cases:  # nothing to judge by: the model as training left it
        model.eval()
        saved_card = save(None)
    return saved_card
