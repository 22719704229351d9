"""Files shipped inside the package: the sample scan (see README.md here for its licence)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def sample_t2w_path() -> Path:
    """Path of the bundled lumbar T2w sample (MIT, Spinal Cord Toolbox tutorial data)."""
    return Path(str(files(__name__) / "t2_lumbar.nii.gz"))
