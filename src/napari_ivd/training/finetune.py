"""Fine-tune the active model on a store's corrected cases and keep the result as a new version.

One run: plan the cases (:mod:`.store_cases`), score the parent on the held-out cases,
train from the parent's weights with :func:`napari_ivd.training.engine.fit`, store the best
checkpoint under ``models/`` with a card naming its parent, the exact case revisions,
hyper-parameters, the held-out cases and the validation figures of parent and child on
them (same cases, same run), and make it the active model only when it validates better
than its parent and names no structure differently from it on the store's other cases
(up to six, :mod:`.promotion`: one held-out case cannot see a chain named one level off
elsewhere). Held-out cases never hold a model's own unchanged output
(:func:`~napari_ivd.training.store_cases.can_judge`); when the store has no such case to
hold out, the run trains on every case and stores the result un-judged, not active (the
user may make it active by hand). Nothing reaches the store before the run has finished:
a cancelled or failed run leaves the store as it was.

A run is a job (:mod:`napari_ivd.progress`): the viewer drives :func:`finetune_steps` in a
worker; ``napari-ivd train --store`` drives it with ``run_steps``, under ``torchrun`` too
(only rank 0 evaluates and writes).

Example
-------
>>> result = run_steps(finetune_steps(store, FineTuneConfig(minutes=5)))
>>> result.activated, result.reason
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from napari_ivd.errors import TrainingError
from napari_ivd.model_versions import ModelChoice, active_choice, model_choices, model_folder, validation_figure
from napari_ivd.models import load_checkpoint, read_card, resolve_device
from napari_ivd.progress import Job, Progress, Tally
from napari_ivd.store import AnnotationStore, ModelInfo
from napari_ivd.store.schema import default_author
from napari_ivd.training import ddp
from napari_ivd.training.cases import LabelledCase, labels_of
from napari_ivd.training.data import SampleConfig
from napari_ivd.training.engine import Epoch, TrainConfig, evaluate_cases, fit, validation_key
from napari_ivd.training.promotion import Renamed, compare_versions
from napari_ivd.training.store_cases import NOT_JUDGED, TrainingPlan, load_planned_cases, plan_training

log = logging.getLogger(__name__)

__all__ = ["FineTuneConfig", "FineTuneResult", "Phase", "finetune_steps", "parent_choice"]

#: Steps of a run's progress the training takes, against one each for reading the cases,
#: scoring the parent and storing the result: most of a run's time is training.
TRAINING_STEPS = 18


@dataclass(frozen=True)
class FineTuneConfig:
    """Fine-tuning settings; the defaults need no choices (five minutes, early stopping)."""

    minutes: float = 5.0
    epochs: int | None = None
    lr: float = 5e-4
    batch_size: int = 4
    samples_per_epoch: int = 32
    validate_every_epochs: int = 2
    patience: int = 4
    validation_fraction: float = 0.2
    device: str = "auto"
    seed: int = 0

    def train_config(self) -> TrainConfig:
        """The engine's settings for this run (short warm-up: the weights are trained already)."""
        return TrainConfig(
            batch_size=self.batch_size,
            lr=self.lr,
            warmup_steps=10,
            minutes=self.minutes,
            max_epochs=self.epochs or 1_000_000,
            samples_per_epoch=self.samples_per_epoch,
            validate_every_epochs=self.validate_every_epochs,
            patience=self.patience,
            device=self.device,
            seed=self.seed,
        )


@dataclass(frozen=True)
class Phase:
    """What a run's report is about (its ``detail``): the phase, and the engine's figures while training."""

    name: str  # "reading", "baseline", "training", "comparing", "saving"
    epoch: Epoch | None = None
    before: dict[str, Any] | None = None


@dataclass(frozen=True)
class FineTuneResult:
    """What a finished run produced (``model`` is None on ranks other than 0 under torchrun)."""

    model: ModelInfo | None
    parent: str
    activated: bool
    reason: str
    before: dict[str, Any]
    after: dict[str, Any]
    plan: TrainingPlan


def parent_choice(store: AnnotationStore, parent: str | None) -> ModelChoice:
    """The model a run starts from: ``parent`` (a stored id or bundled name) or the store's active model.

    Raises
    ------
    TrainingError
        ``parent`` names no stored or bundled model.
    """
    if parent is None:
        return active_choice(store)
    choices = model_choices(store)
    for choice in choices:
        if choice.key == parent:
            return choice
    known = ", ".join(c.key for c in choices)
    raise TrainingError(f"no model {parent!r} in {store.location} or bundled (available: {known})")


def finetune_steps(
    store: AnnotationStore,
    cfg: FineTuneConfig | None = None,
    *,
    parent: str | None = None,
    author: str | None = None,
) -> Job[FineTuneResult]:
    """Fine-tune ``parent`` (default: the active model) on the store's corrected cases.

    A job (stop iterating to cancel: nothing is written) whose reports carry their
    :class:`Phase`; its result is a :class:`FineTuneResult`. Making it plans the cases.

    Raises
    ------
    TrainingError
        No corrected case, an unknown parent, a diverging loss, or no validation within
        the budget.
    CheckpointError
        The parent's weights cannot be loaded.
    """
    cfg = cfg or FineTuneConfig()
    plan = plan_training(store, cfg.validation_fraction)
    reading = load_planned_cases(store, plan)
    compared = plan.compared if plan.judged else ()

    def body(tally: Tally) -> Generator[Progress, None, FineTuneResult]:
        yield tally.partial(0.0, plan.describe(), Phase("reading"))
        train_cases, val_cases = yield from tally.run(
            reading, steps=1, describe=lambda r: (r.message, Phase("reading"))
        )
        return (yield from _run(tally, store, cfg, plan, train_cases, val_cases, compared, parent, author))

    return Job(1 + 1 + TRAINING_STEPS + len(compared) + 1, body)  # reading, baseline, training, comparing, saving


