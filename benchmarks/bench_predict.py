"""Accuracy and speed of a model on the held-out dev cases, overall and per source.

    python benchmarks/bench_predict.py [--model ivdnet-lumbar] [--data ../shared/data/lumbar]
                                       [--device cpu|cuda] [--repeats 7] [--json out.json]
                                       [--cases VB2/case-19 ...] [--all-held-out] [--sources VB1 ...]
                                       [--end-below L5] [--per-case]

The dev cases are the ones `napari-ivd train` held out (same split, same seed); a model
trained on some of them is refused. With ``--all-held-out``: every case the model's card
does not list as trained on (for a model trained with another split, e.g. the bundled
starter on the data as it was). ``--repeats 0`` skips the latency figures.
Prints, per source (with its contrast) and overall: disc and vertebra
distance to target (mean ± sd, mm), FNR/FPR at 5 mm, identification rate, PCK, Dice per
structure, and prediction latency per volume (model loading excluded). First, for one dev
volume of each shape: the latency of its first prediction at that shape in this process, and
the median and range of ``--repeats`` more (a shared machine's speed drifts, so a median of
warm runs is the figure to compare). Last, per source: on how many scans where the sacrum is
in view the model named L5-S1 at its place. The rule uses the reference only
(:func:`napari_ivd.metrics.sacrum_in_view`): the reference labels S1 or L5-S1 (VB1, IVD), or
it labels L4 and L5 and the image reaches one L4→L5 body spacing below the L5 centroid (VB2,
VB3, whose references stop at L5); L5-S1 counts as named within half a level spacing of the
reference's L5-S1, or of ``L5 + (L5 - L4) / 2`` where it has none
(:func:`napari_ivd.metrics.l5_s1_outcome`); and the scans whose levels were renamed from the
sacrum (:func:`napari_ivd.skeleton.anchor_on_sacrum`). ``--cases`` limits everything to some dev cases.
``--end-below L5`` judges every case as if its scan stopped half a level below L5, with the
sacrum out of view (:func:`napari_ivd.training.cases.end_field_of_view`; cases that do not
annotate L5 and L4 are left out), so the names must come from something else than the
sacrum; the L5-S1 count is then not made. ``--per-case`` adds one line per case: how many of
its reference levels are named right, and its distance to target; a chain named one level
off reads 0 of 9 there, where the overall rate only drops.
Figures only — the targets live in the issue, not here.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from judged_scans import add_model_and_scan_options, load_model, scans_to_judge

from napari_ivd._cli_predict import format_report
from napari_ivd.inference import Prediction, predict
from napari_ivd.io import Volume
from napari_ivd.metrics import l5_s1_outcome, sacrum_in_view
from napari_ivd.training.cases import LabelledCase, end_field_of_view
from napari_ivd.training.engine import evaluate_groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_and_scan_options(parser)
    parser.add_argument("--repeats", type=int, default=7, help="warm predictions timed per volume shape")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--cases", nargs="+", metavar="SET/CASE", help="only these dev cases (default: all)")
    parser.add_argument(
        "--end-below", metavar="LEVEL", help="judge the scans as if they stopped half a level below LEVEL (e.g. L5)"
    )
    parser.add_argument("--per-case", action="store_true", help="also one line per case: levels named right")
    args = parser.parse_args()
    if args.repeats < 0:
        parser.error("--repeats must be 0 (no latency figures) or more")

    t0 = time.perf_counter()
    model, card, device = load_model(args)
    load_s = time.perf_counter() - t0
    dev = scans_to_judge(args, card)
    if args.cases:
        unknown = sorted(set(args.cases) - {c.name for c in dev})
        if unknown:
            parser.error(
                f"--cases {', '.join(unknown)}: not dev cases; the dev cases are {', '.join(c.name for c in dev)}"
            )
        dev = [c for c in dev if c.name in args.cases]
    if args.end_below:
        ended = [e for c in dev if (e := end_field_of_view(c, args.end_below)) is not None]
        print(f"fields of view end half a level below {args.end_below} on {len(ended)} of {len(dev)} cases")
        dev = ended
    print(
        f"model {card['name']} ({card['params']:,} parameters, {card['gflops']:.2f} GFLOPs at 256x256), "
        f"loaded in {load_s:.2f} s on {device}; torch {torch.__version__}, {platform.machine()}, "
        f"{torch.get_num_threads()} threads"
    )
    by_shape = {_shape(c): c for c in dev} if args.repeats else {}
    latency = {shape: warm_latency(model, card, case.volume, device, args.repeats) for shape, case in by_shape.items()}
    if latency:
        print(f"\n== latency by volume shape: first prediction at that shape, then {args.repeats} more")
    for shape, times in latency.items():
        warm = np.array(times["warm_s"])
        print(
            f"{shape} ({by_shape[shape].name}): first {times['first_s']:.2f} s, then median {np.median(warm):.2f} s "
            f"(range {warm.min():.2f}-{warm.max():.2f} s)"
        )
    l5_s1: dict[str, str | None] = {}
    from_sacrum: list[str] = []

    def judge_l5_s1(case: LabelledCase, prediction: Prediction) -> None:
        l5_s1[case.name] = None if args.end_below else l5_s1_at_sacrum(case, prediction)
        if prediction.named_from_sacrum:
            from_sacrum.append(case.name)

    sources = sorted({d.name.split("/")[0] for d in dev})
    groups = {"all": dev} | {
        f"{s} ({dev_of[0].contrast})": dev_of
        for s in sources
        for dev_of in [[d for d in dev if d.name.startswith(f"{s}/")]]
    }
    per_case = {c.name: [c] for c in dev} if args.per_case else {}
    results = evaluate_groups(model, card, groups | per_case, device, on_prediction=judge_l5_s1)
    for name, cases in groups.items():
        report = results[name]
        seconds = np.array(report["predict_seconds"])
        shapes = sorted({_shape(c) for c in cases})
        print(f"\n== {name}: {len(cases)} cases ({', '.join(c.name for c in cases)}); shapes {', '.join(shapes)}")
        print(format_report(report))
        print(f"latency per volume: mean {seconds.mean():.2f} s, max {seconds.max():.2f} s")
    print("\n== L5-S1 where the sacrum is in view (rule: napari_ivd.metrics.sacrum_in_view, l5_s1_outcome)")
    if args.end_below:
        print(f"not counted: every field of view ends below {args.end_below}, above the sacrum")
    for source in sorted({name.split("/")[0] for name in l5_s1 if not args.end_below}):
        judged = {n: o for n, o in l5_s1.items() if n.startswith(f"{source}/") and o is not None}
        named = sum(o == "named" for o in judged.values())
        others = ", ".join(f"{n} {o}" for n, o in judged.items() if o != "named")
        print(
            f"{source}: L5-S1 named on {named}/{len(judged)} scans where the sacrum is in view"
            + (f" ({others})" if others else "")
        )
    print(f"levels renamed from the sacrum on {len(from_sacrum)}/{len(l5_s1)} scans: {', '.join(from_sacrum) or '-'}")
    if per_case:
        print("\n== per case: reference levels named right (own level within 5 mm), distance to target")
        print("\n".join(case_line(name, results[name]) for name in per_case))
    if args.json:
        report = {
            "device": str(device),
            "load_s": load_s,
            "results": results,
            "latency": latency,
            "l5_s1": l5_s1,
            "named_from_sacrum": from_sacrum,
        }
        args.json.write_text(json.dumps(report, indent=2))


def case_line(name: str, report: dict) -> str:
    """One case's line from its :func:`~napari_ivd.training.engine.evaluate_cases` report: levels right, distance."""
    kinds = [k for k in report["keypoints"].values() if k["n_annotated"]]
    annotated = sum(k["n_annotated"] for k in kinds)
    right = sum(round(k["identification"] * k["n_annotated"]) for k in kinds)
    distance = "-" if report["error_mm"] is None else f"{report['error_mm']:.1f} mm"
    return f"{name}: {right}/{annotated} levels named right, distance {distance}"


def _shape(case: LabelledCase) -> str:
    return "x".join(map(str, case.volume.geometry.shape))


def l5_s1_at_sacrum(case: LabelledCase, prediction: Prediction) -> str | None:
    """The case's :func:`~napari_ivd.metrics.l5_s1_outcome`; ``None`` where its reference has the sacrum out of view."""
    if not sacrum_in_view(case.keypoints_vox, case.volume.geometry.shape):
        return None
    geometry = case.volume.geometry
    reference_mm = {n: geometry.vox_to_mm(np.asarray(p)[None])[0] for n, p in case.keypoints_vox.items()}
    return l5_s1_outcome({s.name: s.xyz_mm for s in prediction.structures}, reference_mm)


def warm_latency(model: torch.nn.Module, card: dict, volume: Volume, device: torch.device, repeats: int) -> dict:
    """Seconds of the first prediction of ``volume`` (new shapes: kernel set-up) and of ``repeats`` more."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        predict(volume, model, card, device)
        times.append(time.perf_counter() - start)
    return {"first_s": times[0], "warm_s": times[1:]}


if __name__ == "__main__":
    main()
