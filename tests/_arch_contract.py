"""What the architecture tests share: a tiny config of every network, synthetic batches, training.

``test_model_contract.py`` checks the docs/pipeline.md contract for every registered
architecture through the paths training and inference use (``build``, ``loss_for``,
``decode``, ``save_checkpoint``/``load_checkpoint``); the per-architecture files test what
is their own. All of them import from here.

Importing :func:`seeded_single_thread` into a test module makes it autouse there.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from napari_ivd.models import (
    DenseAsppConfig,
    HcaNetConfig,
    HourglassConfig,
    IvdNetConfig,
    ModelConfig,
    ScarNetConfig,
    SpineOneConfig,
    UNetConfig,
    build,
    registry,
    save_checkpoint,
)
from napari_ivd.models.decode import decode, input_to_output_px

TWO_LABELS = ("L4", "L4-L5")
INPUT_SPEC = {"spacing_mm": 1.0, "norm": "percentile_0.5_99.5"}
#: Input pixels between consecutive labels' keypoints in :func:`keypoint_batch`.
LABEL_STEP_PX = 10.0


@dataclass(frozen=True)
class Tiny:
    """A registered architecture at test size.

    Attributes
    ----------
    config : ModelConfig
        Two labels, a few channels: a forward pass takes milliseconds on a CPU.
    multiple : int
        H and W of an input must be multiples of this.
    switch : str or None
        The config's boolean field that removes the paper's addition (its ablation).
    """

    config: ModelConfig
    multiple: int
    switch: str | None


TINY: dict[str, Tiny] = {
    "ivdnet": Tiny(IvdNetConfig(labels=TWO_LABELS, widths=(8, 8, 8, 8), aspp_rates=(2, 4)), 8, "attention"),
    "unet": Tiny(UNetConfig(labels=TWO_LABELS, base_channels=4, depth=2), 4, None),
    "denseaspp": Tiny(
        DenseAsppConfig(labels=TWO_LABELS, widths=(4, 8, 8), aspp_width=8, growth=4, dense_layers=1), 4, "spine_region"
    ),
    "hourglass": Tiny(HourglassConfig(labels=TWO_LABELS, features=16, depth=3), 8, "attention"),
    "hcanet": Tiny(HcaNetConfig(labels=TWO_LABELS, features=16, depth=3), 8, "attention"),
    "spineone": Tiny(
        SpineOneConfig(
            labels=TWO_LABELS,
            stem_width=8,
            widths=(8, 8, 8, 8),
            aspp_channels=8,
            aspp_rates=(1, 2),
            low_level_channels=8,
            feature_channels=8,
            head_channels=8,
        ),
        16,
        "attention",
    ),
    "scarnet": Tiny(
        ScarNetConfig(
            labels=TWO_LABELS,
            stem_widths=(8, 8),
            block_widths=(8, 8, 8),
            aspp_channels=8,
            aspp_rates=(1, 2),
            low_level_channels=8,
            decoder_channels=8,
            at_channels=8,
            head_channels=8,
        ),
        16,
        "attention",
    ),
}


@contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op thread: reproducible, and fast on a shared CPU where several threads compete with other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def seeded_single_thread() -> Iterator[None]:
    """Every test starts from seed 0 on one thread (autouse in each module that imports it)."""
    with single_thread():
        torch.manual_seed(0)
        yield


# --------------------------------------------------------------------------------------------
# Synthetic batches with every key SliceDataset yields
# --------------------------------------------------------------------------------------------


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    axis = torch.arange(size, dtype=torch.float32)
    return torch.meshgrid(axis, axis, indexing="ij")


def _empty_batch(n: int, k: int, size: int, generator: torch.Generator | None = None) -> dict:
    """Noise images, every label visible, no targets yet: ``SliceDataset``'s keys and shapes.

    ``image`` (n, 1, H, W), ``heatmap`` (n, k, H/2, W/2), ``visible`` (n, k), ``offset``
    (n, 2k, H/2, W/2), ``offset_mask`` (n, k, H/2, W/2), ``seg`` and ``seg_valid`` (n, 2, H, W),
    ``keypoints`` (n, k, 2) input pixels (NaN until placed), ``origin_px`` (n, 2),
    ``case_index`` and ``slice_index`` (n,).
    """
    h = size // 2
    return {
        "image": 0.1 * torch.rand(n, 1, size, size, generator=generator),
        "heatmap": torch.zeros(n, k, h, h),
        "visible": torch.ones(n, k),
        "offset": torch.zeros(n, 2 * k, h, h),
        "offset_mask": torch.zeros(n, k, h, h),
        "seg": torch.zeros(n, 2, size, size),
        "seg_valid": torch.ones(n, 2, size, size),
        "keypoints": torch.full((n, k, 2), math.nan),
        "origin_px": torch.zeros(n, 2),
        "case_index": torch.arange(n),
        "slice_index": torch.zeros(n, dtype=torch.int64),
    }


def _place_keypoint(batch: dict, i: int, j: int, row: float, col: float, sigma: float, radius: float) -> None:
    """Label ``j``'s targets in sample ``i`` for a keypoint at input pixel (``row``, ``col``).

    Placed with :func:`~napari_ivd.models.decode.input_to_output_px`, as ``training/data.py``
    places them: a Gaussian heatmap, offsets to the keypoint within ``radius`` output pixels.
    """
    hy, hx = _grid(batch["heatmap"].shape[-1])
    ky, kx = input_to_output_px(row), input_to_output_px(col)
    dist2 = (hy - ky) ** 2 + (hx - kx) ** 2
    near = dist2 <= radius**2
    batch["keypoints"][i, j] = torch.tensor([row, col])
    batch["heatmap"][i, j] = torch.exp(-dist2 / (2 * sigma**2))
    batch["offset"][i, 2 * j] = torch.where(near, ky - hy, 0.0)
    batch["offset"][i, 2 * j + 1] = torch.where(near, kx - hx, 0.0)
    batch["offset_mask"][i, j] = near.float()


def blob_batch(n: int = 2, size: int = 64, k: int = 2, sigma: float = 1.5, radius: float = 3.0) -> dict:
    """Bright disks on noise, label j's keypoint 6 j px below the disk centre; everything annotated.

    Channel 0 of ``seg`` is the disk (a "vertebral body"), channel 1 a flat ellipse under it
    (a "disc"). The noise comes from torch's global generator. Keypoints sit half a pixel off
    the disk grid, so that on the output grid they fall exactly on a pixel.
    """
    batch = _empty_batch(n, k, size)
    yy, xx = _grid(size)
    for i in range(n):
        cy, cx = 20.0 + 16 * i, 24.0 + 8 * i
        disk = ((yy - cy) ** 2 + (xx - cx) ** 2) <= 8**2
        batch["image"][i, 0][disk] += 0.8
        batch["seg"][i, 0] = disk.float()
        batch["seg"][i, 1] = (((yy - cy - 10) ** 2) / 4 + (xx - cx) ** 2 <= 16).float()
        for j in range(k):
            _place_keypoint(batch, i, j, cy + 6 * j + 0.5, cx + 0.5, sigma, radius)
    return batch


def keypoint_batch(k: int = 2, n: int = 2, size: int = 64, sigma: float = 1.5, radius: float = 3.0) -> dict:
    """One small disk per label, :data:`LABEL_STEP_PX` apart; label ``k-1`` not annotated in the last sample.

    The keypoint is the disk's centre; disks alternate between the vertebra and disc mask
    channels and brightness. The noise has its own seed, so the batch is always the same.
    """
    batch = _empty_batch(n, k, size, generator=torch.Generator().manual_seed(0))
    batch["visible"][-1, -1] = 0.0
    yy, xx = _grid(size)
    for i in range(n):
        top, col = 12.0 + 4 * i, 24.0 + 6 * i
        for j in range(k):
            row = top + LABEL_STEP_PX * j
            disk = ((yy - row) ** 2 + (xx - col) ** 2) <= 3.5**2
            batch["image"][i, 0][disk] += 0.8 if j % 2 == 0 else 0.5
            batch["seg"][i, j % 2][disk] = 1.0
            if batch["visible"][i, j]:
                _place_keypoint(batch, i, j, row, col, sigma, radius)
    return batch


# --------------------------------------------------------------------------------------------
# Training and presets
# --------------------------------------------------------------------------------------------


def train(net: torch.nn.Module, loss_fn: torch.nn.Module, batch: dict, steps: int, lr: float = 3e-3) -> list[dict]:
    """Loss parts after each of ``steps`` Adam steps on ``batch``; the loss's own parameters learn too."""
    net.train()
    optimiser = torch.optim.Adam([*net.parameters(), *loss_fn.parameters()], lr=lr)
    history = []
    for _ in range(steps):
        total, parts = loss_fn(net(batch["image"]), batch)
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
        history.append(parts)
    return history


