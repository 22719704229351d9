"""``napari-ivd import``, ``export`` and ``store info|check|history|diff``: the annotation store on the command line."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_ivd.errors import IvdError

if TYPE_CHECKING:
    from napari_ivd.store import AnnotationStore

log = logging.getLogger(__name__)

_STATUSES = ("new", "proposed", "in progress", "verified")


def _per_image(values: list[Any] | None, n_images: int, flag: str) -> list[Any]:
    """One value per image from a repeated option (absent: None for every image)."""
    if values is None:
        return [None] * n_images
    if len(values) != n_images:
        raise IvdError(
            f"{flag} given {len(values)} time(s) for {n_images} image(s); give it once per IMAGE, in the same order"
        )
    return values


def run_import(args: argparse.Namespace) -> int:
    """Check every image and annotation file first, then write them as cases (one per image)."""
    from napari_ivd._cli_predict import unique_names
    from napari_ivd.store import AnnotationStore, commit_import, prepare_import

    n = len(args.images)
    case_ids = _per_image(args.cases, n, "--case")
    if n > 1 and args.cases is None:
        case_ids = unique_names(args.images)
    points, levels, masks = (
        _per_image(v, n, f) for v, f in ((args.points, "--points"), (args.levels, "--levels"), (args.mask, "--mask"))
    )
    absents = [
        None if a is None else [x.strip() for x in a.split(",") if x.strip()]
        for a in _per_image(args.absent, n, "--absent")
    ]
    store = AnnotationStore.open(args.store) if AnnotationStore.exists(args.store) else None
    prepared = [
        prepare_import(store, image, case_id=case_id, points=p, levels=lv, mask=m, absent=a)
        for image, case_id, p, lv, m, a in zip(args.images, case_ids, points, levels, masks, absents, strict=True)
    ]
    ids = [p.case_id for p in prepared]
    if len(set(ids)) != len(ids):
        raise IvdError(f"two images would become the same case ({', '.join(ids)}); name them with --case")
    first_with: dict[str, Path] = {}
    for item in prepared:
        twin = first_with.setdefault(item.image_sha256, item.files[0])
        if twin != item.files[0]:
            raise IvdError(f"{twin} and {item.files[0]} hold the same voxels: import the scan once")
    store = store or AnnotationStore.open(args.store, create=True)
    for item in prepared:
        info = commit_import(store, item, author=args.author, note=args.note, status=args.status)
        if args.names_unsure:
            info = store.set_names_unsure(info.case_id)
        print(f"{item.files[0]} -> {store.location} case {info.case_id}: {info.status}, head {info.head or '-'}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Export the head (or ``--revision``) of one case, or of every case into sub-folders."""
    from napari_ivd.store import AnnotationStore, export_revision

    store = AnnotationStore.open(args.store)
    if args.revision and not args.case:
        raise IvdError("--revision names a revision of one case; give --case too")
    if args.out.exists() and not args.out.is_dir():
        raise IvdError(f"--out {args.out} is a file; give a folder (it is created if absent)")
    lost = [] if args.case else store.lost_cases()
    if lost:
        raise IvdError(
            f"{store.location}: case(s) {', '.join(lost)} lost their HEAD; nothing exported. "
            f"Run `napari-ivd store repair {store.location}` first"
        )
    case_ids = [args.case] if args.case else store.case_ids()
    if not case_ids:
        raise IvdError(f"{store.location}: holds no case to export")
    for case_id in case_ids:
        out = args.out if args.case else args.out / case_id
        files = export_revision(store, case_id, out, args.revision)
        names = " ".join(p.name for p in files.values())
        print(f"case {case_id} -> {out}: {names}")
    return 0


