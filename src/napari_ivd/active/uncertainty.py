"""How unsure the model is about one volume, per named point and as one score with its main reason.

The model is run on the volume as it is and on a few cheap perturbations of it (an intensity
gamma with a small crop that shifts the spine against the network's stride-8 grid, or moves
the sagittal sampling by half a coarse step). Each structure of the unperturbed prediction is
judged by

* **spread**: how far the same structure (matched by position within its kind) moves
  across the runs, in mm;
* **lost / renamed**: in how many perturbed runs it disappears or gets another level name
  (an off-by-one count of the whole spine shows up here);
* **peak**: the heatmap probability the decoder reports as the structure's score;
* **shape**: anatomical implausibility (:mod:`napari_ivd.active.plausibility`);
* **chain**: its name contradicted by the count from the sacrum, or a missing level next
  to it (:mod:`napari_ivd.active.chain`): an off-by-one chain is stable under every
  perturbation, so only this cue sees it.

Each component is mapped to [0, 1]; a point's uncertainty is their noisy-or (any one sure
sign of trouble makes the point unsure), and the case score weights the three most
uncertain points or case-level findings (a missing level, names off by one, structures
found only when perturbed, too few structures). Each missing level comes with a
placeholder where it should be. Four forward passes per case in all.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from napari_ivd.active.chain import Placeholder, check_chain
from napari_ivd.active.plausibility import Finding, implausibility, ramp
from napari_ivd.inference import PredictedStructure, Prediction, predict
from napari_ivd.io import SagittalView, Volume, VolumeGeometry
from napari_ivd.preprocess import normalize_volume
from napari_ivd.progress import Job, Progress, Tally
from napari_ivd.skeleton import SkeletonPrior

log = logging.getLogger(__name__)

__all__ = [
    "PERTURBATIONS",
    "Perturbation",
    "PointScore",
    "VolumeScore",
    "assess",
    "perturb",
    "plane_extent_mm",
    "plane_positions_mm",
    "score_volume_steps",
    "scoring_steps",
    "summarise",
]

#: A perturbed run's structure of the same kind within this distance is the same structure.
MATCH_RADIUS_MM = 10.0
#: Spread (RMS distance from the mean position, mm) below this is jitter (uncertainty 0) ...
SPREAD_FREE_MM = 1.0
#: ... and this much above it gives uncertainty 0.5.
SPREAD_HALF_MM = 3.0
#: Heatmap peaks at or above this are sure (uncertainty 0), falling linearly to 1 at a peak of 0.
PEAK_SURE = 0.6
#: Fewer named structures than this make the whole case doubtful (a lumbar field shows about ten).
EXPECTED_STRUCTURES = 6
#: The case score: weights of the highest, second and third uncertainty among points and findings.
TOP_WEIGHTS = (0.6, 0.25, 0.15)
#: A point at least this uncertain is highlighted in the viewer as likely wrong.
UNSURE_POINT = 0.5
#: The reason of a point, or of a case, in which no cue found anything.
NO_DOUBT = "no doubt found"


@dataclass(frozen=True)
class Perturbation:
    """A cheap test-time augmentation: intensity gamma, and mm cropped off the start of each display axis.

    ``crop_mm`` is (left-right, superior, anterior): cropping the top or the front shifts
    the spine in the slices, cropping the side moves where the coarse slices sample.
    Positions stay comparable in scanner mm because the cropped grid keeps its place.
    """

    gamma: float = 1.0
    crop_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)


#: Three perturbations (plus the plain run: four forward passes per case).
PERTURBATIONS: tuple[Perturbation, ...] = (
    Perturbation(0.8, (0.0, 3.0, 0.0)),
    Perturbation(1.25, (0.0, 0.0, 5.0)),
    Perturbation(1.0, (2.0, 0.0, 0.0)),
)


@dataclass(frozen=True)
class PointScore:
    """How unsure the model is about one named structure of its prediction.

    ``components`` holds each cue in [0, 1] (spread, lost, renamed, peak, shape);
    ``uncertainty`` is their noisy-or and ``reason`` the strongest cue in words.
    ``spread_mm`` is None when no perturbed run found the structure again.
    """

    level: str
    uncertainty: float
    reason: str
    score: float
    spread_mm: float | None
    components: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class VolumeScore:
    """One volume's informativeness: score in [0, 1], main reason, per-point scores, case findings.

    ``placeholders`` are the missing levels where they should be (scanner mm);
    ``prediction`` is the unperturbed prediction the points belong to.
    """

    score: float
    reason: str
    points: tuple[PointScore, ...]
    findings: tuple[Finding, ...]
    mid_sagittal_mm: float
    placeholders: tuple[Placeholder, ...] = ()
    prediction: Prediction | None = field(default=None, repr=False, compare=False)

    def unsure_levels(self, threshold: float = UNSURE_POINT) -> dict[str, float]:
        """Levels at least ``threshold`` uncertain, with their uncertainty (what the viewer highlights)."""
        return {p.level: p.uncertainty for p in self.points if p.uncertainty >= threshold}


def perturb(volume: Volume, perturbation: Perturbation) -> Volume:
    """The volume on its display grid, gamma-adjusted and cropped, at the same scanner position.

    The result is display-ordered (its own sagittal view is the identity) and its
    geometry's origin moves with the crop, so predictions on it are directly comparable in
    scanner mm with predictions on ``volume``. A crop never takes more than a quarter of an axis.
    """
    view = volume.view
    display = view.display
    shown = normalize_volume(view.to_display(volume.array))
    if perturbation.gamma != 1.0:
        shown = shown**perturbation.gamma
    crop = [
        min(round(mm / spacing), size // 4)
        for mm, spacing, size in zip(perturbation.crop_mm, view.spacing_mm, shown.shape, strict=True)
    ]
    cropped = np.ascontiguousarray(shown[crop[0] :, crop[1] :, crop[2] :])
    shift = np.eye(4)
    shift[:3, 3] = crop
    geometry = VolumeGeometry(display.affine @ shift, cropped.shape, display.source)  # type: ignore[arg-type]
    return Volume(cropped, geometry, volume.path)


def plane_positions_mm(structures: Sequence[PredictedStructure], view: SagittalView) -> dict[str, np.ndarray]:
    """Each structure's (row_mm, col_mm) on the sagittal display plane (rows S→I, cols A→P)."""
    if not structures:
        return {}
    display = view.vox_to_display(np.array([s.ijk_vox for s in structures]))
    spacing = np.asarray(view.spacing_mm[1:])
    return {s.name: display[i, 1:] * spacing for i, s in enumerate(structures)}


