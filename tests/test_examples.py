"""The scripts in examples/ run as documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_mask_example_writes_a_sphere_on_the_source_grid(shared_data, tmp_path):
    image = shared_data / "fixtures/sct_testing_data/t2/t2.nii.gz"
    out = tmp_path / "sphere.nii.gz"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "mask_on_source_grid.py"), str(image), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "stored PSR (60, 55, 52)" in result.stdout
    written, source = nib.load(out), nib.load(image)
    assert np.array_equal(written.affine, source.affine) and written.shape == source.shape
    assert 3000 < int(np.asarray(written.dataobj).sum()) < 5000  # 4/3 pi 10^3 mm^3 at 1 mm
