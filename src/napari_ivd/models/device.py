"""Which device a model runs on: ``"auto"`` picks CUDA when torch sees one."""

from __future__ import annotations

import torch

__all__ = ["cuda_available", "resolve_device"]


def cuda_available() -> bool:
    """True when torch sees a CUDA device (the viewer offers ``cuda`` only then)."""
    return bool(torch.cuda.is_available())


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