def plane_extent_mm(view: SagittalView) -> tuple[float, float]:
    """The sagittal display plane's size (rows S→I, cols A→P) in mm, as :func:`plane_positions_mm` measures."""
    shape, spacing = view.display.shape, view.spacing_mm
    return (shape[1] - 1) * spacing[1], (shape[2] - 1) * spacing[2]


def _plane_to_mm(position: Sequence[float], mid_sagittal_mm: float, view: SagittalView) -> tuple[float, ...]:
    """Scanner mm of an in-plane (row_mm, col_mm) position on the slice at ``mid_sagittal_mm``."""
    spacing = np.asarray(view.spacing_mm)
    display = np.array([mid_sagittal_mm, *position[:2]]) / spacing
    ijk_vox = view.display_to_vox(display[None])
    return tuple(float(v) for v in view.file.vox_to_mm(ijk_vox)[0])


def _match(structure: PredictedStructure, run: Prediction) -> PredictedStructure | None:
    """The run's structure of the same kind nearest to ``structure``, if within :data:`MATCH_RADIUS_MM`."""
    same_kind = [s for s in run.structures if s.kind == structure.kind]
    if not same_kind:
        return None
    nearest = min(same_kind, key=lambda s: float(np.linalg.norm(s.xyz_mm - structure.xyz_mm)))
    return nearest if np.linalg.norm(nearest.xyz_mm - structure.xyz_mm) <= MATCH_RADIUS_MM else None


def _point(
    structure: PredictedStructure, runs: Sequence[Prediction], shape: Finding | None, chain: Finding | None
) -> PointScore:
    """Score one structure of the unperturbed prediction against the perturbed runs, its shape and its chain."""
    name, n = structure.name, len(runs)
    matches = [_match(structure, run) for run in runs]
    found = [m for m in matches if m is not None]
    renamed = [m.name for m in found if m.name != name]
    spread_mm = None
    if found:
        positions = np.array([structure.xyz_mm, *(m.xyz_mm for m in found)])
        spread_mm = float(np.sqrt(((positions - positions.mean(axis=0)) ** 2).sum(axis=1).mean()))
    cues: dict[str, tuple[float, str]] = {
        "spread": (
            ramp((spread_mm or 0.0) - SPREAD_FREE_MM, SPREAD_HALF_MM),
            f"{name} unsure ({spread_mm or 0.0:.1f} mm spread)",
        ),
        "lost": ((n - len(found)) / n if n else 0.0, f"{name} lost in {n - len(found)} of {n} perturbed runs"),
        "renamed": (
            len(renamed) / n if n else 0.0,
            f"{name} named {renamed[0] if renamed else name} in {len(renamed)} of {n} perturbed runs",
        ),
        "peak": (
            min(1.0, max(0.0, (PEAK_SURE - structure.score) / PEAK_SURE)),
            f"{name} weak ({structure.score:.2f} peak)",
        ),
        "shape": (shape.uncertainty, shape.reason) if shape is not None else (0.0, ""),
        "chain": (chain.uncertainty, chain.reason) if chain is not None else (0.0, ""),
    }
    uncertainty = 1.0 - math.prod(1.0 - u for u, _ in cues.values())
    strongest = max(cues.values(), key=lambda cue: cue[0])
    reason = strongest[1] if strongest[0] > 0 else f"{name}: {NO_DOUBT}"
    return PointScore(
        name, uncertainty, reason, structure.score, spread_mm, {k: round(u, 4) for k, (u, _) in cues.items()}
    )


