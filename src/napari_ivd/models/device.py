"""Which device a model runs on: ``"auto"`` picks CUDA when torch sees one."""

from __future__ import annotations

import os

import torch

__all__ = ["cuda_available", "resolve_device", "usable_cpus"]


def cuda_available() -> bool:
    """True when torch sees a CUDA device (the viewer offers ``cuda`` only then)."""
    return bool(torch.cuda.is_available())


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, e.g. under ``taskset`` or a batch scheduler).

    ``os.cpu_count`` counts the whole machine, so runs split by it oversubscribe a process that was
    given fewer cores; where affinity is unknown (macOS), the machine's count stands in.
    """
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
