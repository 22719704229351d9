"""How unsure the model is about one volume, per named point and as one score with its main reason.

The model is run on the volume as it is and on a few cheap perturbations of it (an intensity
gamma with a small crop that shifts the spine against the network's stride-8 grid, or moves
the sagittal sampling by half a coarse step). Each structure of the unperturbed prediction is
judged by

* **spread**: how far the same structure (matched by position within its kind) moves
  across the runs, in mm; any movement counts, graded, since even a fraction of a
  millimetre says the image does not pin the point down;
* **lost / renamed**: in how many perturbed runs it disappears or gets another level name
  (an off-by-one count of the whole spine shows up here);
* **peak**: how far below 1 the heatmap probability the decoder reports as its score is;
* **shape**: anatomical implausibility (:mod:`napari_ivd.active.plausibility`);
* **chain**: its name contradicted by the count from the sacrum, or a missing level next
  to it (:mod:`napari_ivd.active.chain`): an off-by-one chain is stable under every
  perturbation, so only this cue sees it;
* **chain_weak / chain_moves**: the median peak and the median spread over the whole
  chain. The costly errors are whole chains named one level off (every point 30-40 mm
  out) and the names stand or fall together, so every point shares the chain's doubt.

Each component is mapped to [0, 1]; a point's uncertainty is their noisy-or (any one sure
sign of trouble makes the point unsure), and the case score weights the three most
uncertain points or case-level findings (a missing level, names off by one, structures
found only when perturbed, too few structures). Each missing level comes with a
placeholder where it should be. Four forward passes per case in all.

On the 31 VB3 cases the starter of 2026-12-04 never saw, the graded spread and peak and the
two chain cues raised the rank correlation of uncertainty with the actual point error from
+0.23 to about +0.5 (``benchmarks/bench_point_uncertainty.py``; the weights were chosen on
the odd-numbered cases only); heatmap sharpness around the peak and the distance between
the voted position and the heatmap maximum did not track the error there. Today's starter
on its 34 unseen scans: +0.36; the VB3-naive base on 43 VB3 scans: +0.45 (2026-12-06,
``benchmarks/point-uncertainty/``): chains named one level off on scans whose heatmaps are
confident stay unflagged. The distance from a keypoint to the centroid of its own predicted
mask did not track the error on the right points either (2026-12-07, ``docs/active-learning-evidence.md``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from napari_ivd.active.chain import Chain, Placeholder, check_chain
from napari_ivd.active.plausibility import Finding, implausibility, ramp
from napari_ivd.inference import PredictedStructure, Prediction, predict
from napari_ivd.io import SagittalView, Volume, VolumeGeometry
from napari_ivd.metrics import SAME_PLACE_MM
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

#: A perturbed run's structure of the same kind within this distance is the same structure
#: (the distance two namings of one scan are compared at, :func:`napari_ivd.metrics.renamed_levels`).
MATCH_RADIUS_MM = SAME_PLACE_MM
#: Spread (RMS distance from the mean position, mm) that gives uncertainty 0.5; no spread gives 0.
SPREAD_HALF_MM = 1.0
#: A cue this uncertain or more is worth naming as a point's reason; below it the point reads :data:`NO_DOUBT`.
NOTEWORTHY = 0.3
#: Fewer named structures than this make the whole case doubtful (a lumbar field shows about ten).
EXPECTED_STRUCTURES = 6
#: The case score: weights of the highest, second and third uncertainty among points and findings.
TOP_WEIGHTS = (0.6, 0.25, 0.15)
#: A point at least this uncertain is highlighted in the viewer as likely wrong. The starter on
#: its 34 unseen scans marks 101 of 311 points, 22 of the 30 more than 5 mm off; a model bad at a
#: source marks nearly all (``bench_point_uncertainty.py --replay benchmarks/point-uncertainty/*.json``).
UNSURE_POINT = 0.7
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

    ``components`` holds each cue in [0, 1] (spread, lost, renamed, peak, shape, chain, chain_weak,
    chain_moves);
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

    @property
    def fix_first(self) -> float:
        """How sure the chain checks are that the whole case needs fixing: its strongest headline finding, else 0.

        A missing level or names off by one (0.8-0.9), or names not counted from the sacrum
        (0.35): what ranking puts first, before any score (:func:`napari_ivd.active.rank`).
        """
        return max((f.uncertainty for f in self.findings if f.headline), default=0.0)

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
    display_mm = view.vox_to_display_mm(np.array([s.ijk_vox for s in structures]))
    return {s.name: display_mm[i, 1:] for i, s in enumerate(structures)}


def plane_extent_mm(view: SagittalView) -> tuple[float, float]:
    """The sagittal display plane's size (rows S→I, cols A→P) in mm, as :func:`plane_positions_mm` measures."""
    shape, spacing = view.display.shape, view.spacing_mm
    return (shape[1] - 1) * spacing[1], (shape[2] - 1) * spacing[2]