def format_info(info: dict[str, Any], model_lines: Sequence[str] = ()) -> str:
    """``store info`` as text; ``model_lines`` (from :func:`describe_models`) follow the models line."""
    lines = [
        f"store      {info['location']}",
        f"format     version {info['format_version']}, created {info['created_utc']}",
        f"masks      chunks {tuple(info['mask_chunk_vox'])} vox, keyframe every {info['keyframe_every']} revisions",
        f"size       {info['size_bytes'] / 1e6:.2f} MB",
        f"lock       {info['lock'] or 'free'}",
        f"models     {', '.join(info['models']) or 'none'}",
        *model_lines,
        f"cases      {len(info['cases'])}",
    ]
    if info.get("lost_head"):
        lines.append(
            f"LOST HEAD  {', '.join(info['lost_head'])}: committed revisions no HEAD lists; "
            f"run `napari-ivd store repair {info['location']}`"
        )
    if info["cases"]:
        lines.append(f"  {'case':28s} {'status':12s} {'head':8s} {'revs':>4s} {'props':>5s} {'shape':>14s} orient")
    for c in info["cases"]:
        shape = "×".join(map(str, c["shape"]))
        lines.append(
            f"  {c['case_id']:28s} {c['status']:12s} {c['head'] or '-':8s} {c['revisions']:4d} {c['proposals']:5d} "
            f"{shape:>14s} {c['axcodes']}{'  names unsure' if c.get('names_unsure') else ''}"
        )
    return "\n".join(lines)


def describe_models(store: AnnotationStore) -> list[str]:
    """The active model, then one line per stored version: where it comes from and its same-run figure."""
    from napari_ivd.model_versions import active_choice, model_choices

    active = active_choice(store)
    lines = [f"  active: {active.label()}"]
    lines += [f"  {c.label(active=c == active)}" for c in model_choices(store) if c.stored]
    return lines


def format_history(store: AnnotationStore, case_id: str) -> str:
    """``store history`` of one case as text, oldest revision first."""
    case = store.case(case_id)
    unsure = ", level names unsure (trains masks only)" if case.names_unsure else ""
    lines = [f"case {case_id}: {case.status}{unsure}, head {case.head or '-'}, {case.n_proposals} proposal(s)"]
    for p in store.proposals(case_id):
        lines.append(f"  {p.proposal_id}  {p.created_utc[:19]}  model {p.model}  {p.n_points} points")
    for r in store.revisions(case_id):
        mask = "no mask" if not r.has_mask else f"mask {r.mask_storage} ({r.voxels_changed} vox changed)"
        restored = f" restored from {r.restored_from}" if r.restored_from else ""
        if r.proposal:
            restored += f" started from {r.proposal}"
        if r.merged_over:
            restored += f" (edit based on {r.based_on}, kept on top of {r.merged_over})"
        if r.absent:
            restored += f", absent {', '.join(r.absent)}"
        mark = "  <- head" if r.revision_id == case.head else ""
        lines.append(
            f"  {r.revision_id}  {r.created_utc[:19]}  {r.author:12s} {r.source:14s} parent {r.parent or '-':8s} "
            f"{r.n_points:3d} points, {mask}{restored}  {r.note}{mark}"
        )
    return "\n".join(lines)


def format_diff(store: AnnotationStore, case_id: str | None, revisions: Sequence[str]) -> str:
    """``store diff`` as text: revision A to B of a case (default: the head's parent to the head)."""
    if case_id is None or len(revisions) > 2:
        raise IvdError("store diff compares two revisions of one case: napari-ivd store diff STORE CASE [A [B]]")
    if not revisions:
        head = store.revision(case_id)
        if head.parent is None:
            raise IvdError(f"{case_id}: {head.revision_id} is its first revision; name two revisions to compare")
        revisions = [head.parent, head.revision_id]
    return store.diff(case_id, *revisions).format()


