"""Every bundled model keeps its accuracy on real scans that no bundled model was trained on.

The real prediction (:func:`napari_ivd.inference.predict` with the bundled weights, on CPU)
of a T2w scan (VB2/case-19), a T1w scan (VB1/case-10) and, for the starter, a water scan
(VB3/case-39) is scored by distance to target
(mean mm over the reference levels the model names) and identification (share of reference
levels whose own name is predicted within :data:`RADIUS_MM`), and held to the bounds in
:data:`BOUNDS`. The mutation tests prove the bounds are tight: the same scoring rejects the
real prediction with every point moved 12 mm, with the names shifted one level either way,
and with nothing found.

Each model predicts each case once per module (``predictions``); about 25 s on 2 CPU cores.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from napari_ivd import anatomy
from napari_ivd.errors import UnknownLevelError
from napari_ivd.inference import predict
from napari_ivd.metrics import keypoint_rows
from napari_ivd.models import DEFAULT_MODEL, bundled_model_names, find_model_dir, load_checkpoint, read_card
from napari_ivd.training.cases import LabelledCase, load_lumbar_case

pytestmark = pytest.mark.slow

T2W_CASE = "VB2/case-19"  # 381 x 381 x 77; references T11...L5 (13 levels)
T1W_CASE = "VB1/case-10"  # 351 x 351 x 50; references T10...S1 (17 levels)
#: 224 x 224 x 77; references L1...L5 (9 levels). The starter's network counts its upper levels
#: one too low and sees the bottom right; the chain is named from the lumbosacral junction
#: (``skeleton.anchor_on_junction``, designed on this scan, so this guards it, not proves it).
WATER_CASE = "VB3/case-39"
#: A reference level is identified when its own name is predicted this close (the metrics' default).
RADIUS_MM = 5.0


@dataclass(frozen=True)
class Bound:
    """What a model must reach on a case: mean distance to target at most, identification at least."""

    max_distance_mm: float
    min_identification: float


# How each bound was set: the figure measured on 2026-12-05 (weights of commit f48df23,
# inference of commit b2d3fef; the starter's on 2026-12-06, after its retrain on all four
# sources) on a CPU without native bfloat16, in float32 and with bfloat16 autocast forced;
# the worse of the two (on these cases they differ by at most 0.12 mm and name the same
# levels), plus a margin of 0.5 mm on the distance and one reference level on identification.
# After a retrain or a change to naming, measure again (a failing test prints the model's
# figures; `score` gives them for any prediction) and set each bound the same way.
BOUNDS: dict[tuple[str, str], Bound] = {
    # The starter, retrained on all four sources (VB1's case-10 and -11, one exam, it never saw).
    (DEFAULT_MODEL, T2W_CASE): Bound(1.65, 0.92),  # measured 1.12 mm, 13/13
    (DEFAULT_MODEL, T1W_CASE): Bound(2.1, 0.94),  # measured 1.59 mm, 17/17 (T10 to S1)
    (DEFAULT_MODEL, WATER_CASE): Bound(1.8, 0.88),  # measured 1.29 mm, 9/9 (12-07, float32; 0/9 without the junction)
    # The seed architectures, each at its own weaker bound on the T2w case.
    ("denseaspp-lumbar", T2W_CASE): Bound(1.5, 0.92),  # measured 0.98 mm, 13/13
    ("hcanet-lumbar", T2W_CASE): Bound(2.95, 0.84),  # measured 2.45 mm, 12/13
    ("hourglass-lumbar", T2W_CASE): Bound(2.55, 0.38),  # measured 2.04 mm (1.92 bfloat16), 6/13
    ("scarnet-lumbar", T2W_CASE): Bound(2.8, 0.92),  # measured 2.28 mm, 13/13
    ("unet-lumbar", T2W_CASE): Bound(2.5, 0.92),  # measured 1.99 mm, 13/13
    # Measured 35.3 mm, 0/13: every level named one too cranial. Held to the seeds' common
    # bound rather than to what it does, so it fails (see KNOWN_FAILURES).
    ("spineone-lumbar", T2W_CASE): Bound(2.7, 0.84),
}
#: Bundled models whose real prediction misses its bound today, and why; the test of each
#: is an expected failure, strict, so it turns red when the model is fixed and the entry stays.
KNOWN_FAILURES: dict[tuple[str, str], str] = {
    ("spineone-lumbar", T2W_CASE): "names every level one too cranial on VB2/case-19 (0/13 identified, 35.3 mm)",
}


def score(case: LabelledCase, predicted_mm: Mapping[str, np.ndarray]) -> dict[str, float | None]:
    """Distance to target (mean mm over the reference levels named; None if none) and identification."""
    geometry = case.volume.geometry
    reference_mm = {n: geometry.vox_to_mm(np.asarray(p)[None])[0] for n, p in case.keypoints_vox.items()}
    rows = [r for r in keypoint_rows(case.name, predicted_mm, reference_mm, RADIUS_MM) if r.role == "gt"]
    distances = [r.distance_mm for r in rows if r.distance_mm is not None]
    return {
        "distance_mm": float(np.mean(distances)) if distances else None,
        "identification": sum(r.identified for r in rows) / len(rows),
    }


def shortfalls(figures: Mapping[str, float | None], bound: Bound) -> list[str]:
    """Where ``figures`` (from :func:`score`) miss ``bound``; empty when they keep it."""
    missed = []
    distance = figures["distance_mm"]
    if distance is None:
        missed.append("names none of the reference levels")
    elif distance > bound.max_distance_mm:
        missed.append(f"distance to target {distance:.2f} mm > {bound.max_distance_mm} mm")
    if figures["identification"] < bound.min_identification:
        missed.append(f"identification {figures['identification']:.2f} < {bound.min_identification}")
    return missed


def _moved_12_mm(predicted_mm: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: xyz + np.array([0.0, 0.0, 12.0]) for name, xyz in predicted_mm.items()}


def _renamed(steps: int) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    def rename(predicted_mm: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for name, xyz in predicted_mm.items():
            with contextlib.suppress(UnknownLevelError):  # shifted past L5-S1 / S1: the name is lost
                out[anatomy.shift(name, steps).name] = xyz
        return out

    return rename


MUTATIONS: dict[str, Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]] = {
    "every point moved 12 mm": _moved_12_mm,
    "names one level caudal": _renamed(1),
    "names one level cranial": _renamed(-1),
    "finds nothing": lambda predicted_mm: {},
}


@pytest.fixture(scope="module")
def cases(shared_data: Path) -> dict[str, LabelledCase]:
    return {name: load_lumbar_case(shared_data / "lumbar" / name) for name in (T2W_CASE, T1W_CASE, WATER_CASE)}


@pytest.fixture(scope="module")
def predictions(cases) -> Callable[[str, str], dict[str, np.ndarray]]:
    """``get(model, case)``: the model's predicted positions (name -> RAS mm), each predicted once."""
    cache: dict[tuple[str, str], dict[str, np.ndarray]] = {}

    def get(model_name: str, case_name: str) -> dict[str, np.ndarray]:
        if (model_name, case_name) not in cache:
            model, card = load_checkpoint(find_model_dir(model_name))
            prediction = predict(cases[case_name].volume, model, card, "cpu")
            cache[model_name, case_name] = {s.name: s.xyz_mm for s in prediction.structures}
        return dict(cache[model_name, case_name])

    return get


