"""``napari-ivd rank``: which cases of a store to correct next, as CSV, headless."""

from __future__ import annotations

import argparse
import csv
import logging
import sys

log = logging.getLogger(__name__)

CSV_COLUMNS = ("rank", "case_id", "status", "score", "reason")


def run_rank(args: argparse.Namespace) -> int:
    """Score the store's cases (cached per model version) and print the ranking as CSV on stdout."""
    from napari_ivd.active import score_store_steps
    from napari_ivd.progress import run_steps
    from napari_ivd.store import AnnotationStore

    store = AnnotationStore.open(args.store)
    ranking = run_steps(
        score_store_steps(store, args.model, args.device, args.strategy, args.seed),
        lambda report: log.debug("%d/%d %s", report.done, report.total, report.message),
    )
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in ranking.cases:
        score = "" if row.score is None else f"{row.score:.4f}"
        writer.writerow((row.rank, row.case_id, row.status, score, row.reason))
    if ranking.model is not None:
        print(f"ranked {len(ranking.cases)} cases by {ranking.strategy} with {ranking.model}", file=sys.stderr)
    return 0


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register ``rank`` on the main parser (without importing torch: ``--help`` stays instant)."""
    rank = sub.add_parser(
        "rank",
        help="rank a store's cases by how much correcting them would teach the model (CSV)",
        description=(
            "Score every case of --store that is not verified (test-time perturbation spread, heatmap peaks, "
            "anatomical plausibility; cached in the store per model version) and print the cases to correct "
            "next as CSV: rank, case_id, status, score, reason."
        ),
    )
    rank.add_argument("--store", required=True, help="store folder or fsspec URL")
    rank.add_argument(
        "--strategy",
        default="uncertainty",
        help="random, uncertainty or uncertainty+diversity (default: %(default)s)",
    )
    rank.add_argument(
        "--model", help="stored model id, bundled model name or model folder (default: the store's active model)"
    )
    rank.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    rank.add_argument("--seed", type=int, default=0, help="seed of the random strategy (default: %(default)s)")
    rank.set_defaults(func=run_rank)
