"""The papers' accuracy figures: distance to target, FNR/FPR, identification, PCK, Dice.

Keypoints are compared in scanner millimetres, per kind (discs, vertebrae):

- **distance to target** (DTT): distance between the predicted and the true position of
  the *same level*, over every annotated level the model also named (mean ± sd);
- **FNR** at ``threshold_mm``: share of annotated structures with no prediction of the same
  kind within the threshold (level-agnostic, one-to-one matching);
- **FPR** at ``threshold_mm``: share of predictions with no annotated structure of the same
  kind within the threshold (level-agnostic, one-to-one matching);
- **identification rate**: share of annotated structures whose own level was predicted
  within the threshold — a detection one level off counts as a miss;
- **PCK@t**: share of annotated structures whose own level was predicted within t mm.

Only levels annotated in the ground truth are judged: a prediction of a level the ground
truth does not annotate (e.g. L5-S1 on a scan whose labels stop at L4-L5) is neither right
nor wrong. Dice is computed per TotalSpineSeg value and per kind.

**Case-level failures** (:func:`chain_failures`): a chain named off by one (most found
structures carry another level's name) or a level missed — the errors that cost a
researcher most, which the active-learning ranking must put first.

**L5-S1 where the sacrum is in view**: references that stop at L5 (VB2, VB3) cannot judge
an L5-S1 prediction by the rules above, yet the disc is usually in view.
:func:`sacrum_in_view` decides from the reference alone whether the sacrum is in the field
of view, and :func:`l5_s1_outcome` whether the prediction named the L5-S1 disc where the
reference puts it or implies it.

**Two namings of one scan** (two model versions, no reference): :func:`renamed_levels`
finds the structures both name at the same place but under different names — one of the
two is wrong there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from napari_ivd import anatomy

KINDS: tuple[str, ...] = ("disc", "vertebra")
#: What :func:`l5_s1_outcome` says of a scan whose sacrum is in view.
L5_S1_OUTCOMES: tuple[str, ...] = ("named", "misplaced", "missing")
PCK_THRESHOLDS_MM: tuple[float, ...] = (2.0, 4.0, 6.0, 8.0, 10.0)
#: The case-level errors a researcher fixes by hand that :func:`chain_failures` finds.
CHAIN_FAILURES: tuple[str, ...] = ("misnamed", "missing level")
#: Two namings' structures of one kind within this distance are the same structure (about
#: half a lumbar level: a chain named one level off moves every name about 30-35 mm).
SAME_PLACE_MM = 10.0


@dataclass(frozen=True)
class KeypointRow:
    """One annotated structure (``role="gt"``) or one prediction (``role="pred"``) of a case."""

    case: str
    kind: str
    level: str
    role: str
    distance_mm: float | None = None  # gt rows: distance to the same-level prediction
    detected: bool = False  # gt rows: a prediction of its kind lies within the threshold
    identified: bool = False  # gt rows: its own level was predicted within the threshold
    false_positive: bool = False  # pred rows: no annotated structure of its kind nearby


def _kind_matching(pred: dict[str, np.ndarray], gt: dict[str, np.ndarray], threshold_mm: float) -> set[tuple[str, str]]:
    """One-to-one, level-agnostic pairs (pred level, gt level) closer than the threshold."""
    if not pred or not gt:
        return set()
    p_names, g_names = list(pred), list(gt)
    pred_xyz, gt_xyz = np.stack([pred[n] for n in p_names]), np.stack([gt[n] for n in g_names])
    dist = np.linalg.norm(pred_xyz[:, None] - gt_xyz[None], axis=-1)
    rows, cols = linear_sum_assignment(dist)
    return {(p_names[r], g_names[c]) for r, c in zip(rows, cols, strict=True) if dist[r, c] <= threshold_mm}


def renamed_levels(
    now_mm: Mapping[str, np.ndarray], earlier_mm: Mapping[str, np.ndarray], radius_mm: float = SAME_PLACE_MM
) -> dict[str, str]:
    """Each structure's name in ``now_mm`` -> the name ``earlier_mm`` gives the nearest one of its kind, if other.

    Only structures with one of their kind within ``radius_mm`` in ``earlier_mm`` count.

    Example
    -------
    >>> renamed_levels({"L5": np.zeros(3)}, {"L4": np.ones(3), "L4-L5": np.zeros(3)})
    {'L5': 'L4'}
    """
    renamed = {}
    for name, xyz in now_mm.items():
        kind = anatomy.structure(name).kind
        near = [
            (float(np.linalg.norm(xyz - other)), other_name)
            for other_name, other in earlier_mm.items()
            if anatomy.structure(other_name).kind == kind
        ]
        if near:
            distance, other_name = min(near)
            if distance <= radius_mm and other_name != name:
                renamed[name] = other_name
    return renamed


def keypoint_rows(
    case: str,
    pred_mm: Mapping[str, Sequence[float]],
    gt_mm: Mapping[str, Sequence[float]],
    threshold_mm: float = 5.0,
) -> list[KeypointRow]:
    """Compare one case's predicted and annotated positions (structure name -> RAS mm).

    Predictions of levels that the ground truth does not annotate are left out (see the
    module docstring). Returns one row per annotated structure and per judged prediction.
    """
    rows: list[KeypointRow] = []
    for kind in KINDS:
        gt = {n: np.asarray(p, float) for n, p in gt_mm.items() if anatomy.structure(n).kind == kind}
        pred = {n: np.asarray(p, float) for n, p in pred_mm.items() if n in gt}
        matched = _kind_matching(pred, gt, threshold_mm)
        detected_gt = {g for _, g in matched}
        matched_pred = {p for p, _ in matched}
        for name, position in gt.items():
            distance = float(np.linalg.norm(pred[name] - position)) if name in pred else None
            rows.append(
                KeypointRow(
                    case,
                    kind,
                    name,
                    "gt",
                    distance_mm=distance,
                    detected=name in detected_gt,
                    identified=distance is not None and distance <= threshold_mm,
                )
            )
        rows.extend(KeypointRow(case, kind, name, "pred", false_positive=name not in matched_pred) for name in pred)
    return rows


def summarize_keypoints(rows: Iterable[KeypointRow], pck_thresholds_mm: Sequence[float] = PCK_THRESHOLDS_MM) -> dict:
    """Aggregate rows of many cases into the papers' figures, per kind.

    Returns ``{kind: {n_annotated, n_predicted, dtt_mean_mm, dtt_sd_mm, dtt_median_mm, fnr,
    fpr, identification, pck: {t: rate}}}``; rates are fractions in [0, 1], ``None`` where
    undefined (nothing annotated or predicted).
    """
    rows = list(rows)
    out: dict[str, dict] = {}
    for kind in KINDS:
        gt = [r for r in rows if r.kind == kind and r.role == "gt"]
        pred = [r for r in rows if r.kind == kind and r.role == "pred"]
        distances = np.array([r.distance_mm for r in gt if r.distance_mm is not None])

        def rate(count: int, total: int) -> float | None:
            return count / total if total else None

        out[kind] = {
            "n_annotated": len(gt),
            "n_predicted": len(pred),
            "dtt_mean_mm": float(distances.mean()) if distances.size else None,
            "dtt_sd_mm": float(distances.std()) if distances.size else None,
            "dtt_median_mm": float(np.median(distances)) if distances.size else None,
            "fnr": rate(sum(not r.detected for r in gt), len(gt)),
            "fpr": rate(sum(r.false_positive for r in pred), len(pred)),
            "identification": rate(sum(r.identified for r in gt), len(gt)),
            "pck": {
                f"{t:g}mm": rate(sum(r.distance_mm is not None and r.distance_mm <= t for r in gt), len(gt))
                for t in pck_thresholds_mm
            },
        }
    return out


def dice(pred: np.ndarray, gt: np.ndarray) -> float | None:
    """Dice of two boolean masks; ``None`` when both are empty."""
    total = int(pred.sum()) + int(gt.sum())
    return 2.0 * int(np.logical_and(pred, gt).sum()) / total if total else None


def dice_rows(case: str, pred_tss: np.ndarray, gt_tss: np.ndarray) -> list[dict]:
    """Dice per structure annotated in ``gt_tss`` and per kind (all discs, all vertebrae).

    Both masks hold TotalSpineSeg values on the same grid. Only kinds present in the ground
    truth are scored, so a disc-only annotation does not penalise predicted vertebrae.
    """
    if pred_tss.shape != gt_tss.shape:
        raise ValueError(f"{case}: predicted mask {pred_tss.shape} and ground truth {gt_tss.shape} differ in shape")
    rows: list[dict] = []
    present = [int(v) for v in np.unique(gt_tss) if v and int(v) in anatomy.tss_names() and int(v) > anatomy.TSS_CANAL]
    for value in present:
        s = anatomy.from_tss(value)
        score = dice(pred_tss == value, gt_tss == value)
        rows.append({"case": case, "structure": s.name, "kind": s.kind, "dice": score})
    for kind in {anatomy.from_tss(v).kind for v in present}:
        values = [s.tss_value for s in anatomy.STRUCTURES if s.kind == kind and s.tss_value is not None]
        rows.append(
            {
                "case": case,
                "structure": f"all {anatomy.KIND_PLURAL[kind]}",
                "kind": kind,
                "dice": dice(np.isin(pred_tss, values), np.isin(gt_tss, values)),
            }
        )
    return rows


def summarize_dice(rows: Iterable[dict]) -> dict[str, dict[str, float | None]]:
    """Mean Dice per kind over structures (``per_structure``) and over whole-kind masks (``per_kind``)."""
    rows = list(rows)
    out: dict[str, dict[str, float | None]] = {}
    for kind in KINDS:
        single = [r["dice"] for r in rows if r["kind"] == kind and not r["structure"].startswith("all ")]
        whole = [r["dice"] for r in rows if r["kind"] == kind and r["structure"].startswith("all ")]
        out[kind] = {
            "per_structure": float(np.mean([d for d in single if d is not None])) if single else None,
            "per_kind": float(np.mean([d for d in whole if d is not None])) if whole else None,
        }
    return out


def mean_structure_dice(summary: dict[str, dict[str, float | None]]) -> float | None:
    """Mean of the per-structure Dice of every kind :func:`summarize_dice` scored (None: no mask compared)."""
    values = [v["per_structure"] for v in summary.values() if v.get("per_structure") is not None]
    return float(np.mean(values)) if values else None


def rows_as_dicts(rows: Iterable[KeypointRow]) -> list[dict]:
    """Rows as plain dicts, for JSON reports."""
    return [asdict(r) for r in rows]


def sacrum_in_view(reference_vox: Mapping[str, Sequence[float]], shape: Sequence[int]) -> bool:
    """Whether a scan shows the sacrum, judged from its reference labels and image grid alone.

    Rule: a reference that labels S1 or the L5-S1 disc shows it (VB1, IVD). One that stops
    at L5 (VB2, VB3) shows it when it labels L4 and L5 and the point one L4→L5 body spacing
    caudal of the L5 centroid, ``L5 + (L5 - L4)``, lies inside the image. On the six VB1
    scans, which label S1, that point lies 3-24 mm caudal of the S1 body centroid, so the
    rule is conservative: the L5-S1 disc and the top of the sacrum are in the field of view.
    It leaves out 8 of the 47 VB3 scans, whose images end 28-38 mm below the L5 centroid:
    on three looked at (VB3/case-03, -41, -46) the L5-S1 disc lies at the image's edge and
    the sacrum barely shows. Anything else is not counted: the reference cannot tell.

    Parameters
    ----------
    reference_vox : mapping of str to (3,) voxel index
        The reference's structures (canonical names) on the image grid.
    shape : (3,) ints
        The image grid's shape; voxel ``i`` spans ``i - 0.5 .. i + 0.5``.
    """
    if "S1" in reference_vox or "L5-S1" in reference_vox:
        return True
    if "L4" not in reference_vox or "L5" not in reference_vox:
        return False
    l4, l5 = (np.asarray(reference_vox[name], float) for name in ("L4", "L5"))
    below = 2 * l5 - l4
    return bool(np.all(below >= -0.5) and np.all(below <= np.asarray(shape) - 0.5))


def l5_s1_outcome(pred_mm: Mapping[str, Sequence[float]], reference_mm: Mapping[str, Sequence[float]]) -> str:
    """Whether a prediction named the L5-S1 disc where the reference has or implies it.

    The reference's L5-S1 is its own point when it labels one, else ``L5 + (L5 - L4) / 2``,
    half a body spacing below L5 (4.8-14.7 mm from VB1's L5-S1, the midpoint of its L5 and
    S1 centroids, on its six scans: the lordosis bends the sacrum backwards). A predicted
    L5-S1 within half a level spacing of it (``|L5 - L4| / 2``, or ``|L5-S1 - L4-L5| / 2``
    for a disc-only reference) is ``"named"``: the nearest other disc lies a full spacing
    away, so a chain one level off is not. Farther is ``"misplaced"``, none is ``"missing"``.

    Raises
    ------
    ValueError
        When the reference labels neither L4 and L5 nor L5-S1 and L4-L5 (it places no L5-S1).
    """
    ref = {name: np.asarray(p, float) for name, p in reference_mm.items()}
    if "L4" in ref and "L5" in ref:
        spacing = float(np.linalg.norm(ref["L5"] - ref["L4"]))
        expected = ref.get("L5-S1", ref["L5"] + (ref["L5"] - ref["L4"]) / 2)
    elif "L5-S1" in ref and "L4-L5" in ref:
        spacing, expected = float(np.linalg.norm(ref["L5-S1"] - ref["L4-L5"])), ref["L5-S1"]
    else:
        raise ValueError(
            f"the reference ({', '.join(reference_mm) or 'empty'}) places no L5-S1: "
            "it needs L4 and L5, or L5-S1 and L4-L5"
        )
    if "L5-S1" not in pred_mm:
        return "missing"
    distance = float(np.linalg.norm(np.asarray(pred_mm["L5-S1"], float) - expected))
    return "named" if distance <= spacing / 2 else "misplaced"


def chain_failures(
    pred_mm: Mapping[str, Sequence[float]],
    reference_mm: Mapping[str, Sequence[float]],
    threshold_mm: float = 5.0,
    l5_s1_in_view: bool = False,
) -> tuple[str, ...]:
    """Which of :data:`CHAIN_FAILURES` a case's prediction makes, judged against its reference.

    Predictions and references are paired per kind, one to one and whatever their names,
    within ``threshold_mm``. ``"misnamed"``: at least two found structures, and at least half
    of them, carry a name other than the reference's (a chain one level off names them all
    wrong while every distance looks fine). ``"missing level"``: an annotated structure has
    no prediction of its kind nearby, or, with ``l5_s1_in_view`` (see :func:`sacrum_in_view`),
    :func:`l5_s1_outcome` finds no L5-S1 at all.
    """
    found: set[tuple[str, str]] = set()
    missing = False
    for kind in KINDS:
        gt = {n: np.asarray(p, float) for n, p in reference_mm.items() if anatomy.structure(n).kind == kind}
        pred = {n: np.asarray(p, float) for n, p in pred_mm.items() if anatomy.structure(n).kind == kind}
        pairs = _kind_matching(pred, gt, threshold_mm)
        found |= pairs
        missing |= len(pairs) < len(gt)
    if l5_s1_in_view and l5_s1_outcome(pred_mm, reference_mm) == "missing":
        missing = True
    misnamed = sum(p != g for p, g in found)
    failures = []
    if misnamed >= 2 and 2 * misnamed >= len(found):
        failures.append("misnamed")
    if missing:
        failures.append("missing level")
    return tuple(failures)
