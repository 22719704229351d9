"""Mask revisions as chunk-level deltas in one zarr array per case.

Slice ``n`` of ``revisions/masks`` (shape ``(R, I, J, K)``, chunks ``(1, ci, cj, ck)``)
holds revision ``n``'s mask XOR its parent's mask. zarr writes no all-zero chunk, so a
small edit stores one or two chunks, and they compress to almost nothing because the XOR
is zero wherever nothing changed. A *keyframe* is the XOR with an all-zero mask, i.e. the
mask itself. Reading revision ``n`` starts from its nearest keyframe (or a cached
ancestor) and XORs the deltas along the parent chain; the record of each revision lists
the chunks it wrote, so only those are read.

Why XOR and not "new values": a delta chunk then also records erasures (a voxel set back
to 0) without a separate "changed" map, and it is its own inverse.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import zarr

log = logging.getLogger(__name__)

__all__ = ["ChunkGrid", "read_entry", "write_entry"]

#: Up to this many chunks are written/read one by one; more go through one call over their box.
_PER_CHUNK_LIMIT = 8


@dataclass(frozen=True)
class ChunkGrid:
    """The chunk grid of a mask: which voxel box each flat chunk index covers.

    Parameters
    ----------
    shape : tuple of 3 ints
        Mask shape (I, J, K) in voxels.
    chunk : tuple of 3 ints
        Chunk shape in voxels (the last chunk along an axis may be partial).
    """

    shape: tuple[int, int, int]
    chunk: tuple[int, int, int]

    @property
    def counts(self) -> tuple[int, int, int]:
        """Number of chunks along each axis."""
        return tuple(-(-n // c) for n, c in zip(self.shape, self.chunk, strict=True))  # type: ignore[return-value]

    @property
    def n_chunks(self) -> int:
        """Total number of chunks."""
        a, b, c = self.counts
        return a * b * c

    def coords(self, flat: int) -> tuple[int, int, int]:
        """Chunk coordinates of a flat chunk index."""
        return tuple(int(v) for v in np.unravel_index(flat, self.counts))  # type: ignore[return-value]

    def slices(self, flat: int) -> tuple[slice, slice, slice]:
        """Voxel box of one chunk."""
        return tuple(
            slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(self.coords(flat), self.chunk, self.shape, strict=True)
        )  # type: ignore[return-value]

    def box(self, flats: Sequence[int]) -> tuple[slice, slice, slice]:
        """Smallest chunk-aligned voxel box holding all ``flats``."""
        coords = np.array([self.coords(f) for f in flats])
        low, high = coords.min(axis=0), coords.max(axis=0) + 1
        return tuple(
            slice(int(lo) * c, min(int(hi) * c, n))
            for lo, hi, c, n in zip(low, high, self.chunk, self.shape, strict=True)
        )  # type: ignore[return-value]

    def nonzero_chunks(self, data: np.ndarray) -> list[int]:
        """Flat indices of the chunks where ``data`` has a non-zero voxel, ascending.

        A loop over chunks with ``any()`` (about 3 ms for 400×400×80) beats a global
        ``flatnonzero`` by an order of magnitude on sparse data.
        """
        return [f for f in range(self.n_chunks) if data[self.slices(f)].any()]

    def chunk_keys(self, index: int, flats: Sequence[int]) -> list[str]:
        """zarr keys (relative to the array) of the chunks of slice ``index``."""
        return ["c." + ".".join(map(str, (index, *self.coords(f)))) for f in flats]


def write_entry(array: zarr.Array, index: int, data: np.ndarray, grid: ChunkGrid, flats: Sequence[int]) -> None:
    """Write the chunks ``flats`` of ``data`` (an XOR delta or a keyframe) at slice ``index``.

    Chunks of ``data`` outside ``flats`` must be all zero: the caller computed ``flats`` as
    the non-zero chunks, so writing a box around them stores nothing else.
    """
    if not flats:
        return
    if len(flats) <= _PER_CHUNK_LIMIT:
        for f in flats:
            box = grid.slices(f)
            array[(index, *box)] = data[box]
    else:
        box = grid.box(flats)
        array[(index, *box)] = data[box]


def read_entry(array: zarr.Array, index: int, grid: ChunkGrid, flats: Sequence[int], out: np.ndarray) -> None:
    """XOR slice ``index``'s chunks ``flats`` into ``out`` (absent chunks read as zeros)."""
    if not flats:
        return
    if len(flats) <= _PER_CHUNK_LIMIT:
        for f in flats:
            box = grid.slices(f)
            out[box] ^= array[(index, *box)]
    else:
        box = grid.box(flats)
        out[box] ^= array[(index, *box)]