def run_store(args: argparse.Namespace) -> int:
    """``store info|check|history|diff|repair|names-unsure|names-sure``; ``check`` returns 1 on problems."""
    from napari_ivd.store import AnnotationStore

    if args.revisions and args.action != "diff":
        raise IvdError(f"store {args.action} takes no revisions ({' '.join(args.revisions)}); only store diff does")
    store = AnnotationStore.open(args.store)
    if args.action == "info":
        print(format_info(store.info(), describe_models(store)))
        return 0
    if args.action == "repair":
        results = store.repair([args.case] if args.case else None)
        models = [] if args.case else store.repair_models()
        for result in results:
            print(result.format())
        for model_id in models:
            print(f"model {model_id}: model.json written again from its card and weights; listed again")
        if not results and not models:
            print(f"{store.location}: nothing to repair")
        return 1 if any(r.unverified for r in results) else 0
    if args.action == "check":
        report = store.check([args.case] if args.case else None)
        print(report.format())
        return 0 if report.ok else 1
    if args.action == "diff":
        print(format_diff(store, args.case, args.revisions))
        return 0
    if args.action in ("names-unsure", "names-sure"):
        if args.case is None:
            raise IvdError(f"store {args.action} marks one case: napari-ivd store {args.action} STORE CASE")
        case = store.set_names_unsure(args.case, args.action == "names-unsure")
        print(format_history(store, case.case_id).splitlines()[0])
        return 0
    for case_id in [args.case] if args.case else store.case_ids():
        print(format_history(store, case_id))
    return 0


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register ``import``, ``export`` and ``store`` on the main parser."""
    imp = sub.add_parser(
        "import",
        help="add images (and their annotations) to an annotation store",
        description=(
            "Add each IMAGE as a case of the annotation store (created if absent), with its annotations as a "
            "revision. Every file is checked before anything is written. Repeat --points/--levels/--mask/--case "
            "once per IMAGE, in order. Importing into an existing case adds a revision; what is not given is "
            "carried over from its head."
        ),
    )
    imp.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="NIfTI file or DICOM series folder")
    imp.add_argument("--store", required=True, help="store folder or fsspec URL (e.g. s3://lab/annotations.zarr)")
    imp.add_argument("--points", type=Path, action="append", help="points.csv (as predict writes) or SCT disc labels")
    imp.add_argument("--levels", type=Path, action="append", help="SCT vertebral-level labels (value N = body N)")
    imp.add_argument("--mask", type=Path, action="append", help="mask NIfTI in TotalSpineSeg values")
    imp.add_argument(
        "--absent",
        action="append",
        metavar="LEVELS",
        help="levels not present in the scan, comma-separated (e.g. L5-S1 on a sacralised L5; as an exported "
        "annotation.json lists them)",
    )
    imp.add_argument(
        "--names-unsure",
        action="store_true",
        help="the levels may be counted wrong (e.g. a transitional vertebra): the cases train masks, not level names",
    )
    imp.add_argument("--case", dest="cases", action="append", help="case id (default: from the file names)")
    imp.add_argument("--status", choices=_STATUSES, help="case status after the import (e.g. verified)")
    imp.add_argument("--author", help="author of the imported revision (default: your login)")
    imp.add_argument("--note", help="note of the imported revision (default: the file names)")
    imp.set_defaults(func=run_import)

    exp = sub.add_parser(
        "export",
        help="write revisions as points.csv + discs/levels/mask NIfTI on the original grid",
        description=(
            "Write the head revision (or --revision) of --case, or of every case into one sub-folder each: "
            "points.csv, discs.nii.gz (SCT disc labels), levels.nii.gz (SCT vertebral levels), mask.nii.gz "
            "(TotalSpineSeg) and annotation.json, voxel-exact on each case's original image grid."
        ),
    )
    exp.add_argument("--store", required=True, help="store folder or fsspec URL")
    exp.add_argument("--case", help="one case (default: all cases, one sub-folder each)")
    exp.add_argument("--revision", help="revision id such as r000003 (default: the head)")
    exp.add_argument("--out", type=Path, required=True, help="output folder")
    exp.set_defaults(func=run_export)

    store = sub.add_parser(
        "store",
        help="inspect an annotation store: info, check, history, diff, repair; mark a case's level names unsure",
        description=(
            "info: settings, size, lock and cases. check: verify every committed revision (hashes, parents, "
            "masks); exits 1 with a report when something is wrong. history: the revisions of CASE (or all). "
            "diff: what changed from revision A to B of CASE (points, levels marked absent, mask voxels; "
            "default: the head's parent to the head). "
            "repair: restore a lost or rolled-back HEAD and lost COMMITTED marks from the committed revision "
            "records, and list again models whose model.json was lost while their weights and card match "
            "(deletes nothing; exits 1 when a committed record could not be verified). "
            "names-unsure / names-sure: mark whether the levels of CASE may be counted wrong (a transitional "
            "vertebra, no end of the spine in view): such a case trains masks, not level names, and judges no "
            "model's names."
        ),
    )
    store.add_argument("action", choices=["info", "check", "history", "diff", "repair", "names-unsure", "names-sure"])
    store.add_argument("store", help="store folder or fsspec URL")
    store.add_argument("case", nargs="?", help="limit check/history to one case; the case to diff or mark")
    store.add_argument("revisions", nargs="*", metavar="A B", help="diff: two revisions such as r000001 r000003")
    store.set_defaults(func=run_store)
