"""The napari-ivd command line as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from skimage.io import imread

from napari_ivd import anatomy
from napari_ivd.cli import main


def test_help_lists_the_demo(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "demo" in capsys.readouterr().out


def test_unknown_command_exits_with_usage(capsys):
    with pytest.raises(SystemExit) as info:
        main(["segment-everything"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.slow
def test_headless_demo_predicts_on_the_sample_and_writes_a_screenshot(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "napari_ivd", "demo", "--headless", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["display_orientation"] == "LIP"
    assert summary["file_orientation"] == "RAS"
    assert 10 <= summary["shown_slice"] <= 28  # the found mid-sagittal slice of 38 slices
    # every level the sample shows from T11-T12 down to L5 (issue 19's target; L1-L2 only since kind
    # pooling, L5 in float32 only since weak peaks continue a chain under their own names: 0.099 there)
    assert set(anatomy.span("T11-T12", "L5")) <= set(summary["levels"])
    assert summary["layers"] == ["t2_lumbar", "t2_lumbar mask", "t2_lumbar vertebrae", "t2_lumbar discs"]
    for name in ("points.csv", "discs.nii.gz", "mask.nii.gz"):
        assert (out / name).is_file()
    shot = imread(out / "screenshot.png")
    assert shot.shape[0] > 400 and shot.shape[1] > 400
    assert np.ptp(shot[..., :3]) > 100  # an image, not a blank canvas
