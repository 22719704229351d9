"""npe2 reader: NIfTI files and DICOM series folders -> sagittal Image layers.

A file that is ours by name but cannot be opened (truncated, corrupt, 2D, bad spacing ...)
is reported as a napari notification naming the file and the reason, never as a traceback;
the reader then returns napari's "read, nothing to add" sentinel so no second error follows.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from napari.utils.notifications import show_error, show_warning

from napari_ivd.errors import IvdError, IvdWarning
from napari_ivd.io import can_read, read_volume
from napari_ivd.layer_data import LayerDataTuple, image_layer_data

PathOrPaths = str | Sequence[str]


def _as_list(path: PathOrPaths) -> list[str]:
    return [path] if isinstance(path, str | Path) else list(path)


def get_reader(path: PathOrPaths) -> Callable[[PathOrPaths], list] | None:
    """Claim NIfTI files and DICOM folders; decline everything else (npe2 convention)."""
    paths = _as_list(path)
    if not paths or not all(can_read(p) for p in paths):
        return None
    return read_layers


def read_layers(path: PathOrPaths) -> list:
    """Read each path into an Image layer; report failures as notifications."""
    layers: list[LayerDataTuple] = []
    for p in _as_list(path):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", IvdWarning)
                volume = read_volume(p)
        except IvdError as exc:
            show_error(f"napari-ivd could not open {Path(p).name}: {exc}")
            continue
        for w in caught:
            if issubclass(w.category, IvdWarning):
                show_warning(str(w.message))
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        layers.append(image_layer_data(volume))
    return layers or [(None,)]
