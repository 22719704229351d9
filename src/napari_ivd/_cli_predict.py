"""``napari-ivd predict`` and ``napari-ivd evaluate``: the prediction jobs of the command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from napari_ivd.errors import IvdError
from napari_ivd.io.volume import nifti_stem

log = logging.getLogger(__name__)


def unique_names(paths: list[Path]) -> list[str]:
    """Short, unique folder names for several inputs: the fewest trailing path parts that differ.

    ``lumbar/VB2/case-07/image.nii.gz`` and ``lumbar/VB3/case-07/image.nii.gz`` become
    ``VB2_case-07_image`` and ``VB3_case-07_image``.
    """

    all_parts = [[*p.resolve().parent.parts[1:], nifti_stem(p)] for p in paths]
    for n in range(1, max(len(a) for a in all_parts) + 1):
        names = ["_".join(a[-n:]) for a in all_parts]
        if len(set(names)) == len(names):
            return names
    raise IvdError("the same image was given twice")


def run_predict(args: argparse.Namespace) -> int:
    """Predict each image into its own folder (one image: straight into ``--out``)."""
    import time

    from napari_ivd.active import check_prediction
    from napari_ivd.inference import predict, save_prediction
    from napari_ivd.io import read_volume
    from napari_ivd.models import find_model_dir, load_checkpoint, resolve_device

    device = resolve_device(args.device)
    model_dir = find_model_dir(args.model)
    t0 = time.perf_counter()
    model, card = load_checkpoint(model_dir, device=device)
    log.info("model %s loaded on %s in %.2f s", model_dir, device, time.perf_counter() - t0)
    names = unique_names(args.images) if len(args.images) > 1 else [""]
    failures = 0
    for image, name in zip(args.images, names, strict=True):
        out = args.out / name if name else args.out
        try:
            volume = read_volume(image)
            prediction = predict(
                volume, model, card, device, progress=lambda p, image=image: log.debug("%s: %s", image, p.message)
            )
        except IvdError as exc:
            print(f"napari-ivd: error: {exc}", file=sys.stderr)
            failures += 1
            continue
        save_prediction(prediction, volume, out)
        levels = " ".join(s.name for s in prediction.structures) or "nothing"
        anchored = " (named from the sacrum)" if prediction.named_from_sacrum else ""
        print(f"{image}: {levels}{anchored} -> {out} ({prediction.seconds['total_s']:.2f} s)")
        for said in check_prediction(prediction, volume.view).in_words():
            print(f"  check: {said}")
    return 2 if failures else 0


def _prediction_dirs(pred: Path) -> list[Path]:
    if (pred / "points.csv").is_file():
        return [pred]
    found = sorted(p.parent for p in pred.glob("*/points.csv"))
    if not found:
        raise IvdError(f"{pred}: no points.csv here or in its sub-folders; run `napari-ivd predict` first")
    return found


def _fmt(value: float | None, pct: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f} %" if pct else f"{value:.2f}"


def format_report(report: dict[str, Any]) -> str:
    """The evaluation summary as a plain-text table."""
    lines = [
        f"{'':10s} {'n':>4s} {'DTT mm (mean ± sd)':>20s} {'FNR@5':>8s} {'FPR@5':>8s} {'ident.':>8s} "
        f"{'PCK@2':>7s} {'PCK@4':>7s} {'PCK@6':>7s} {'Dice':>6s}"
    ]
    for kind, k in report["keypoints"].items():
        dtt = "–" if k["dtt_mean_mm"] is None else f"{k['dtt_mean_mm']:.2f} ± {k['dtt_sd_mm']:.2f}"
        lines.append(
            f"{kind:10s} {k['n_annotated']:4d} {dtt:>20s} {_fmt(k['fnr'], True):>8s} {_fmt(k['fpr'], True):>8s} "
            f"{_fmt(k['identification'], True):>8s} "
            + " ".join(f"{_fmt(k['pck'][t], True):>7s}" for t in ("2mm", "4mm", "6mm"))
            + f" {_fmt(report['dice'][kind]['per_structure']):>6s}"
        )
    return "\n".join(lines)


def run_evaluate(args: argparse.Namespace) -> int:
    """Compare predictions with the ground truth beside their source images (or ``--gt``)."""

    from napari_ivd.io import read_volume
    from napari_ivd.io.annotations import find_annotations, points_mm, read_points_csv, read_tss_mask
    from napari_ivd.metrics import dice_rows, keypoint_rows, rows_as_dicts, summarize_dice, summarize_keypoints

    pred_dirs = _prediction_dirs(args.pred)
    if args.gt is not None and len(pred_dirs) > 1:
        raise IvdError("--gt names one case folder; with several predictions, leave it out to use each source's folder")
    point_rows, mask_rows = [], []
    for pred_dir in pred_dirs:
        summary = json.loads((pred_dir / "prediction.json").read_text())
        image = Path(summary["source"])
        gt_dir = args.gt or image.parent
        volume = read_volume(image)
        gt_points, gt_mask = find_annotations(gt_dir, volume.geometry)
        geometry = volume.geometry
        pred_mm = points_mm(read_points_csv(pred_dir / "points.csv"), geometry)
        point_rows += keypoint_rows(pred_dir.name, pred_mm, points_mm(gt_points, geometry), args.threshold_mm)
        if gt_mask is not None and (pred_dir / "mask.nii.gz").is_file():
            mask_rows += dice_rows(pred_dir.name, read_tss_mask(pred_dir / "mask.nii.gz", geometry), gt_mask)
    report = {
        "threshold_mm": args.threshold_mm,
        "cases": [d.name for d in pred_dirs],
        "keypoints": summarize_keypoints(point_rows),
        "dice": summarize_dice(mask_rows),
        "rows": {"keypoints": rows_as_dicts(point_rows), "dice": mask_rows},
    }
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register ``predict`` and ``evaluate`` on the main parser."""
    predict = sub.add_parser(
        "predict",
        help="propose named disc/vertebra points and masks for images",
        description=(
            "Write points.csv, discs.nii.gz (SCT disc labels), levels.nii.gz (SCT vertebral levels), mask.nii.gz "
            "(TotalSpineSeg values) and prediction.json on each image's own grid into --out (one sub-folder per "
            "image when several are given): the files `store export` writes."
        ),
    )
    predict.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="NIfTI file or DICOM series folder")
    predict.add_argument("--out", type=Path, required=True, help="output folder")
    predict.add_argument("--model", help="model folder or bundled model name (default: the starter model)")
    predict.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: %(default)s")
    predict.set_defaults(func=run_predict)

    evaluate = sub.add_parser(
        "evaluate",
        help="score predictions against ground truth (distance, FNR/FPR, identification, PCK, Dice)",
        description=(
            "Compare the output of `predict` with ground truth: points.csv, SCT disc-label files (*disc*.nii.gz) "
            "and a TotalSpineSeg mask (mask_tss.nii.gz or mask.nii.gz) in the source image's folder, or in --gt."
        ),
    )
    evaluate.add_argument("--pred", type=Path, required=True, help="a predict output folder, or a folder of them")
    evaluate.add_argument("--gt", type=Path, help="ground-truth folder (one case); default: each source image's folder")
    evaluate.add_argument("--threshold-mm", type=float, default=5.0, help="detection radius (default: %(default)s)")
    evaluate.add_argument("--json", type=Path, help="also write the full report as JSON")
    evaluate.set_defaults(func=run_evaluate)
