"""Labelled training cases: a scan, its named keypoints and its masks, on the file's grid.

Training data comes in several shapes (disc centroids, vertebral-body masks, derived disc
points, masks whose levels nobody named). :class:`LabelledCase` is the one form the data
pipeline consumes, so :mod:`napari_ivd.training.data` never needs to know which dataset a
case came from. All label values are translated to structure names through
:mod:`napari_ivd.anatomy` here, once.
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_ivd.anatomy import TSS_CANAL, from_tss, structure, tss_names
from napari_ivd.errors import UnreadableFileError, UnsupportedScanError
from napari_ivd.io import Volume, read_volume
from napari_ivd.io.annotations import points_from_tss_mask, read_sct_discs, read_tss_mask
from napari_ivd.store.content import image_sha256

log = logging.getLogger(__name__)

__all__ = [
    "CONTRASTS",
    "MASK_KINDS",
    "LabelledCase",
    "end_field_of_view",
    "guess_contrast",
    "judged_cases",
    "labels_of",
    "link_sessions",
    "load_lumbar_case",
    "load_lumbar_cases",
    "mask_kinds_of",
    "merge_duplicates",
    "split_cases",
    "unseen_by_parent",
]

#: Image contrasts a case may have ("unknown": a store case whose name does not say).
CONTRASTS: tuple[str, ...] = ("T1w", "T2w", "water", "unknown")
#: Structure kinds a mask may annotate.
MASK_KINDS: tuple[str, ...] = ("vertebra", "disc")

# ../shared/data/lumbar: set folder -> contrast (see its MANIFEST.md).
_CONTRAST_BY_SET = {"IVD": "T2w", "VB1": "T1w", "VB2": "T2w", "VB3": "water"}
_IMAGE_FILE = "image.nii.gz"
_MASK_TSS_FILE = "mask_tss.nii.gz"
# Disc points with SCT disc values, best first: expert centroids, then derived body midpoints.
_DISC_FILES = ("discs_sct_centroid.nii.gz", "discs_sct_vbmidpoint_DERIVED.nii.gz")
# Vertebral bodies numbered top-down whose levels are unknown (VB1).
_UNNAMED_BODY_MASK_FILE = "mask_vb_topdown.nii.gz"


@dataclass(frozen=True, eq=False)
class LabelledCase:
    """One labelled scan on its file's voxel grid.

    Parameters
    ----------
    name : str
        Case id, e.g. ``"VB2/case-07"``.
    contrast : {"T1w", "T2w", "water"}
        Image contrast, used to stratify train/dev splits.
    volume : Volume
        The image, on the file's grid.
    keypoints_vox : dict of str to (3,) float array
        Canonical structure name (``"L4"``, ``"L4-L5"``) -> fractional voxel index (i, j, k)
        on the file grid. Only annotated structures appear.
    mask_tss : (I, J, K) integer array or None
        Label mask on the file grid in TotalSpineSeg values (41 = L1, 92 = L1-L2, ...).
    mask_kinds : frozenset of {"vertebra", "disc"}
        Kinds the mask (``mask_tss`` or ``mask_kind_only``) annotates completely for the
        levels it contains; the other kind must not be taught as background.
    mask_kind_only : (I, J, K) uint8 array or None
        Binary vertebral-body mask (1 = body) for cases whose bodies carry no level names;
        segmentation only.
    absent : frozenset of str
        Levels a researcher marked as not present in the scan (a sacralised L5 has no L5-S1):
        taught as known background, unlike a level the case merely does not annotate. None
        of them may have a keypoint.
    duplicates : tuple of str
        Other cases of the data whose image is this one's, voxel for voxel (a dataset may
        ship one scan under two ids): merged into this case, so a split never puts one copy
        in training and the other in evaluation (:func:`load_lumbar_cases`).
    same_session : tuple of str
        Other cases that are another series of the same exam (VB1's DzZ_T1 and DzZ_T2: same
        grid, the levels in the same place): separate images, but split and judged together.
    names_unsure : bool
        The researcher is not sure the levels are counted right (a transitional vertebra):
        the case trains masks only: its keypoints teach no level heatmap (nor do its absent
        levels, which still make the structures either side neighbours in the masks), and
        its names neither add labels nor shape the skeleton prior.

    Raises
    ------
    ValueError
        For an unknown contrast or mask kind.
    GeometryMismatchError
        When a mask's shape differs from the image's.
    """

    name: str
    contrast: str
    volume: Volume
    keypoints_vox: dict[str, np.ndarray] = field(default_factory=dict)
    mask_tss: np.ndarray | None = None
    mask_kinds: frozenset[str] = frozenset()
    mask_kind_only: np.ndarray | None = None
    absent: frozenset[str] = frozenset()
    duplicates: tuple[str, ...] = ()
    same_session: tuple[str, ...] = ()
    names_unsure: bool = False

    def __post_init__(self) -> None:
        if self.contrast not in CONTRASTS:
            raise ValueError(f"case {self.name}: contrast {self.contrast!r} is not one of {CONTRASTS}")
        unknown = set(self.mask_kinds) - set(MASK_KINDS)
        if unknown:
            raise ValueError(f"case {self.name}: mask kinds {sorted(unknown)} are not among {MASK_KINDS}")
        for what, mask in (("mask_tss", self.mask_tss), ("mask_kind_only", self.mask_kind_only)):
            if mask is not None:
                self.volume.geometry.check_array(mask, f"case {self.name}: {what}")
        keypoints = {
            structure(n).name: np.asarray(v, dtype=np.float64).reshape(3) for n, v in self.keypoints_vox.items()
        }
        object.__setattr__(self, "keypoints_vox", keypoints)
        object.__setattr__(self, "mask_kinds", frozenset(self.mask_kinds))
        absent = frozenset(structure(n).name for n in self.absent)
        if absent & set(keypoints):
            raise ValueError(f"case {self.name}: {sorted(absent & set(keypoints))} both annotated and marked absent")
        object.__setattr__(self, "absent", absent)

    @property
    def has_mask(self) -> bool:
        """True when the case carries any segmentation mask."""
        return self.mask_tss is not None or self.mask_kind_only is not None

    @property
    def session(self) -> str:
        """The first name among this case and its same-session cases: what a split keeps together."""
        return min((self.name, *self.same_session))

    def seen_in(self, names: Iterable[str]) -> bool:
        """Whether ``names`` (a card's ``trained_on``) hold this case, a duplicate or a same-session case."""
        return not {self.name, *self.duplicates, *self.same_session}.isdisjoint(names)


def end_field_of_view(case: LabelledCase, below: str = "L5", fraction: float = 0.5) -> LabelledCase | None:
    """The case as if its scan stopped ``fraction`` of a level spacing below ``below``.

    Many scans end above the sacrum, and naming cannot count from it there: this builds
    that situation from a case that shows it (``bench_predict.py --end-below``). The image
    and masks are blanked caudal of the plane, and the keypoints there leave the reference.
    The spacing is the one between ``below`` and the annotated structure of its kind just
    above it. ``None`` when the case annotates neither.
    """
    view = case.volume.view
    target = structure(below)
    above = [s for s in map(structure, case.keypoints_vox) if s.kind == target.kind and s.order < target.order]
    if target.name not in case.keypoints_vox or not above:
        return None
    neighbour = max(above, key=lambda s: s.order).name
    rows = {n: float(view.vox_to_display(p[None])[0, 1]) for n, p in case.keypoints_vox.items()}
    end_row = int(np.ceil(rows[target.name] + fraction * (rows[target.name] - rows[neighbour])))

    def blanked(array: np.ndarray | None, value: float) -> np.ndarray | None:
        if array is None:
            return None
        shown = np.array(view.to_display(array))
        shown[:, end_row:] = value
        return view.to_file(shown)

    kept = {n: p for n, p in case.keypoints_vox.items() if rows[n] < end_row}
    return replace(
        case,
        volume=replace(case.volume, array=blanked(case.volume.array, float(case.volume.array.min()))),
        keypoints_vox=kept,
        mask_tss=blanked(case.mask_tss, 0),
        mask_kind_only=blanked(case.mask_kind_only, 0),
    )


def labels_of(cases: Sequence[LabelledCase], also: Sequence[str] = ()) -> tuple[str, ...]:
    """The levels the cases name with a keypoint (plus ``also``), cranio-caudal: what a model trained on them can learn.

    A case whose names are unsure (:attr:`LabelledCase.names_unsure`) teaches no level.

    Example
    -------
    >>> labels_of([], also=["L4-L5", "C3"])
    ('C3', 'L4-L5')
    """
    named = {name for case in cases if not case.names_unsure for name in case.keypoints_vox}
    names = {structure(name).name for name in also} | named
    return tuple(sorted(names, key=lambda name: structure(name).order))


_CONTRAST_WORDS = re.compile(r"(?<![A-Za-z0-9])(T1w|T2w|water)(?![A-Za-z0-9])", re.IGNORECASE)


def guess_contrast(text: str) -> str:
    """The contrast a BIDS-style name states (``sub-01_T2w``, ``..._water``), else ``"unknown"``."""
    found = _CONTRAST_WORDS.search(text.replace("_", " ").replace("-", " "))
    if found is None:
        return "unknown"
    word = found.group(1).lower()
    return {"t1w": "T1w", "t2w": "T2w"}.get(word, word)


def mask_kinds_of(mask_tss: np.ndarray) -> frozenset[str]:
    """The kinds of structure (vertebra, disc) a TotalSpineSeg mask holds."""
    names = tss_names()
    return frozenset(from_tss(int(v)).kind for v in np.unique(mask_tss) if int(v) in names and v > TSS_CANAL)


def load_lumbar_case(case_dir: Path) -> LabelledCase:
    """Load one case of the ``../shared/data/lumbar`` layout (``<set>/<case>/``).

    Vertebra keypoints are the centroids of the TotalSpineSeg-valued bodies in
    ``mask_tss.nii.gz``; disc keypoints come from ``discs_sct_centroid.nii.gz`` (expert disc
    centroids) or else ``discs_sct_vbmidpoint_DERIVED.nii.gz`` (midpoints of neighbouring
    body centroids). A case with only ``mask_vb_topdown.nii.gz`` (levels unknown) gets no
    keypoints and a binary body mask in ``mask_kind_only``.

    Parameters
    ----------
    case_dir : Path
        Folder holding ``image.nii.gz`` and its label files; its parent's name is the set
        (IVD, VB1, VB2, VB3), which fixes the contrast.

    Returns
    -------
    LabelledCase
        Named ``"<set>/<case>"``.

    Raises
    ------
    UnsupportedScanError
        When the set is unknown (so the contrast is too).
    IvdError
        Unreadable files, or labels on another grid than the image.
    """
    case_dir = Path(case_dir)
    set_name = case_dir.parent.name
    name = f"{set_name}/{case_dir.name}"
    if set_name not in _CONTRAST_BY_SET:
        raise UnsupportedScanError(
            f"{case_dir}: unknown set {set_name!r}, so its contrast is unknown; "
            f"expected one of {sorted(_CONTRAST_BY_SET)}"
        )
    volume = read_volume(case_dir / _IMAGE_FILE)

    keypoints_vox: dict[str, np.ndarray] = {}
    mask_tss: np.ndarray | None = None
    mask_kind_only: np.ndarray | None = None
    mask_kinds: frozenset[str] = frozenset()
    geometry = volume.geometry
    if (case_dir / _MASK_TSS_FILE).is_file():
        mask_tss = read_tss_mask(case_dir / _MASK_TSS_FILE, geometry)
        mask_kinds = mask_kinds_of(mask_tss)
        points = points_from_tss_mask(mask_tss, kinds=("vertebra",))
        keypoints_vox = {p.level: np.asarray(p.ijk_vox) for p in points}
    elif (case_dir / _UNNAMED_BODY_MASK_FILE).is_file():
        mask_kind_only = (read_tss_mask(case_dir / _UNNAMED_BODY_MASK_FILE, geometry) > 0).astype(np.uint8)
        mask_kinds = frozenset({"vertebra"})
    for disc_file in _DISC_FILES:
        if (case_dir / disc_file).is_file():
            keypoints_vox.update(
                {p.level: np.asarray(p.ijk_vox) for p in read_sct_discs(case_dir / disc_file, geometry)}
            )
            break

    log.debug("loaded %s: keypoints %s, mask kinds %s", name, sorted(keypoints_vox), sorted(mask_kinds))
    return LabelledCase(name, _CONTRAST_BY_SET[set_name], volume, keypoints_vox, mask_tss, mask_kinds, mask_kind_only)


def load_lumbar_cases(root: Path) -> list[LabelledCase]:
    """Load every case under a ``lumbar/`` folder (``<root>/<set>/<case>/image.nii.gz``).

    Cases whose images are identical voxel for voxel are one scan: the first by name is kept,
    the others are listed in its ``duplicates`` (VB3 ships four scans twice). Cases that are
    two series of one exam stay apart but name each other in ``same_session``
    (:func:`link_sessions`; VB1's case-10 and case-11). Judged apart from its twin, the copy
    of a training case would be scored as unseen.

    Parameters
    ----------
    root : Path
        The ``lumbar`` folder, e.g. ``../shared/data/lumbar``.

    Returns
    -------
    list of LabelledCase
        Sorted by name (set, then case), one per distinct image.

    Raises
    ------
    UnreadableFileError
        When no case is found under ``root``.
    """
    root = Path(root)
    case_dirs = sorted(p.parent for p in root.glob(f"*/*/{_IMAGE_FILE}"))
    if not case_dirs:
        raise UnreadableFileError(f"{root}: no <set>/<case>/{_IMAGE_FILE} found; point to the lumbar/ data folder")
    cases = link_sessions(merge_duplicates([load_lumbar_case(d) for d in case_dirs]))
    log.info("loaded %d lumbar cases from %s", len(cases), root)
    return cases


def merge_duplicates(cases: Sequence[LabelledCase]) -> list[LabelledCase]:
    """One case per distinct image (:func:`~napari_ivd.store.image_sha256`), the others named in its ``duplicates``.

    The first case of each image in ``cases``' order is kept with its labels; a copy whose
    labels differ is reported in the log, since only the kept case's labels are used.
    """
    kept: dict[str, LabelledCase] = {}
    for case in cases:
        digest = image_sha256(case.volume.array)
        first = kept.get(digest)
        if first is None:
            kept[digest] = case
            continue
        same_labels = _same_labels(first, case)
        log.warning(
            "%s has the image of %s voxel for voxel%s: judged and split as one case",
            case.name,
            first.name,
            "" if same_labels else " (with other labels; only those of the first are used)",
        )
        kept[digest] = replace(first, duplicates=(*first.duplicates, case.name))
    return list(kept.values())


#: Two series of one exam put their common levels, at the median, within this many voxels (the
#: patient did not move; single levels differ by a voxel where a mask or a rounded disc point does).
SAME_SESSION_MAX_VOX = 1.0


def link_sessions(cases: Sequence[LabelledCase]) -> list[LabelledCase]:
    """``cases`` with ``same_session`` filled: cases of one set on the same grid whose levels coincide.

    Two series of one exam share the grid and the anatomy's place: the levels both name (at
    least 3) lie, at the median, within :data:`SAME_SESSION_MAX_VOX` voxels. Different
    people, or one person scanned again, are several voxels apart.
    """
    mates: dict[str, set[str]] = {c.name: set() for c in cases}
    for i, a in enumerate(cases):
        for b in cases[i + 1 :]:
            if _one_session(a, b):
                mates[a.name].add(b.name)
                mates[b.name].add(a.name)
                log.warning(
                    "%s and %s are two series of one exam (levels in the same place): split together", a.name, b.name
                )
    return [replace(c, same_session=tuple(sorted(mates[c.name]))) if mates[c.name] else c for c in cases]


def _one_session(a: LabelledCase, b: LabelledCase) -> bool:
    if a.name.split("/")[0] != b.name.split("/")[0] or a.volume.geometry != b.volume.geometry:
        return False
    common = sorted(set(a.keypoints_vox) & set(b.keypoints_vox))
    if len(common) < 3:
        return False
    gaps = [np.abs(a.keypoints_vox[n] - b.keypoints_vox[n]).max() for n in common]
    return float(np.median(gaps)) <= SAME_SESSION_MAX_VOX


def _same_labels(a: LabelledCase, b: LabelledCase) -> bool:
    """Whether two cases carry the same keypoints and masks."""
    if a.keypoints_vox.keys() != b.keypoints_vox.keys():
        return False
    if any(not np.allclose(a.keypoints_vox[n], b.keypoints_vox[n]) for n in a.keypoints_vox):
        return False
    return all(
        (x is None and y is None) or (x is not None and y is not None and np.array_equal(x, y))
        for x, y in ((a.mask_tss, b.mask_tss), (a.mask_kind_only, b.mask_kind_only))
    )


def split_cases(
    cases: Sequence[LabelledCase], dev_fraction: float = 0.2, seed: int = 0
) -> tuple[list[LabelledCase], list[LabelledCase]]:
    """Split cases into train and dev sets, stratified by contrast, deterministically.

    Each contrast contributes ``round(dev_fraction * n)`` of its ``n`` sessions to dev (a
    session: a case with its ``same_session`` cases, which never straddle the split), at
    least one when ``n >= 3`` and never all of them, so every contrast is both trained on
    and (when it has enough cases) evaluated. The draw depends only on the case names,
    ``dev_fraction`` and ``seed``, not on the input order.

    Parameters
    ----------
    cases : sequence of LabelledCase
    dev_fraction : float
        Target fraction of each contrast's cases held out, in [0, 1).
    seed : int

    Returns
    -------
    train, dev : lists of LabelledCase
        In the input order.

    Raises
    ------
    ValueError
        For a fraction outside [0, 1) or duplicate case names.
    """
    if not 0.0 <= dev_fraction < 1.0:
        raise ValueError(f"dev_fraction must be in [0, 1), got {dev_fraction}")
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise ValueError("case names must be unique to split them deterministically")
    dev_sessions: set[str] = set()
    for contrast in sorted({c.contrast for c in cases}):
        group = sorted({c.session for c in cases if c.contrast == contrast})
        n = len(group)
        n_dev = round(dev_fraction * n)
        if n >= 3:
            n_dev = max(n_dev, 1)
        n_dev = min(n_dev, n - 1)
        # A per-contrast stream, so adding cases of one contrast leaves the others' split alone.
        rng = np.random.default_rng([seed, zlib.crc32(contrast.encode())])
        dev_sessions.update(group[i] for i in rng.permutation(n)[:n_dev])
    train = [c for c in cases if c.session not in dev_sessions]
    dev = [c for c in cases if c.session in dev_sessions]
    log.info("split %d cases: %d train, %d dev (dev: %s)", len(cases), len(train), len(dev), [c.name for c in dev])
    return train, dev


def unseen_by_parent(
    train: Sequence[LabelledCase], dev: Sequence[LabelledCase], trained_on: Iterable[str]
) -> tuple[list[LabelledCase], list[LabelledCase]]:
    """``(train, dev)`` with the dev cases a parent trained on (its card's ``trained_on``) moved to train.

    A model started from a parent's weights has learnt what the parent learnt: judging it on
    those cases would choose its checkpoint on training data and flatter its card.
    """
    seen = set(trained_on)
    return [*train, *(c for c in dev if c.seen_in(seen))], [c for c in dev if not c.seen_in(seen)]


def judged_cases(
    cases: Sequence[LabelledCase], card: Mapping[str, Any], unseen: bool = False, sources: Sequence[str] = ()
) -> list[LabelledCase]:
    """The labelled cases a model may be judged on: none it trained on.

    The dev cases of ``napari-ivd train``'s split (the card's training seed), or with
    ``unseen`` every case its card does not list under ``trained_on`` (nor a duplicate or a
    same-session case of it, :meth:`LabelledCase.seen_in`); ``sources`` keeps
    only cases of those sets ("VB1", ...). Cases without keypoints are left out.

    Raises
    ------
    ValueError
        When the model trained on one of the dev cases (it was trained with another split).
    """
    trained_on = set(card.get("trained_on", []))
    if unseen:
        judged = [c for c in cases if not c.seen_in(trained_on)]
    else:
        judged = split_cases(cases, seed=card.get("train_config", {}).get("seed", 0))[1]
        leaked = sorted(c.name for c in judged if c.seen_in(trained_on))
        if leaked:
            raise ValueError(
                f"the model was trained on dev cases {leaked}; pass a model trained with this split, "
                "or judge it on every case it never saw (unseen; the benchmarks' --all-held-out)"
            )
    return [c for c in judged if c.keypoints_vox and (not sources or c.name.split("/")[0] in sources)]
