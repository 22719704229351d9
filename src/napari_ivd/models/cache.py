"""Loaded models kept in memory by folder, device and file times, so predicting the next case does not reload them."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from napari_ivd.models.device import resolve_device
from napari_ivd.models.lookup import find_model_dir
from napari_ivd.models.registry import load_checkpoint

log = logging.getLogger(__name__)

__all__ = ["ModelCache"]


class ModelCache:
    """Loaded models kept between predictions, so the next case does not reload the weights.

    Keyed by folder, device and the files' modification times (a retrained model in the
    same folder is reloaded). Safe to use from one worker thread at a time.
    """

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._models: dict[tuple[Any, ...], tuple[Any, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def get(self, model: str | Path | None, device: str) -> tuple[Any, dict[str, Any], str]:
        """The model, its card and the resolved device name; loads it on first use.

        Raises
        ------
        CheckpointError
            Not a model folder nor a bundled model name, or a damaged checkpoint.
        """
        model_dir = find_model_dir(model).resolve()
        torch_device = resolve_device(device)
        stamps = tuple(f.stat().st_mtime_ns for f in sorted(model_dir.glob("*")) if f.is_file())
        key = (str(model_dir), str(torch_device), stamps)
        with self._lock:
            if key not in self._models:
                log.info("loading model %s on %s", model_dir, torch_device)
                loaded = load_checkpoint(model_dir, device=torch_device)
                self._models[key] = loaded
                while len(self._models) > self.size:
                    self._models.pop(next(iter(self._models)))
            net, card = self._models[key]
        return net, card, str(torch_device)