def train_steps(name: str, config: ModelConfig, steps: int = 20, lr: float = 3e-3) -> list[dict]:
    """:func:`train` of ``build(name, config)`` with its registered loss on a :func:`blob_batch`."""
    batch = blob_batch(k=len(config.labels))
    return train(build(name, config), registry.loss_for(name, config), batch, steps, lr)


def train_on_keypoints(name: str, steps: int = 60) -> tuple[torch.nn.Module, torch.nn.Module, dict, list[dict]]:
    """``TINY[name]`` after :func:`train` with its registered loss on :func:`keypoint_batch` (seed 0, one thread).

    Returns the network in eval mode, the loss, the batch and the loss parts of every step.
    """
    config = TINY[name].config
    with single_thread():
        torch.manual_seed(0)
        batch = keypoint_batch()
        net, loss = build(name, config), registry.loss_for(name, config)
        history = train(net, loss, batch, steps)
    return net.eval(), loss, batch, history


def assert_decodes_to_the_annotated_keypoints(net: torch.nn.Module, batch: dict, tolerance_px: float = 2.0) -> dict:
    """The strongest candidate of each label decoded from sample 0 lies within ``tolerance_px`` of its keypoint.

    Returns those candidates by label.
    """
    labels = list(net.config.labels)
    with torch.no_grad():
        out = net(batch["image"][:1])
    candidates = decode(torch.sigmoid(out["heatmap"][0]).numpy(), out["offset"][0].numpy(), labels)
    best = {c.label: c for c in reversed(candidates)}  # strongest first within a label
    assert set(best) == set(labels)
    for j, label in enumerate(labels):
        row, col = batch["keypoints"][0, j].tolist()
        assert abs(best[label].row - row) < tolerance_px and abs(best[label].col - col) < tolerance_px, best[label]
    return best


def saved_tiny(name: str, folder: Path, model: torch.nn.Module | None = None) -> tuple[Path, torch.nn.Module]:
    """``TINY[name]`` with weights unlike a fresh init, saved to ``folder`` (card with ``trained_on`` and ``metrics``).

    ``model`` saves that module instead (a wrapped network, say); the network is returned either way.
    """
    config = TINY[name].config
    net = build(name, config)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    extra = {"trained_on": ["case_001"], "metrics": {"mre_mm": 2.5}}
    folder = save_checkpoint(
        folder, net if model is None else model, name, config, labels=config.labels, input_spec=INPUT_SPEC, extra=extra
    )
    return folder, net


@functools.cache
def paper_on_meta(name: str) -> tuple[torch.nn.Module, dict[str, tuple[int, ...]]]:
    """``name``'s paper preset on the meta device (no memory, no compute) and its output shapes for a 32x48 slice.

    Built once per session: several tests look at the same large network.
    """
    with torch.device("meta"):
        net = build(name, registry.config_class(name).paper())
        out = net(torch.empty(1, 1, 32, 48))
    return net, {key: tuple(value.shape) for key, value in out.items()}