def _params(keys):
    return [
        pytest.param(*key, marks=pytest.mark.xfail(reason=KNOWN_FAILURES[key], strict=True))
        if key in KNOWN_FAILURES
        else key
        for key in keys
    ]


def test_every_bundled_model_has_a_bound_on_cases_it_never_saw():
    assert {model for model, _ in BOUNDS} == set(bundled_model_names())
    assert (DEFAULT_MODEL, T1W_CASE) in BOUNDS and (DEFAULT_MODEL, T2W_CASE) in BOUNDS
    for model, case in BOUNDS:
        assert case not in read_card(find_model_dir(model))["trained_on"], f"{model} was trained on {case}"


@pytest.mark.parametrize(("model", "case"), _params(BOUNDS))
def test_bundled_model_keeps_its_bound(model, case, cases, predictions):
    figures = score(cases[case], predictions(model, case))
    assert not shortfalls(figures, BOUNDS[model, case]), f"{model} on {case}: {figures}"


@pytest.mark.parametrize("mutation", MUTATIONS)
@pytest.mark.parametrize(("model", "case"), [key for key in BOUNDS if key not in KNOWN_FAILURES])
def test_the_bound_rejects_a_broken_prediction(model, case, mutation, cases, predictions):
    broken = MUTATIONS[mutation](predictions(model, case))
    assert shortfalls(score(cases[case], broken), BOUNDS[model, case]), f"{model} on {case}: {mutation} passes"