def _run(
    tally: Tally,
    store: AnnotationStore,
    cfg: FineTuneConfig,
    plan: TrainingPlan,
    train_cases: list[LabelledCase],
    val_cases: list[LabelledCase],
    compared: Sequence[str],
    parent: str | None,
    author: str | None,
) -> Generator[Progress, None, FineTuneResult]:
    """The run once its cases are read: score the parent, train, judge the child, store it."""
    ranks = ddp.current()
    choice = parent_choice(store, parent)
    parent_dir = model_folder(store, choice.key)
    device = resolve_device(cfg.device)
    before: dict[str, Any] = {}
    if ranks.main and val_cases:
        yield tally.step(f"scoring {choice.key} on the {len(val_cases)} held-out cases", Phase("baseline"))
        model, card = load_checkpoint(parent_dir, device=device)
        before = evaluate_cases(model, card, val_cases, device)
        del model
    else:
        tally.skip(1)
    sample_cfg = parent_sample_config(parent_dir, train_cases)
    extra = {
        "parent": {"model": choice.key, "stored": choice.stored, "weights_sha256": choice.card.get("weights_sha256")},
        "case_revisions": plan.revisions(),
        "store": store.location,
        "hyperparameters": asdict(cfg),
        "held_out": {"cases": [c.name for c in val_cases], "count": len(val_cases)},
        "train_only": dict(plan.train_only),
        "metrics_before": {"validation": before or None},
        "author": author or default_author(),
    }
    start = time.perf_counter()

    def training(report: Progress) -> tuple[str, Phase]:
        return _train_line(report.detail, cfg.epochs), Phase("training", report.detail, before)

    with tempfile.TemporaryDirectory(prefix="napari-ivd-finetune-") as tmp:
        out_dir = Path(tmp) / "model"
        fitting = fit(
            cfg.train_config(), sample_cfg, train_cases, val_cases, out_dir, init_from=parent_dir, card_extra=extra
        )
        saved = yield from tally.run(fitting, steps=TRAINING_STEPS, describe=training)
        if not ranks.main:
            return FineTuneResult(None, choice.key, False, "rank > 0 writes nothing", before, {}, plan)
        if saved is None:
            raise TrainingError("fine-tuning ended before any validation ran; give it more time or epochs")
        after = saved["metrics"]["validation"] or {}
        better = bool(val_cases) and validation_key(after) < validation_key(before)
        renamed: list[Renamed] = []
        if better and compared:
            comparing = compare_versions(store, compared, parent_dir, out_dir, device)
            renamed = yield from tally.run(comparing, describe=lambda r: (r.message, Phase("comparing", None, before)))
        else:
            tally.skip(len(compared))
        yield tally.step("storing the new model version", Phase("saving", None, before))
        info = store.add_model(out_dir)
    reason = _verdict(choice.key, val_cases, before, after, better, compared, renamed)
    activated = better and not renamed
    if activated:
        store.set_active_model(info.model_id, stored=True, reason=reason, author=author)
    log.info("fine-tuned %s -> %s in %.0f s: %s", choice.key, info.model_id, time.perf_counter() - start, reason)
    return FineTuneResult(info, choice.key, activated, reason, before, after, plan)


def _verdict(
    parent: str,
    val_cases: Sequence[LabelledCase],
    before: dict[str, Any],
    after: dict[str, Any],
    better: bool,
    compared: Sequence[str],
    renamed: Sequence[Renamed],
) -> str:
    """Why the new version is, or is not, the active model now (the run's last line)."""
    if not val_cases:
        return NOT_JUDGED
    held = f"{len(val_cases)} held-out case{'s' if len(val_cases) != 1 else ''}"
    figures = f"{validation_figure(after)} vs {validation_figure(before)}"
    if not better:
        return f"kept {parent} active: the new version validates no better on {held} ({figures})"
    if renamed:
        cases = "; ".join(r.describe() for r in renamed)
        return (
            f"kept {parent} active: the new version validates better on {held} ({figures}) but names "
            f"{len(renamed)} of {len(compared)} other cases differently from {parent} at the same places "
            f"({cases}); open them to see which is right, then make it active by hand or correct them and train again"
        )
    return f"validates better than its parent {parent} on {held}: {figures}"


def parent_sample_config(parent_dir: Path, cases: Sequence[LabelledCase] = ()) -> SampleConfig:
    """The parent's sampling settings (same spacing, channels), its labels grown to the levels ``cases`` name.

    The labels are the cranio-caudal union of the parent's and the cases' keypoint levels,
    so fine-tuning learns every level its cases carry (:func:`~napari_ivd.models.grow.grow_labels`).
    """
    card = read_card(parent_dir)
    sample_cfg = SampleConfig.from_dict(card["sample_config"]) if card.get("sample_config") else SampleConfig()
    return replace(sample_cfg, labels=labels_of(cases, also=card["labels"]))


def _train_line(p: Epoch, epochs: int | None) -> str:
    left = max(0.0, p.budget_s - p.elapsed_s)
    budget = f"of {epochs}" if epochs else f"({left / 60:.1f} min left)"
    line = f"epoch {p.epoch + 1} {budget}, step {p.step}, loss {p.loss:.3f}"
    if p.validation is not None:
        line += f"; validation {validation_figure(p.validation)}{' (best)' if p.improved else ''}"
    return line
