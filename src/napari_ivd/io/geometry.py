"""Voxel grids in scanner space, and the sagittal display of a grid.

A spine MRI can be stored in any axis order (RAS, LPS, PSR, IPR ...). napari-ivd shows
every volume the way a radiologist reads a sagittal series — slider over left-right,
superior at the top, anterior on the left — by flipping and permuting axes only, never by
resampling, so any voxel drawn in napari maps back to exactly one voxel of the file.

Two small objects carry this:

- :class:`VolumeGeometry`: the file's 4x4 voxel -> RAS mm affine and its shape.
- :class:`SagittalView`: the exact axis flip/permutation from the file's voxel grid to the
  display grid (axes pointing Left, Inferior, Posterior), and back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import nibabel.orientations as nio
import numpy as np
from numpy.typing import ArrayLike, NDArray

from napari_ivd.errors import GeometryError, GeometryMismatchError

#: Direction each display axis points to: slider left-right (towards patient Left),
#: rows top-to-bottom (towards Inferior), columns left-to-right (towards Posterior).
DISPLAY_AXCODES: tuple[str, str, str] = ("L", "I", "P")
#: Human names of the display axes, for napari's dims.
DISPLAY_AXIS_LABELS: tuple[str, str, str] = ("right→left", "superior→inferior", "anterior→posterior")


def _as_points(points: ArrayLike) -> NDArray[np.float64]:
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim == 1:
        pts = pts[None, :]
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"expected points of shape (N, 3), got {pts.shape}")
    return pts


def _apply_affine(affine: NDArray[np.float64], points: ArrayLike) -> NDArray[np.float64]:
    pts = _as_points(points)
    return pts @ affine[:3, :3].T + affine[:3, 3]


@dataclass(frozen=True, eq=False)
class VolumeGeometry:
    """A 3D voxel grid placed in scanner space.

    Created by the readers and passed untouched to writers, layers and metrics, so there
    is one definition of where a voxel lies.

    Parameters
    ----------
    affine : (4, 4) array
        Voxel index (i, j, k) -> scanner RAS+ millimetres, as in NIfTI.
    shape : tuple of 3 ints
        Number of voxels along i, j, k.
    source : str
        Where the grid came from (a path), used only in error messages.

    Raises
    ------
    GeometryError
        If the affine is not finite, not invertible, or gives zero spacing.

    Example
    -------
    >>> g = VolumeGeometry(np.diag([0.5, 0.5, 3.0, 1.0]), (320, 320, 15))
    >>> g.spacing_mm
    (0.5, 0.5, 3.0)
    """

    affine: NDArray[np.float64]
    shape: tuple[int, int, int]
    source: str = ""

    def __post_init__(self) -> None:
        affine = np.array(self.affine, dtype=np.float64)
        where = f"{self.source}: " if self.source else ""
        if affine.shape != (4, 4):
            raise GeometryError(f"{where}affine must be 4x4, got {affine.shape}")
        if len(self.shape) != 3 or any(int(n) < 1 for n in self.shape):
            raise GeometryError(f"{where}need a 3D grid with at least one voxel per axis, got shape {self.shape}")
        if not np.all(np.isfinite(affine)):
            raise GeometryError(f"{where}the voxel-to-scanner affine holds NaN or Inf; the header is corrupt")
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        if np.any(spacing <= 1e-6):
            raise GeometryError(
                f"{where}voxel spacing {tuple(np.round(spacing, 4))} mm has a zero axis; "
                "the header's voxel size or orientation is broken — fix it (e.g. with nibabel) and reopen"
            )
        if abs(np.linalg.det(affine[:3, :3])) < 1e-9 * float(np.prod(spacing)):
            raise GeometryError(f"{where}the voxel axes are collinear (singular affine); the header is corrupt")
        affine.setflags(write=False)
        object.__setattr__(self, "affine", affine)
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VolumeGeometry):
            return NotImplemented
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=1e-6))

    def __hash__(self) -> int:  # frozen value object: usable as a dict key
        return hash((self.shape, tuple(np.round(self.affine, 5).ravel())))

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size along i, j, k in millimetres."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def axcodes(self) -> tuple[str, str, str]:
        """Closest anatomical direction of each voxel axis, e.g. ``("P", "S", "R")``."""
        return tuple(nio.aff2axcodes(self.affine))  # type: ignore[return-value]

    def vox_to_mm(self, ijk_vox: ArrayLike) -> NDArray[np.float64]:
        """Map voxel indices (N, 3) (fractional allowed) to scanner RAS mm (N, 3)."""
        return _apply_affine(self.affine, ijk_vox)

    def mm_to_vox(self, points_mm: ArrayLike) -> NDArray[np.float64]:
        """Map scanner RAS mm (N, 3) to fractional voxel indices (N, 3)."""
        return _apply_affine(np.linalg.inv(self.affine), points_mm)

    def check_array(self, array: np.ndarray, what: str = "array") -> None:
        """Raise :class:`GeometryMismatchError` unless ``array`` has this grid's shape."""
        if tuple(array.shape) != self.shape:
            raise GeometryMismatchError(
                f"{what} has shape {tuple(array.shape)} but {self.source or 'the image'} has shape {self.shape}"
            )

    def to_dict(self, *, with_source: bool = True) -> dict[str, Any]:
        """Plain-JSON form, for layer metadata and store attributes; the affine survives JSON bit for bit.

        ``with_source=False`` leaves ``source`` out, for records that keep where the image came
        from under a key of their own (the store's case record).
        """
        d: dict[str, Any] = {"affine": self.affine.tolist(), "shape": list(self.shape)}
        return {**d, "source": self.source} if with_source else d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str | None = None) -> VolumeGeometry:
        """Inverse of :meth:`to_dict`; other keys in ``d`` are ignored, ``source`` overrides ``d``'s."""
        where = str(d.get("source", "")) if source is None else source
        return cls(np.asarray(d["affine"], dtype=np.float64), tuple(int(n) for n in d["shape"]), where)


