"""What an annotator works through: images found in a folder, a store's cases, the next case, a prediction.

The annotation widget gathers clicks and shows results; everything it runs is here, as
plain functions and jobs (no Qt, no napari) that the widget drives in a worker thread
and tests drive with ``run_steps``. Long ones are jobs (:mod:`napari_ivd.progress`)
that report their steps and return their result, so a worker can show progress and stop
between steps.

Example
-------
>>> images = find_images(Path("bids_dataset"))           # skips masks, labels, derivatives
>>> report = run_steps(import_images(store, images))      # or drive it in a worker
>>> next_case(store.case_ids(), statuses, current=None)   # the first case not verified yet
"""

from __future__ import annotations

import logging
import re
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_ivd.errors import IvdError
from napari_ivd.inference import PREDICT_STAGES, Prediction, predict_job, prediction_points
from napari_ivd.io import Volume
from napari_ivd.io.annotations import LabelledPoint
from napari_ivd.io.nifti import is_nifti_path
from napari_ivd.io.volume import nifti_stem
from napari_ivd.model_versions import model_folder, stored_model
from napari_ivd.models import ModelCache, find_model_dir
from napari_ivd.progress import Job, Progress, Tally, run_steps
from napari_ivd.store import AnnotationStore, CaseInfo, ProposalInfo, import_case
from napari_ivd.store.schema import check_case_id

log = logging.getLogger(__name__)

__all__ = [
    "ImportReport",
    "OpenedCase",
    "case_ids_for",
    "find_images",
    "import_images",
    "next_case",
    "open_case_steps",
    "predict_case_steps",
    "predict_steps",
    "run_steps",
]


#: File names (lower case) that hold annotations, not scans: masks, labels, segmentations.
_NOT_AN_IMAGE = re.compile(r"(mask|label|seg|disc|levels?|heatmap|centroid|pred)", re.IGNORECASE)
#: Folders whose files are derived annotations (BIDS ``derivatives``) or hidden.
_SKIPPED_FOLDERS = {"derivatives", "sourcedata"}


# ---------------------------------------------------------------------- folders of images
def find_images(folder: Path) -> list[Path]:
    """NIfTI scans under ``folder`` (recursively), sorted; masks, labels and BIDS derivatives skipped.

    A dataset folder mixes scans with their annotations (``mask_tss.nii.gz``,
    ``discs_*.nii.gz``, ``*_seg.nii.gz``, ``derivatives/labels/...``); only the scans become
    cases.

    Raises
    ------
    IvdError
        ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise IvdError(f"{folder}: not a folder; choose the folder that holds the scans")
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or not is_nifti_path(path):
            continue
        if any(part.lower() in _SKIPPED_FOLDERS or part.startswith(".") for part in rel.parts[:-1]):
            continue
        if _NOT_AN_IMAGE.search(nifti_stem(path)):
            continue
        found.append(path)
    return found


def _clean_id(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("._-")
    return cleaned[-128:].lstrip("._-") or "case"


def case_ids_for(images: Sequence[Path], root: Path) -> dict[Path, str]:
    """A unique, store-safe case id per image: its file name, with as many parent folders as needed.

    ``sub-01/anat/sub-01_T2w.nii.gz`` -> ``sub-01_T2w``; ``VB2/case-07/image.nii.gz`` next
    to ``VB2/case-12/image.nii.gz`` -> ``case-07_image`` and ``case-12_image``.
    """
    parts = {p: [*Path(p).relative_to(root).parent.parts, nifti_stem(p)] for p in images}
    parts = {p: [x for x in v if x.lower() != "anat"] for p, v in parts.items()}
    depth = dict.fromkeys(images, 1)
    while True:
        ids = {p: _clean_id("_".join(parts[p][-depth[p] :])) for p in images}
        counts: dict[str, int] = {}
        for case_id in ids.values():
            counts[case_id] = counts.get(case_id, 0) + 1
        clashing = [p for p in images if counts[ids[p]] > 1 and depth[p] < len(parts[p])]
        if not clashing:
            break
        for p in clashing:
            depth[p] += 1
    for p, case_id in ids.items():
        check_case_id(case_id)
        if counts[case_id] > 1:
            ids[p] = f"{case_id}-{images.index(p) + 1}"
    return ids


@dataclass(frozen=True)
class ImportReport:
    """What :func:`import_images` did: cases added and files refused, with the reason."""

    added: tuple[str, ...] = ()
    failed: tuple[tuple[Path, str], ...] = field(default_factory=tuple)


def import_images(store: AnnotationStore, images: Sequence[Path], root: Path | None = None) -> Job[ImportReport]:
    """Import each image as a case (image only), a step each; a bad file is reported, not fatal.

    Images already in the store under the same case id are kept as they are, so importing a
    folder again only adds what is new; a scan the store holds under another case id (a
    copied file) is reported as not imported, with the case that holds it.
    """
    root = Path(root) if root is not None else Path(images[0]).parent if images else Path()
    ids = case_ids_for(list(images), root)

    def body(tally: Tally) -> Generator[Progress, None, ImportReport]:
        added: list[str] = []
        failed: list[tuple[Path, str]] = []
        for n, path in enumerate(images, start=1):
            yield tally.step(f"importing {path.name} ({n} of {len(images)})")
            try:
                info = import_case(store, path, case_id=ids[path])
            except IvdError as exc:
                log.warning("not imported: %s", exc)
                failed.append((path, str(exc)))
                continue
            added.append(info.case_id)
        return ImportReport(tuple(added), tuple(failed))

    return Job(len(images), body)


# ---------------------------------------------------------------------- cases
def next_case(case_ids: Sequence[str], statuses: Mapping[str, str], current: str | None) -> str | None:
    """The next case after ``current`` that is not verified yet (wrapping around), or None when all are."""
    if not case_ids:
        return None
    start = case_ids.index(current) + 1 if current in case_ids else 0
    for offset in range(len(case_ids)):
        case_id = case_ids[(start + offset) % len(case_ids)]
        if case_id != current and statuses.get(case_id) != "verified":
            return case_id
    return None


@dataclass(frozen=True, eq=False)
class OpenedCase:
    """A case ready to annotate: its image and what to show first.

    ``points``/``mask_tss`` come from the head revision, else from the latest model
    proposal, else are empty. ``revision`` is the head revision (the parent of the next
    save); ``origin`` says where the shown annotation came from: ``"manual"`` (a
    revision), ``"model:<name>"`` (a proposal) or None (nothing yet); ``proposal`` is
    the shown proposal's id when the case has no revision yet; ``absent`` the levels the head
    revision marks not present in the scan; ``names_unsure`` the case's mark that its levels
    may be counted wrong.
    """

    case_id: str
    volume: Volume
    points: tuple[LabelledPoint, ...]
    mask_tss: np.ndarray | None
    revision: str | None
    origin: str | None
    status: str
    proposal: str | None = None
    absent: frozenset[str] = frozenset()
    names_unsure: bool = False


def open_case_steps(store: AnnotationStore, case_id: str) -> Job[OpenedCase]:
    """Read a case's image, then its head revision (or latest proposal): a two-step job."""

    def body(tally: Tally) -> Generator[Progress, None, OpenedCase]:
        yield tally.step(f"reading {case_id}")
        info = store.case(case_id)
        volume = store.read_image(case_id)
        yield tally.step(f"loading the annotation of {case_id}")
        return _opened(store, case_id, volume, info)

    return Job(2, body)


