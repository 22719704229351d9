"""The models a store can predict with: the bundled starters and the versions fine-tuned into it.

A store remembers its active model (:meth:`AnnotationStore.active_model`); without one the
bundled starter model is active. Stored versions are exported, checked against their
sha256, to a folder per weights digest under the temporary directory, so loading them
goes through the same safetensors path as every other model and a version is exported
once however often it is used.

The figure shown next to a model says what it was measured on: a fine-tuned version shows
its score and its parent's on the same held-out cases of this store, from the same run;
any other model shows its card's own dev-set figure, labelled as not this store's.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_ivd.errors import CheckpointError
from napari_ivd.metrics import mean_structure_dice
from napari_ivd.models import (
    DEFAULT_MODEL,
    TORCH_WEIGHT_SUFFIXES,
    bundled_model_names,
    find_model_dir,
    import_torch_weights,
    read_card,
)
from napari_ivd.store import AnnotationStore, ModelInfo
from napari_ivd.store.content import file_sha256

log = logging.getLogger(__name__)

__all__ = [
    "ModelChoice",
    "active_choice",
    "model_choices",
    "model_folder",
    "stored_model",
    "validation_figure",
    "validation_summary",
]

_EXPORT_ROOT_ENV = "NAPARI_IVD_MODEL_CACHE"


@dataclass(frozen=True)
class ModelChoice:
    """A model the user can pick: a stored version (by id) or a bundled model (by name)."""

    key: str
    stored: bool
    card: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def label(self, active: bool = False) -> str:
        """What a model list shows: name, origin and what its figure was measured on, and whether it is active."""
        text = f"{self.key} ({validation_summary(self.card, self.stored)})"
        return f"★ {text}" if active else text


def validation_figure(validation: dict[str, Any] | None, with_dice: bool = True) -> str:
    """``"0.46 mm"`` and ``", Dice 0.91"`` when masks were scored (Dice alone when no keypoints were).

    ``with_dice=False`` keeps the keypoint error alone when there is one (a model list's short label).
    """
    validation = validation or {}
    error = validation.get("error_mm")
    dice = mean_structure_dice(validation.get("dice") or {})
    parts = [] if error is None else [f"{error:.2f} mm"]
    if dice is not None and (with_dice or not parts):
        parts.append(f"Dice {dice:.2f}")
    return ", ".join(parts) or "no keypoints"


def validation_summary(card: dict[str, Any], stored: bool = True) -> str:
    """Where a model comes from and what its figure means here.

    A version fine-tuned in a store: "fine-tuned from P: 0.46 mm vs parent 0.60 mm on 3
    held-out cases" (both scored in the same run on the same cases), or that it was not
    judged. Any other model: its card's dev-set figure, which is not comparable with them.
    """
    parent = (card.get("parent") or {}).get("model")
    after = (card.get("metrics") or {}).get("validation")
    if parent is not None:
        if not after:
            return f"fine-tuned from {parent}: not judged, no independent held-out case"
        before = (card.get("metrics_before") or {}).get("validation")
        n = len(after.get("cases") or [])
        cases = f"{n} held-out case{'s' if n != 1 else ''}"
        figures = f"{validation_figure(after, False)} vs parent {validation_figure(before, False)}"
        return f"fine-tuned from {parent}: {figures} on {cases}"
    origin = "stored" if stored else "bundled"
    if not after:
        return origin
    return f"{origin}; {validation_figure(after, False)} on its card's dev set, not this store's"


def model_choices(store: AnnotationStore | None) -> list[ModelChoice]:
    """Bundled models first, then the store's versions in the order they were added."""
    choices = [ModelChoice(name, False, read_card(find_model_dir(name))) for name in bundled_model_names()]
    if store is not None:
        stored = sorted(store.list_models(), key=lambda m: m.added_utc)
        choices += [ModelChoice(m.model_id, True, m.card) for m in stored]
    return choices


def active_choice(store: AnnotationStore | None) -> ModelChoice:
    """The store's active model, or the bundled starter when it has none (or none is open)."""
    active = None if store is None else store.active_model()
    key, stored = (DEFAULT_MODEL, False) if active is None else (active.model, active.stored)
    for choice in model_choices(store):
        if choice.key == key and choice.stored == stored:
            return choice
    log.warning("active model %s is no longer available; using %s", key, DEFAULT_MODEL)
    return ModelChoice(DEFAULT_MODEL, False, read_card(find_model_dir(DEFAULT_MODEL)))


def _export_root() -> Path:
    return Path(os.environ.get(_EXPORT_ROOT_ENV) or Path(tempfile.gettempdir()) / "napari-ivd-models")


def stored_model(store: AnnotationStore | None, model: str | Path | None) -> ModelInfo | None:
    """The store's version named ``model`` (a model id), or None when ``model`` names no stored version."""
    if store is None or model is None:
        return None
    return {m.model_id: m for m in store.list_models()}.get(str(model))


def model_folder(store: AnnotationStore | None, model: str | Path | None) -> Path:
    """A model folder to load for ``model``: a stored version's id, a ``.pt`` file, a folder or a bundled name.

    Stored versions are exported once; a PyTorch ``.pt``/``.pth`` state dict for the
    starter architecture is converted once (:func:`napari_ivd.models.import_torch_weights`);
    anything else goes to :func:`napari_ivd.models.find_model_dir`.

    Raises
    ------
    CheckpointError
        Not a stored version, a model folder nor a bundled model.
    StoreError
        The stored version's bytes no longer match their sha256.
    """
    found = stored_model(store, model)
    if found is not None:
        assert store is not None
        folder = _export_root() / f"{found.model_id}-{found.weights_sha256[:16]}"
        if not (folder / "card.json").is_file():
            staging = Path(tempfile.mkdtemp(prefix=".export-", dir=_ensure(folder.parent)))
            store.export_model(found.model_id, staging)
            _publish(staging, folder)
        return folder
    if model is not None and Path(model).suffix.lower() in TORCH_WEIGHT_SUFFIXES:
        return _converted(Path(model))
    return find_model_dir(model)


def _converted(weights_file: Path) -> Path:
    """A model folder for a PyTorch weights file (its sha256 names it, so it is converted once)."""
    if not weights_file.is_file():
        raise CheckpointError(f"{weights_file}: no such weights file")
    folder = _export_root() / f"imported-{file_sha256(weights_file)[:16]}"
    if not (folder / "card.json").is_file():
        staging = Path(tempfile.mkdtemp(prefix=".import-", dir=_ensure(folder.parent)))
        import_torch_weights(weights_file, find_model_dir(None), staging)
        _publish(staging, folder)
    return folder


def _publish(staging: Path, folder: Path) -> None:
    try:
        staging.rename(folder)
    except OSError:  # another thread made it meanwhile
        shutil.rmtree(staging, ignore_errors=True)


def _ensure(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder
