"""The ``napari-ivd`` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from napari_ivd import __version__
from napari_ivd._cli_predict import add_subcommands as add_predict_subcommands
from napari_ivd._cli_rank import add_subcommands as add_rank_subcommands
from napari_ivd._cli_store import add_subcommands as add_store_subcommands
from napari_ivd._cli_train import add_subcommands as add_train_subcommands
from napari_ivd.errors import IvdError

log = logging.getLogger("napari_ivd")


def _demo(args: argparse.Namespace) -> int:
    from napari_ivd._demo import run_demo

    out = run_demo(args.out, headless=True if args.headless else None)
    if out is not None:
        print(f"napari-ivd demo: wrote {out / 'screenshot.png'} and {out / 'summary.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and documentation)."""
    parser = argparse.ArgumentParser(
        prog="napari-ivd",
        description="Spine MRI disc and vertebra annotation with napari: command-line jobs.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="open the bundled lumbar T2w sample in napari",
        description=(
            "Open the bundled lumbar T2w sample in napari. With a display the viewer stays open; "
            "without one (or with --headless) it renders on a private Xvfb display and writes "
            "screenshot.png and summary.json into --out."
        ),
    )
    demo.add_argument("--out", type=Path, default=Path("napari-ivd-demo"), help="output folder (default: %(default)s)")
    demo.add_argument("--headless", action="store_true", help="write the screenshot even when a display exists")
    demo.set_defaults(func=_demo)
    add_predict_subcommands(sub)
    add_train_subcommands(sub)
    add_store_subcommands(sub)
    add_rank_subcommands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for a reported error)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args))
    except IvdError as exc:
        print(f"napari-ivd: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a missing permission, a path that is a file: the OS's words suffice
        print(f"napari-ivd: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
