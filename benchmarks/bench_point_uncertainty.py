"""Does the per-point uncertainty of napari_ivd.active find the points that are actually wrong?

    python benchmarks/bench_point_uncertainty.py [--model ivdnet-lumbar] [--data ../shared/data/lumbar]
                                                 [--all-held-out] [--sources VB1 ...] [--device cpu|cuda]
                                                 [--json out.json] [--replay earlier.json]

Scores every held-out dev case of every contrast (the split `napari-ivd train` holds out,
same seed; a model trained on one of them is refused), or with ``--all-held-out`` every
labelled case the model was not trained on (``--sources``: of those sources only), with the active-learning scorer (the
plain prediction plus three perturbed ones), and compares each named point's uncertainty with
its actual error, the distance to the annotated position of the same level (points whose
level is not annotated are not judged). Prints one row per case and the Spearman rank
correlation between uncertainty and error over all points, for the combined uncertainty and
for each of its cues; and the same between each case's score and its mean point error.
Last, the cases whose prediction a researcher must fix as a whole (a chain named off by one,
a missed level: :func:`napari_ivd.metrics.chain_failures`, L5-S1 counted where
:func:`~napari_ivd.metrics.sacrum_in_view`) and where the case score ranks them among the
cases: the issue's target is every one of them in the top quarter. ``--json`` keeps every
point's cues and every case's findings; ``--replay`` reports on such a file without scoring
again. The combined uncertainty's rho also gets a 95 % interval from resampling whole cases
(a case's points share its errors, so the p value over points flatters a few scans), and
the report says how many points the viewer marks as likely wrong and how many of the points
more than 5 mm off are among them, and where rho comes from: inside the right points, inside
the wrong ones, and the rho a cue would score that told wrong from right perfectly and nothing
more (below 0.5 when few points are wrong, so the target then asks for ranking millimetres).
Before a change to the scorer is judged on a rerun, the report also prints the best other
combinations of the cues (mean, maximum, noisy-or, each also without one cue) and ranks the
cases by their points' mean uncertainty beside the ranking's case score.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
from judged_scans import add_model_and_scan_options, load_model, scans_to_judge
from scipy.stats import mannwhitneyu, spearmanr

from napari_ivd.active import UNSURE_POINT, CaseRecord, VolumeScore, rank, score_volume_steps
from napari_ivd.active.plausibility import Finding
from napari_ivd.metrics import chain_failures, sacrum_in_view
from napari_ivd.worklist import run_steps

CUES = ("spread", "lost", "renamed", "peak", "shape", "chain", "chain_weak", "chain_moves")
#: A point farther than this from its reference is wrong (the distance FNR and FPR are counted at).
WRONG_MM = 5.0


def _spearman(x: list[float], y: list[float]) -> tuple[float | None, float | None]:
    if len(x) < 3 or np.ptp(x) == 0:
        return None, None
    result = spearmanr(x, y)
    return float(result.statistic), float(result.pvalue)


def _points_by_case(points: list[dict]) -> dict[str, list[dict]]:
    """The judged points grouped by their case."""
    by_case: dict[str, list[dict]] = {}
    for p in points:
        by_case.setdefault(p["case"], []).append(p)
    return by_case


def _case_interval(points: list[dict], resamples: int = 1000, seed: int = 0) -> tuple[float, float] | None:
    """95 % interval of the uncertainty's rho when whole cases are drawn again with replacement.

    A case's points share its errors (a chain named one level off puts them all 30 mm out),
    so they are not independent: resampling cases, not points, says how far a rho measured
    on a few scans would move on other scans like them. None with fewer than two cases.
    """
    cases = list(_points_by_case(points).values())
    if len(cases) < 2:
        return None
    rng = np.random.default_rng(seed)
    rhos = []
    for _ in range(resamples):
        drawn = [p for i in rng.integers(len(cases), size=len(cases)) for p in cases[i]]
        rho = _spearman([p["uncertainty"] for p in drawn], [p["error_mm"] for p in drawn])[0]
        if rho is not None:
            rhos.append(rho)
    if not rhos:
        return None
    low, high = np.percentile(rhos, [2.5, 97.5])
    return float(low), float(high)


def _highlighted(points: list[dict]) -> dict:
    """What the viewer's orange border does: the points it marks, the wrong ones among them, and the AUC.

    A point is marked at :data:`~napari_ivd.active.UNSURE_POINT` or more; wrong is more than
    :data:`WRONG_MM` from its reference. The AUC is the chance that a wrong point is more
    uncertain than a right one (ties count half; None without both).
    """
    wrong = [p["uncertainty"] for p in points if p["error_mm"] > WRONG_MM]
    right = [p["uncertainty"] for p in points if p["error_mm"] <= WRONG_MM]
    auc = mannwhitneyu(wrong, right).statistic / (len(wrong) * len(right)) if wrong and right else None
    marked = [p for p in points if p["uncertainty"] >= UNSURE_POINT]
    return {
        "marked": len(marked),
        "wrong": len(wrong),
        "wrong_marked": sum(p["error_mm"] > WRONG_MM for p in marked),
        "auc": None if auc is None else float(auc),
    }


def _split_by_right_and_wrong(points: list[dict]) -> dict:
    """Where rho can come from: inside the right points, inside the wrong ones, and from telling them apart.

    ``separation_only`` is the rho of a cue that told every wrong point (more than
    :data:`WRONG_MM` off) from every right one and ranked nothing else: when few points are
    wrong it stays below the 0.5 target, and the rest must come from ranking the right
    points' millimetres (``within_right``). None where a group has fewer than three points.
    """
    error = [p["error_mm"] for p in points]
    wrong = [e > WRONG_MM for e in error]
    groups = {
        name: [p for p, w in zip(points, wrong, strict=True) if w == is_wrong]
        for name, is_wrong in (("within_right", False), ("within_wrong", True))
    }
    out = {
        name: _spearman([p["uncertainty"] for p in group], [p["error_mm"] for p in group])[0]
        for name, group in groups.items()
    }
    return out | {"separation_only": _spearman([float(w) for w in wrong], error)[0]}


def _mean_point_uncertainty(rows: list[dict], points: list[dict]) -> dict[str, float]:
    """Each case's mean point uncertainty (over its judged points); 1.0 for a case with none judged."""
    by_case = _points_by_case(points)
    return {
        r["case"]: float(np.mean([p["uncertainty"] for p in by_case[r["case"]]])) if r["case"] in by_case else 1.0
        for r in rows
    }