def _only_perturbed(plain: Prediction, runs: Sequence[Prediction]) -> list[Finding]:
    """Structures that perturbed runs find where the plain run has none of their kind."""
    counts: dict[str, int] = {}
    for run in runs:
        for name in {s.name for s in run.structures if _match(s, plain) is None}:
            counts[name] = counts.get(name, 0) + 1
    return [
        Finding(k / len(runs), f"{name} found only in {k} of {len(runs)} perturbed runs", name)
        for name, k in counts.items()
    ]


def summarise(points: Sequence[PointScore], findings: Sequence[Finding]) -> tuple[float, str]:
    """A case's score and reason from its point scores and findings.

    Score = weighted mean (:data:`TOP_WEIGHTS`) of the three highest uncertainties; reason =
    the most certain headline finding (a missing level, names off by one: what the
    researcher fixes, not the odd spacing it causes), else the highest one's,
    :data:`NO_DOUBT` when nothing is above 0.
    """
    ranked = sorted([(p.uncertainty, p.reason) for p in points] + [(f.uncertainty, f.reason) for f in findings])[::-1]
    if not ranked or ranked[0][0] <= 0:
        return 0.0, NO_DOUBT
    score = sum(w * u for w, (u, _) in zip(TOP_WEIGHTS, ranked, strict=False))
    headlines = [f for f in findings if f.headline]
    return float(score), max(headlines, key=lambda f: f.uncertainty).reason if headlines else ranked[0][1]


def assess(
    plain: Prediction, perturbed: Sequence[Prediction], view: SagittalView, prior: SkeletonPrior | None = None
) -> VolumeScore:
    """Score a volume from its plain prediction and the predictions of perturbed copies.

    Parameters
    ----------
    plain : Prediction
        The prediction on the volume as it is; the points scored are its structures.
    perturbed : sequence of Prediction
        Predictions on perturbed copies (same scanner space, e.g. from :func:`perturb`).
    view : SagittalView
        The volume's sagittal view (to put the points on the sagittal plane in mm).
    prior : SkeletonPrior, optional
        The model card's skeleton, for the shape check.

    Returns
    -------
    VolumeScore
        Score and reason from :func:`summarise` over points and case findings; a
        placeholder per missing level.
    """
    if not plain.structures:
        nothing = Finding(1.0, "no disc or vertebra found")
        return VolumeScore(1.0, nothing.reason, (), (nothing,), plain.mid_sagittal_mm, prediction=plain)
    in_plane = plane_positions_mm(plain.structures, view)
    shape = implausibility(in_plane, prior)
    chain = check_chain(in_plane, plane_extent_mm(view), prior)
    points = tuple(_point(s, perturbed, shape.points.get(s.name), chain.points.get(s.name)) for s in plain.structures)
    findings = [*chain.case, *_only_perturbed(plain, perturbed)]
    if len(plain.structures) < EXPECTED_STRUCTURES:
        n = len(plain.structures)
        findings.append(Finding((EXPECTED_STRUCTURES - n) / EXPECTED_STRUCTURES, f"only {n} structures named"))
    score, reason = summarise(points, findings)
    placeholders = tuple(
        Placeholder(p.level, _plane_to_mm(p.position, plain.mid_sagittal_mm, view), p.reason)
        for p in chain.placeholders
    )
    return VolumeScore(score, reason, points, tuple(findings), plain.mid_sagittal_mm, placeholders, plain)


def score_volume_steps(
    volume: Volume,
    model: torch.nn.Module,
    card: dict[str, Any],
    device: str | torch.device = "cpu",
    perturbations: Sequence[Perturbation] = PERTURBATIONS,
) -> Job[VolumeScore]:
    """Predict the volume plainly and under each perturbation, a step each; the job's result is its score.

    One forward pass (a whole :func:`napari_ivd.inference.predict`) per run, so the caller
    can stop between runs.
    """
    prior = SkeletonPrior.from_dict(card["skeleton"]) if card.get("skeleton") else None

    def body(tally: Tally) -> Generator[Progress, None, VolumeScore]:
        yield tally.step("predicting")
        plain = predict(volume, model, card, device)
        runs = []
        for n, perturbation in enumerate(perturbations, start=1):
            yield tally.step(f"predicting a perturbed copy ({n} of {len(perturbations)})")
            runs.append(predict(perturb(volume, perturbation), model, card, device))
        return assess(plain, runs, volume.view, prior)

    return Job(scoring_steps(perturbations), body)


def scoring_steps(perturbations: Sequence[Perturbation] = PERTURBATIONS) -> int:
    """How many steps :func:`score_volume_steps` takes: the plain run and one per perturbation."""
    return 1 + len(perturbations)