def check_prediction(prediction: Prediction, view: SagittalView, absent: Collection[str] = frozenset()) -> Chain:
    """The chain checks (:func:`~napari_ivd.active.chain.check_chain`) of a prediction's named structures.

    Missing levels, off-by-one counts, and a chain that ends above the sacrum so that nothing
    checks its names: what a researcher should look at first on this scan, in their words.
    Measured against the skeleton the names were searched with (``prediction.skeleton``);
    ``absent``: the levels the case marks not present.
    """
    in_plane = plane_positions_mm(prediction.structures, view)
    return check_chain(in_plane, plane_extent_mm(view), prediction.skeleton, absent=absent)


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


def _followed(
    structure: PredictedStructure, runs: Sequence[Prediction]
) -> tuple[list[PredictedStructure], float | None]:
    """The structure as each perturbed run found it, and its spread (RMS mm from the mean; None if never found)."""
    found = [m for m in (_match(structure, run) for run in runs) if m is not None]
    if not found:
        return found, None
    positions = np.array([structure.xyz_mm, *(m.xyz_mm for m in found)])
    return found, float(np.sqrt(((positions - positions.mean(axis=0)) ** 2).sum(axis=1).mean()))


def _chain_doubt(plain: Prediction, spreads: Sequence[float | None]) -> dict[str, tuple[float, str]]:
    """The whole chain's cues, shared by its points: its median peak and its median spread.

    A chain named one level off moves every point by a whole level while each looks like a
    structure; what gives it away is that the network is lukewarm about the names along the
    chain, or the chain as a whole shifts when the image is perturbed.
    """
    peak = float(np.median([s.score for s in plain.structures]))
    moved = [s for s in spreads if s is not None]
    spread = float(np.median(moved)) if moved else 0.0
    return {
        "chain_weak": (1.0 - peak, f"the chain's names are weak as a whole ({peak:.2f} median peak)"),
        "chain_moves": (
            ramp(spread, SPREAD_HALF_MM),
            f"the whole chain moves under perturbation ({spread:.1f} mm median spread)",
        ),
    }


def _weak(structure: PredictedStructure) -> str:
    """Why a weak structure is doubtful, in words: a weak peak, or none (named from the mask)."""
    if structure.from_mask:
        return f"{structure.name} seen in the mask only (its own heatmap {structure.score:.2f})"
    return f"{structure.name} weak ({structure.score:.2f} peak)"