def _ranking_order(rows: list[dict]) -> list[dict]:
    """The rows in the order the viewer's ``uncertainty`` ranking gives their cases (cases to fix as a whole first)."""
    records = [CaseRecord.from_score(r["case"], "new", _volume_score(r)) for r in rows]
    by_case = {r["case"]: r for r in rows}
    return [by_case[ranked.case_id] for ranked in rank(records, "uncertainty")]


def _volume_score(row: dict) -> VolumeScore:
    """A case row's score and findings as the scorer gave them (points left out)."""
    return VolumeScore(row["score"], row["reason"], (), tuple(Finding(**f) for f in row["findings"]), 0.0)


def _rank_failures(ranked: list[dict], scores: dict[str, float], label: str, how: str) -> dict:
    """Print and return where the cases with a chain failure rank in ``ranked`` (1 = first), shown with ``scores``."""
    quarter = max(1, -(-len(ranked) // 4))
    failed = [(n, r) for n, r in enumerate(ranked, 1) if r["failures"]]
    inside = sum(n <= quarter for n, _ in failed)
    print(
        f"\ncases with a chain failure (misnamed or missing level), ranked by {how}: {len(failed)} of "
        f"{len(ranked)}; {inside} of them in the top quarter (rank <= {quarter})"
    )
    for n, r in failed:
        print(f"  rank {n:3d}  {r['case']:14s} {label} {scores[r['case']]:.2f}  {', '.join(r['failures'])}")
    return {"top_quarter": quarter, "n_failed": len(failed), "in_top_quarter": inside}


def _combinations(points: list[dict]) -> dict[str, np.ndarray]:
    """Other ways to combine the cues: mean, maximum and noisy-or of all of them and of all but one."""
    cues = np.array([[p[c] for c in CUES] for p in points], float).reshape(len(points), len(CUES))
    out = {}
    for left_out in (None, *CUES):
        x = cues[:, [i for i, c in enumerate(CUES) if c != left_out]]
        suffix = "" if left_out is None else f" without {left_out}"
        out |= {f"mean{suffix}": x.mean(1), f"max{suffix}": x.max(1), f"noisy-or{suffix}": 1 - np.prod(1 - x, 1)}
    return out


def report(points: list[dict], rows: list[dict]) -> dict:
    """Print how uncertainty tracks the point error, and where the failing cases rank; return the figures."""
    error = [p["error_mm"] for p in points]
    results: dict = {"spearman": {}, "combinations": {}}
    print(f"\nSpearman rank correlation with the actual point error ({len(points)} points, {len(rows)} cases):")
    for cue in ("uncertainty", *CUES):
        rho, p_value = _spearman([p[cue] for p in points], error)
        results["spearman"][cue] = {"rho": rho, "p": p_value}
        print(f"  {cue:12s} " + ("constant over these points" if rho is None else f"rho {rho:+.3f}  (p {p_value:.2g})"))
    interval = _case_interval(points)
    results["spearman"]["uncertainty"]["case_interval"] = interval
    if interval is not None:
        print(f"  uncertainty's rho, 95 % interval resampling whole cases: {interval[0]:+.3f} to {interval[1]:+.3f}")
    shown = results["highlighted"] = _highlighted(points)
    auc = "undefined" if shown["auc"] is None else f"{shown['auc']:.2f}"
    print(
        f"  marked in the viewer (uncertainty >= {UNSURE_POINT}): {shown['marked']} of {len(points)} points, "
        f"{shown['wrong_marked']} of the {shown['wrong']} more than {WRONG_MM:g} mm off; "
        f"AUC of uncertainty for those {auc}"
    )
    split = results["split"] = _split_by_right_and_wrong(points)
    shown_rho = {k: "undefined" if r is None else f"{r:+.3f}" for k, r in split.items()}
    print(
        f"  uncertainty's rho inside the right points {shown_rho['within_right']}, inside the wrong ones "
        f"{shown_rho['within_wrong']}; a cue that only told wrong from right, perfectly, would score "
        f"{shown_rho['separation_only']}"
    )
    for name, values in _combinations(points).items():
        results["combinations"][name] = _spearman(list(values), error)[0]
    best = sorted(((r, n) for n, r in results["combinations"].items() if r is not None), reverse=True)[:3]
    print("  best other combinations of the cues: " + "; ".join(f"{n} {r:+.3f}" for r, n in best))
    judged = [c for c in rows if c["error_mm"] is not None]
    mean_points = _mean_point_uncertainty(rows, points)
    case_scores = {"score": {r["case"]: r["score"] for r in rows}, "mean point uncertainty": mean_points}
    for label, scores in case_scores.items():
        rho, p_value = _spearman([scores[c["case"]] for c in judged], [c["error_mm"] for c in judged])
        results["spearman"]["case_score" if label == "score" else "case_mean_points"] = {"rho": rho, "p": p_value}
        shown = "undefined" if rho is None else f"rho {rho:+.3f}  (p {p_value:.2g})"
        print(f"  case {label} vs mean case error: {shown}")
    results["failures_ranked"] = _rank_failures(
        _ranking_order(rows), case_scores["score"], "score", "the ranking (cases to fix as a whole first, then score)"
    )
    by_points = sorted(rows, key=lambda r: -mean_points[r["case"]])
    label = "mean point uncertainty"
    results["failures_ranked_by_mean_points"] = _rank_failures(by_points, mean_points, label, label)
    return results


def _score_cases(args: argparse.Namespace) -> tuple[str, list[dict], list[dict]]:
    """Score every judged case with the active-learning scorer: (model name, per-point rows, per-case rows)."""
    model, card, device = load_model(args)
    dev = scans_to_judge(args, card)
    points: list[dict] = []
    rows: list[dict] = []
    print(f"model {card['name']} on {device}; {len(dev)} dev cases")
    print(f"{'case':14s} {'pts':>3s} {'score':>5s} {'err mm':>6s} {'s':>5s}  main reason")
    for case in dev:
        start = time.perf_counter()
        scored = run_steps(score_volume_steps(case.volume, model, card, device))
        seconds = time.perf_counter() - start
        geometry = case.volume.geometry
        predicted = scored.prediction.by_name() if scored.prediction is not None else {}
        errors = []
        for p in scored.points:
            if p.level not in case.keypoints_vox:
                continue
            truth_mm = geometry.vox_to_mm(case.keypoints_vox[p.level][None])[0]
            error = float(np.linalg.norm(predicted[p.level].xyz_mm - truth_mm))
            errors.append(error)
            points.append(
                {"case": case.name, "level": p.level, "uncertainty": p.uncertainty, "error_mm": error}
                | {cue: p.components.get(cue, 0.0) for cue in CUES}
            )
        mean_error = float(np.mean(errors)) if errors else None
        reference_mm = {n: geometry.vox_to_mm(np.asarray(v, float)[None])[0] for n, v in case.keypoints_vox.items()}
        failures = chain_failures(
            {n: p.xyz_mm for n, p in predicted.items()},
            reference_mm,
            l5_s1_in_view=sacrum_in_view(case.keypoints_vox, geometry.shape),
        )
        rows.append(
            {"case": case.name, "score": scored.score, "reason": scored.reason, "error_mm": mean_error}
            | {"failures": list(failures), "findings": [dataclasses.asdict(f) for f in scored.findings]}
        )
        shown = f"{mean_error:6.2f}" if mean_error is not None else "     -"
        print(
            f"{case.name:14s} {len(errors):3d} {scored.score:5.2f} {shown} {seconds:5.1f}  {scored.reason}"
            + (f"  [{', '.join(failures)}]" if failures else "")
        )

    return card["name"], points, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_and_scan_options(parser)
    parser.add_argument("--json", type=Path, help="write every point's cues and every case's findings here")
    parser.add_argument("--replay", type=Path, help="report on an earlier run's --json instead of scoring")
    args = parser.parse_args()

    if args.replay is not None:
        earlier = json.loads(args.replay.read_text())
        name, points, rows = earlier["model"], earlier["points"], earlier["cases"]
        print(f"model {name}: {args.replay} ({len(rows)} cases)")
    else:
        name, points, rows = _score_cases(args)
    results = {"model": name, "n_points": len(points), "cases": rows, "points": points} | report(points, rows)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
