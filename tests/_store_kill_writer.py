"""A writer process for the SIGKILL tests of case import, model save and store creation.

    python tests/_store_kill_writer.py MODE WORKDIR RUN

MODE ``import`` adds cases ``c<RUN>_<i>`` (image, points and mask, committed together) to
``WORKDIR/store.zarr``; ``model`` stores ``WORKDIR/model`` as ``m<RUN>-<i>``; ``create``
creates stores ``WORKDIR/s<RUN>_<i>.zarr``. Each acknowledges what it finished with one
line ``DONE <name>`` after the call returned (flushed and fsynced), and loops until killed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from _store_crash_writer import GEOMETRY, SHAPE, _ack, content
from napari_ivd.io.volume import Volume
from napari_ivd.store import AnnotationStore


def image(seq: int) -> np.ndarray:
    """The scan of import number ``seq`` (each case its own image)."""
    array = ((np.arange(np.prod(SHAPE)) * (seq + 3)) % 251).astype(np.int16)
    array[0] = seq  # (seq + 3) repeats modulo 251 across runs: this voxel tells the imports apart
    return array.reshape(SHAPE)


def main() -> None:
    mode, workdir, run = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    store = None if mode == "create" else AnnotationStore.open(workdir / "store.zarr", create=True)
    _ack("READY")
    for i in range(1_000_000):
        name = f"c{run}_{i}" if mode == "import" else f"m{run}-{i}" if mode == "model" else f"s{run}_{i}.zarr"
        if mode == "import":
            assert store is not None
            points, mask = content(run * 1000 + i)
            volume = Volume(image(run * 1000 + i), GEOMETRY, Path(f"{name}.nii.gz"))
            store.add_case(volume, name, points=points, mask=mask, author="kill-test")
        elif mode == "model":
            assert store is not None
            store.add_model(workdir / "model", name)
        else:
            AnnotationStore.open(workdir / name, create=True)
        _ack(f"DONE {name}")


if __name__ == "__main__":
    main()
