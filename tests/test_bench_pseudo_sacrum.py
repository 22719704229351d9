"""The pseudo-sacrum benchmark: S1 proposed where the references stop at L5, judged where they do not."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_pseudo_sacrum import proposals, with_proposals

from napari_ivd.models import find_model_dir, load_checkpoint
from napari_ivd.training.cases import load_lumbar_case


@pytest.fixture(scope="module")
def starter() -> tuple:
    model, card = load_checkpoint(find_model_dir("ivdnet-lumbar"), device="cpu")
    return model.eval(), card


def test_the_rule_lands_on_a_labelled_s1_and_proposes_one_below_l5(shared_data: Path, starter, capsys) -> None:
    root = shared_data / "lumbar"
    labelled, unlabelled = load_lumbar_case(root / "VB1/case-15"), load_lumbar_case(root / "VB2/case-18")
    proposed = proposals(*starter, [labelled, unlabelled])
    out = capsys.readouterr().out
    error = float(out.split("VB1/case-15: labels S1; the rule lands ")[1].split(" mm")[0])
    assert error < 3.0  # measured 0.6 mm: the S1 body's centroid, not the disc or L5
    assert list(proposed) == ["VB2/case-18"]  # a case that labels S1 gets no proposal
    view = unlabelled.volume.view
    at = {
        name: view.vox_to_display(np.asarray(p)[None])[0]
        for name, p in proposed["VB2/case-18"].items()
        if name != "score"
    }
    l4, l5 = (view.vox_to_display(unlabelled.keypoints_vox[n][None])[0] for n in ("L4", "L5"))
    spacing = np.asarray(view.spacing_mm[1:])
    step = (l5 - l4)[1:] * spacing
    below = (at["S1"] - l5)[1:] * spacing
    assert 0.6 <= np.linalg.norm(below) / np.linalg.norm(step) <= 1.15 and below @ step > 0  # caudal of L5
    np.testing.assert_allclose(at["L5-S1"], (at["S1"] + l5) / 2, atol=1e-6)  # midway, as the references derive discs
    assert proposed["VB2/case-18"]["score"] > 0.3  # the sacrum is in view and clear on this T2w scan


def test_proposals_join_only_the_cases_they_score_on_and_never_replace_a_level(shared_data: Path) -> None:
    case = load_lumbar_case(shared_data / "lumbar/IVD/case-20")  # labels the L5-S1 disc, not S1
    disc = case.keypoints_vox["L5-S1"]
    proposed = {case.name: {"S1": [1.0, 2.0, 3.0], "L5-S1": [4.0, 5.0, 6.0], "score": 0.3}}
    [kept] = with_proposals([case], proposed, min_score=0.2)
    np.testing.assert_array_equal(kept.keypoints_vox["S1"], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(kept.keypoints_vox["L5-S1"], disc)  # the reference wins
    [weak] = with_proposals([case], proposed, min_score=0.5)
    assert "S1" not in weak.keypoints_vox