def _point(
    structure: PredictedStructure,
    runs: Sequence[Prediction],
    shape: Finding | None,
    chain: Finding | None,
    chain_doubt: dict[str, tuple[float, str]],
) -> PointScore:
    """Score one structure of the unperturbed prediction against the perturbed runs, its shape and its chain."""
    name, n = structure.name, len(runs)
    found, spread_mm = _followed(structure, runs)
    renamed = [m.name for m in found if m.name != name]
    cues: dict[str, tuple[float, str]] = {
        "spread": (ramp(spread_mm or 0.0, SPREAD_HALF_MM), f"{name} unsure ({spread_mm or 0.0:.1f} mm spread)"),
        "lost": ((n - len(found)) / n if n else 0.0, f"{name} lost in {n - len(found)} of {n} perturbed runs"),
        "renamed": (
            len(renamed) / n if n else 0.0,
            f"{name} named {renamed[0] if renamed else name} in {len(renamed)} of {n} perturbed runs",
        ),
        "peak": (min(1.0, max(0.0, 1.0 - structure.score)), _weak(structure)),
        "shape": (shape.uncertainty, shape.reason) if shape is not None else (0.0, ""),
        "chain": (chain.uncertainty, chain.reason) if chain is not None else (0.0, ""),
        **chain_doubt,
    }
    uncertainty = 1.0 - math.prod(1.0 - u for u, _ in cues.values())
    strongest = max(cues.values(), key=lambda cue: cue[0])
    reason = strongest[1] if strongest[0] >= NOTEWORTHY else f"{name}: {NO_DOUBT}"
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
    researcher fixes, not the odd spacing it causes), else that of the most uncertain point
    or finding with something to say, :data:`NO_DOUBT` when none has.
    """
    ranked = sorted([(p.uncertainty, p.reason) for p in points] + [(f.uncertainty, f.reason) for f in findings])[::-1]
    if not ranked or ranked[0][0] <= 0:
        return 0.0, NO_DOUBT
    score = sum(w * u for w, (u, _) in zip(TOP_WEIGHTS, ranked, strict=False))
    headlines = [f for f in findings if f.headline]
    if headlines:
        return float(score), max(headlines, key=lambda f: f.uncertainty).reason
    said = [reason for _, reason in ranked if not reason.endswith(NO_DOUBT)]
    return float(score), said[0] if said else NO_DOUBT


def assess(
    plain: Prediction,
    perturbed: Sequence[Prediction],
    view: SagittalView,
    prior: SkeletonPrior | None = None,
    absent: Collection[str] = frozenset(),
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
    absent : collection of str
        Levels the case's revision marks as not present in the scan: never missing.

    Returns
    -------
    VolumeScore
        Score and reason from :func:`summarise` over points and case findings; a
        placeholder per missing level.
    """
    if not plain.structures:
        nothing = Finding(1.0, "no disc or vertebra found", headline=True)  # the whole case to annotate
        return VolumeScore(1.0, nothing.reason, (), (nothing,), plain.mid_sagittal_mm, prediction=plain)
    in_plane = plane_positions_mm(plain.structures, view)
    shape = implausibility(in_plane, prior)
    chain = check_chain(in_plane, plane_extent_mm(view), prior, absent=absent)
    spreads = [_followed(s, perturbed)[1] for s in plain.structures]
    doubt = _chain_doubt(plain, spreads)
    points = tuple(
        _point(s, perturbed, shape.points.get(s.name), chain.points.get(s.name), doubt) for s in plain.structures
    )
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
    absent: Collection[str] = frozenset(),
) -> Job[VolumeScore]:
    """Predict the volume plainly and under each perturbation, a step each; the job's result is its score.

    One forward pass (a whole :func:`napari_ivd.inference.predict`) per run, so the caller
    can stop between runs. ``absent``: the levels the case marks not present (see :func:`assess`).
    """
    prior = SkeletonPrior.of_card(card)

    def body(tally: Tally) -> Generator[Progress, None, VolumeScore]:
        yield tally.step("predicting")
        plain = predict(volume, model, card, device)
        runs = []
        for n, perturbation in enumerate(perturbations, start=1):
            yield tally.step(f"predicting a perturbed copy ({n} of {len(perturbations)})")
            runs.append(predict(perturb(volume, perturbation), model, card, device))
        return assess(plain, runs, volume.view, prior, absent)

    return Job(scoring_steps(perturbations), body)


def scoring_steps(perturbations: Sequence[Perturbation] = PERTURBATIONS) -> int:
    """How many steps :func:`score_volume_steps` takes: the plain run and one per perturbation."""
    return 1 + len(perturbations)
