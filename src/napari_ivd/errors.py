"""Typed errors and warnings raised by the napari-ivd core.

Every message names the file (or case), the problem and, where there is one, the fix,
so the CLI can print it and the widgets can show it as a notification unchanged.
"""

from __future__ import annotations


class IvdError(Exception):
    """Base class of every error the napari-ivd core raises on purpose."""


class UnreadableFileError(IvdError):
    """A file is missing, truncated, corrupt or not of the format its name claims."""


class UnsupportedScanError(IvdError):
    """A readable file holds something napari-ivd cannot use (2D, 4D, no finite voxels)."""


class ImageTooLargeError(UnsupportedScanError):
    """An image's header declares more voxels than napari-ivd agrees to load on this machine."""


class GeometryError(IvdError):
    """Voxel-to-scanner geometry is unusable: zero/negative spacing, singular affine."""


class GeometryMismatchError(GeometryError):
    """Two arrays or layers that must share a voxel grid do not."""


class DicomSeriesError(IvdError):
    """A DICOM folder is empty, mixes series, or its slices are inconsistent."""


class UnknownLevelError(IvdError):
    """A structure/level name or label value that the anatomy vocabulary does not know."""


class CheckpointError(IvdError):
    """A model folder (card.json + weights.safetensors) is missing, corrupt or does not fit its card."""


class StoreError(IvdError):
    """The annotation store refuses an operation: bad input, a damaged or half-written store, a conflict."""


class StoreVersionError(StoreError):
    """The annotation store was written by a newer (or unknown) napari-ivd store format."""


class StoreLockedError(StoreError):
    """Another process holds the annotation store's writer lock."""


class StoreConflictError(StoreError):
    """A save started from a revision or proposal that is no longer the case's head (someone saved meanwhile).

    ``started_from`` is what the edit began from, ``head`` the case's head now; save again
    with ``on_conflict="on_top"`` to keep the edit as a new revision on top, or reload.
    """

    def __init__(self, message: str, started_from: str | None, head: str | None) -> None:
        super().__init__(message)
        self.started_from = started_from
        self.head = head


class TrainingError(IvdError):
    """Training cannot start or went wrong: too few labelled cases, a diverging loss."""


class CorrectionError(IvdError):
    """A point correction cannot be applied: no neighbours to insert between, a level off the spine, a duplicate."""


class RankingError(IvdError):
    """Cases cannot be ranked for annotation: an unknown strategy, a model that cannot score them."""


class IvdWarning(UserWarning):
    """Something was repaired on the fly; the user should know, nothing failed."""