@dataclass(frozen=True, eq=False)
class SagittalView:
    """The exact axis flip/permutation between a file's grid and napari's sagittal display.

    The display grid's axes point Left (slider), Inferior (rows, so superior is at the
    top) and Posterior (columns, so anterior is on the left). Oblique acquisitions are
    assigned to the closest axes, as radiology viewers do; nothing is resampled.

    Example
    -------
    >>> view = SagittalView(geometry)
    >>> shown = view.to_display(volume)          # array for the napari layer
    >>> ijk_vox = view.display_to_vox(points)    # layer data coords -> file voxels
    """

    file: VolumeGeometry

    @property
    def _ornt(self) -> np.ndarray:
        return nio.ornt_transform(nio.io_orientation(self.file.affine), nio.axcodes2ornt(DISPLAY_AXCODES))

    @property
    def display_to_vox_affine(self) -> NDArray[np.float64]:
        """(4, 4) integer matrix mapping display indices to file voxel indices."""
        return np.asarray(nio.inv_ornt_aff(self._ornt, self.file.shape), dtype=np.float64)

    @property
    def display(self) -> VolumeGeometry:
        """The display grid as a geometry of its own (same scanner positions)."""
        shape = tuple(int(self.file.shape[int(ax)]) for ax in np.argsort(self._ornt[:, 0]))
        return VolumeGeometry(self.file.affine @ self.display_to_vox_affine, shape, self.file.source)  # type: ignore[arg-type]

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Display voxel size in mm: napari's layer ``scale``."""
        return self.display.spacing_mm

    def to_display(self, array: np.ndarray) -> np.ndarray:
        """Reorder a file-grid array (the image, a mask) into the display grid."""
        self.file.check_array(array)
        return nio.apply_orientation(array, self._ornt)

    def to_file(self, array: np.ndarray) -> np.ndarray:
        """Reorder a display-grid array (a drawn Labels layer) back into the file grid."""
        display = self.display
        display.check_array(array, "layer data")
        back = nio.ornt_transform(nio.axcodes2ornt(DISPLAY_AXCODES), nio.io_orientation(self.file.affine))
        return nio.apply_orientation(array, back)

    def display_to_vox(self, ijk_display: ArrayLike) -> NDArray[np.float64]:
        """Map layer data coordinates (N, 3) to the file's voxel indices (N, 3)."""
        return _apply_affine(self.display_to_vox_affine, ijk_display)

    def vox_to_display(self, ijk_vox: ArrayLike) -> NDArray[np.float64]:
        """Map the file's voxel indices (N, 3) to layer data coordinates (N, 3)."""
        return _apply_affine(np.linalg.inv(self.display_to_vox_affine), ijk_vox)

    def vox_to_display_mm(self, ijk_vox: ArrayLike) -> NDArray[np.float64]:
        """The file's voxel indices (N, 3) as mm along the display axes (left-right, S→I, A→P) from its first voxel."""
        return self.vox_to_display(ijk_vox) * np.asarray(self.spacing_mm)