def _opened(store: AnnotationStore, case_id: str, volume: Volume, info: CaseInfo) -> OpenedCase:
    """What :func:`open_case_steps` shows of a case read: its head revision, else its latest proposal, else nothing."""
    if info.head is not None:
        ann = store.load(case_id)
        origin: str | None = "manual"
        if ann.info is not None and getattr(ann.info, "source", "manual").startswith("model:"):
            origin = ann.info.source  # type: ignore[union-attr]
        return OpenedCase(
            case_id,
            volume,
            ann.points,
            ann.mask_tss,
            info.head,
            origin,
            info.status,
            absent=frozenset(ann.absent),
            names_unsure=info.names_unsure,
        )
    if info.n_proposals:
        ann = store.load_proposal(case_id)
        model = getattr(ann.info, "model", "model")
        return OpenedCase(
            case_id,
            volume,
            ann.points,
            ann.mask_tss,
            None,
            f"model:{model}",
            info.status,
            ann.entry_id,
            names_unsure=info.names_unsure,
        )
    return OpenedCase(case_id, volume, (), None, None, None, info.status, names_unsure=info.names_unsure)


# ---------------------------------------------------------------------- models and prediction
_DEFAULT_CACHE = ModelCache()


def predict_steps(
    volume: Volume,
    model: str | Path | None = None,
    device: str = "auto",
    cache: ModelCache | None = None,
    store: AnnotationStore | None = None,
) -> Job[Prediction]:
    """Load (or reuse) a model and predict one volume; the job's result is the :class:`Prediction`.

    Its steps: loading the model, then those of :func:`napari_ivd.inference.predict_job`,
    so a worker can stop between any two. ``model`` may name a version fine-tuned into
    ``store`` (see :mod:`napari_ivd.model_versions`); nothing is read before the job runs.

    Raises
    ------
    CheckpointError
        The model cannot be loaded.
    """

    def body(tally: Tally) -> Generator[Progress, None, Prediction]:
        yield tally.step(f"loading the model on {device}")
        net, card, where = (cache or _DEFAULT_CACHE).get(model_folder(store, model), device)
        return (yield from tally.run(predict_job(volume, net, card, device=where), prefix=str(card.get("name", "?"))))

    return Job(1 + len(PREDICT_STAGES), body)


def predict_case_steps(
    store: AnnotationStore,
    case_id: str,
    volume: Volume,
    model: str | Path | None = None,
    device: str = "auto",
    cache: ModelCache | None = None,
) -> Job[tuple[Prediction, ProposalInfo]]:
    """Predict a case and keep the result in the store as a proposal (the case becomes ``proposed``).

    Keeping every proposal means switching case after a prediction loses nothing, and
    the history shows what the model said before the annotator corrected it. ``model`` may
    also name a version fine-tuned into the store (see :mod:`napari_ivd.model_versions`).
    """
    predicting = predict_steps(volume, model, device, cache, store)

    def body(tally: Tally) -> Generator[Progress, None, tuple[Prediction, ProposalInfo]]:
        prediction = yield from tally.run(predicting)
        yield tally.step(f"keeping the proposal of {len(prediction.structures)} structures")
        # named by what the user picked: a fine-tuned version by its id, a bundled model or a folder by its name
        version = stored_model(store, model)
        by = find_model_dir(model_folder(store, model)).name if version is None else version.model_id
        proposal = store.add_proposal(case_id, by, prediction_points(prediction), prediction.mask_tss)
        return prediction, proposal

    return Job(predicting.total + 1, body)
