"""Data-parallel training across processes started by ``torchrun`` (NCCL on GPUs, gloo on CPU).

``torchrun --nproc_per_node=N -m napari_ivd.cli train ...`` sets ``WORLD_SIZE``, ``RANK``
and ``LOCAL_RANK``; :func:`process_group` joins the group for the run's duration. The
engine asks :func:`current` who it is: every rank trains on its own sample stream with
gradients averaged by DistributedDataParallel; only rank 0 validates, saves and writes to
the store, and tells the others when to stop (:func:`agree`), so no rank waits forever on
a collective the others skipped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

__all__ = ["Ranks", "agree", "current", "process_group", "wrap"]


@dataclass(frozen=True)
class Ranks:
    """This process's place in the group (``world == 1`` outside torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """True on the process that validates, saves and reports."""
        return self.rank == 0


def current() -> Ranks:
    """The running group, or a single process when none was started."""
    if not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


@contextmanager
def process_group(device: str = "auto") -> Iterator[Ranks]:
    """Join the torchrun group for the duration of a run (nothing to do when not under torchrun).

    NCCL when the run uses CUDA, gloo otherwise; each process then uses GPU ``LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        yield current()
        return
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    ranks = current()
    log.info("joined %s process group as rank %d of %d", dist.get_backend(), ranks.rank, ranks.world)
    try:
        yield ranks
        dist.barrier()  # rank 0 may still be writing the model when the others are done
    finally:
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when a group is running, else as it is."""
    if current().world == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def agree(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank (a stop decision), so all ranks take the same branch."""
    if current().world == 1:
        return flag
    backend_cuda = dist.get_backend() == "nccl"
    value = torch.tensor([int(flag)], device="cuda" if backend_cuda else "cpu")
    dist.broadcast(value, src=0)
    return bool(value.item())
