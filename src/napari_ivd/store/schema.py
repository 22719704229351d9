"""Layout of the napari-ivd annotation store: key names, format version and id rules.

The store is a zarr v3 hierarchy (a local folder or an fsspec URL such as ``memory://``
or ``s3://``). Everything the store holds is reachable from these names, so the layout is
written down once, here::

    annotations.zarr/
      zarr.json                 root group; attributes["napari_ivd"] = {format_version: 1,
                                kind, created_utc, mask_chunk_vox, keyframe_every}
      LOCK                      writer lock (JSON: pid, hostname, created_utc, operation);
                                present only while a writer works
      cases/<case_id>/
        zarr.json               group; attributes = case record (immutable): image sha256,
                                dtype, shape, affine, axcodes, spacing_mm, source path and
                                source file sha256, created_utc
        HEAD                    commit record (JSON, the only key ever replaced): status,
                                head revision, committed revisions and proposals with the
                                sha256 of each record
        image/                  array (I, J, K): copy of the scan, source dtype, chunked,
                                Blosc/zstd-compressed
        revisions/masks/        array (R, I, J, K) uint8, chunks (1, ci, cj, ck), flat
                                chunk keys c.<n>.<a>.<b>.<c>: slice n holds revision n's
                                mask as XOR with its parent's mask (a "delta"; unchanged
                                chunks are absent) or, for a keyframe, the mask itself
                                (all-zero chunks absent)
        revisions/r000001/      group; attributes = revision record (immutable): parent,
                                author, created_utc, note, source ("manual" |
                                "model:<name>"), restored_from, proposal (the proposal
                                the edit started from), based_on/merged_over (an edit
                                kept on top of a colleague's save), points (level, kind,
                                ijk_vox, xyz_mm, score) or points_from, absent (levels
                                marked not present in the scan; only when some are, so
                                older records simply lack it), mask {storage
                                full|delta, index, chunks, chain, sha256}
          COMMITTED             the record's sha256, written right after the HEAD that
                                commits it (tells a committed record from a leftover)
        proposals/masks/        array (P, I, J, K) uint8: slice n = mask of proposal n
        proposals/p000001/      group; attributes = proposal record: model, created_utc,
                                points, mask
      ACTIVE_MODEL              JSON: the model Predict uses (a stored model id or a bundled
                                model's name), why it became active, when and by whom
      scores/<model_id>.json    active-learning scores of the cases under that model (a cache,
                                recomputed whenever missing or stale)
      models/<model_id>/
        weights.safetensors     the model's weights, byte for byte
        card.json               its model card, byte for byte
        model.json              commit record (written last): name, weights/card sha256,
                                size, added_utc

Why this shape: revisions are append-only and every revision lives under keys of its own
(its record group and slice n of the mask array), so a revision is written completely
before the one small ``HEAD`` key that makes it visible is atomically replaced. Readers
follow ``HEAD`` only and never need the lock. Masks are stored as chunk-level deltas
against their parent with a full keyframe every ``keyframe_every`` revisions, so a hundred
small edits cost a fraction of a hundred masks.
"""

from __future__ import annotations

import getpass
import json
import logging
import re
from datetime import datetime, timezone
from typing import Any

from napari_ivd.errors import StoreError

log = logging.getLogger(__name__)

#: Version of this layout; a store with a higher version is refused (StoreVersionError).
FORMAT_VERSION = 1
#: Value of ``attributes["napari_ivd"]["kind"]`` at the root, telling our stores from other zarr.
STORE_KIND = "annotation-store"
#: Root attribute holding the store's settings.
ROOT_ATTRS = "napari_ivd"

ZARR_JSON = "zarr.json"
LOCK = "LOCK"
HEAD = "HEAD"
#: Key written into a revision/proposal group right after the ``HEAD`` that lists it: proof it
#: was committed, so a record beyond a lost or rolled-back ``HEAD`` is never taken for a leftover.
COMMITTED = "COMMITTED"
CASES = "cases"
MODELS = "models"
IMAGE = "image"
REVISIONS = "revisions"
PROPOSALS = "proposals"
MASKS = "masks"
MODEL_WEIGHTS = "weights.safetensors"
MODEL_CARD = "card.json"
MODEL_RECORD = "model.json"
#: Key written into a model folder before its files and deleted after its ``model.json``: a
#: folder holding it is an upload that never committed, never a model whose record was lost.
MODEL_UPLOADING = "UPLOADING"
ACTIVE_MODEL = "ACTIVE_MODEL"
SCORES = "scores"

#: Case statuses, in the order a case usually moves through them.
STATUSES: tuple[str, ...] = ("new", "proposed", "in progress", "verified")

#: Length of the revision axis of the mask arrays (the most revisions or proposals per case).
MAX_ENTRIES = 1_000_000
#: Chunk of the mask delta grid in voxels (clipped to the image); a small edit touches one or two.
DEFAULT_MASK_CHUNK_VOX: tuple[int, int, int] = (64, 64, 64)
#: Chunk of the stored image copy in voxels (clipped to the image).
IMAGE_CHUNK_VOX: tuple[int, int, int] = (64, 64, 64)
#: A mask is stored in full at least every this many revisions (bounds the delta chain to read).
DEFAULT_KEYFRAME_EVERY = 64

_CASE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_ENTRY_RE = re.compile(r"([rp])(\d{6,})")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_SOURCE_RE = re.compile(r"manual|model:\S+")


def default_author() -> str:
    """The login name, the author of a revision or model when none is given."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def utc_now() -> str:
    """The current time as ISO 8601 UTC with microseconds, e.g. ``2025-03-01T12:00:00.123456Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check_case_id(case_id: str, what: str = "case id") -> str:
    """Return ``case_id`` if it can name a case (or model) folder on every file system and object store.

    Raises
    ------
    StoreError
        When it is empty, too long, or holds characters other than letters, digits, ``.``,
        ``_`` and ``-`` (or starts with one of the last three).
    """
    if not is_case_id(case_id):
        raise StoreError(
            f"{what} {case_id!r} is not usable: use 1–128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (e.g. VB2_case-07)"
        )
    return case_id


def is_case_id(name: str) -> bool:
    """True when ``name`` can be a case (or model) id: see :func:`check_case_id`."""
    return isinstance(name, str) and _CASE_ID_RE.fullmatch(name) is not None


def check_source(source: str) -> str:
    """Return ``source`` if it is ``"manual"`` or ``"model:<name>"``.

    Raises
    ------
    StoreError
        For anything else.
    """
    if not isinstance(source, str) or _SOURCE_RE.fullmatch(source) is None:
        raise StoreError(f"revision source {source!r} is not 'manual' or 'model:<name>' (e.g. 'model:ivdnet@3f2a')")
    return source


def check_status(status: str) -> str:
    """Return ``status`` if it is one of :data:`STATUSES`.

    Raises
    ------
    StoreError
        For an unknown status.
    """
    if status not in STATUSES:
        raise StoreError(f"unknown case status {status!r}; expected one of {', '.join(map(repr, STATUSES))}")
    return status


def revision_id(index: int) -> str:
    """Id of the ``index``-th revision of a case (1-based): ``r000001``."""
    return f"r{index:06d}"


def proposal_id(index: int) -> str:
    """Id of the ``index``-th model proposal of a case (1-based): ``p000001``."""
    return f"p{index:06d}"


def entry_index(entry_id: str) -> int:
    """The 1-based index in a revision or proposal id (``r000012`` -> 12).

    Raises
    ------
    StoreError
        When the text is no revision or proposal id.
    """
    match = _ENTRY_RE.fullmatch(str(entry_id))
    if match is None:
        raise StoreError(f"{entry_id!r} is not a revision id like r000003 (or a proposal id like p000001)")
    return int(match.group(2))


def check_entry_id(entry_id: object, group: str) -> str:
    """Return ``entry_id`` if it is a revision id (``group`` = revisions) or proposal id (proposals).

    Every id read from the store passes here before it becomes part of a key, so a damaged
    or forged record cannot point outside its case.

    Raises
    ------
    StoreError
        Anything else (``../x``, ``p000001`` among revisions, not a string).
    """
    letter = "r" if group == REVISIONS else "p"
    match = _ENTRY_RE.fullmatch(entry_id) if isinstance(entry_id, str) else None
    if match is None or match.group(1) != letter:
        kind = "revision id like r000003" if letter == "r" else "proposal id like p000001"
        raise StoreError(f"{entry_id!r} is not a {kind}; the store is damaged (run `napari-ivd store check`)")
    return entry_id


def check_sha256(digest: object, what: str) -> str:
    """Return ``digest`` if it is 64 lower-case hex digits (it may become part of a folder name).

    Raises
    ------
    StoreError
        Anything else.
    """
    if not isinstance(digest, str) or _SHA256_RE.fullmatch(digest) is None:
        raise StoreError(f"{what}: {digest!r} is not a sha256 digest; the record is damaged")
    return digest


def case_key(case_id: str, *parts: str) -> str:
    """Key of ``parts`` inside a case group: ``case_key("L3", "HEAD")`` -> ``cases/L3/HEAD``."""
    return "/".join((CASES, case_id, *parts))


def clipped_chunks(shape: tuple[int, ...], chunk_vox: tuple[int, ...]) -> tuple[int, ...]:
    """Chunk shape ``chunk_vox`` clipped to ``shape`` (a 40-slice scan gets 40-voxel chunks)."""
    return tuple(max(1, min(int(c), int(n))) for c, n in zip(chunk_vox, shape, strict=True))


def group_json(attributes: dict[str, Any]) -> bytes:
    """zarr v3 group metadata (``zarr.json``) holding ``attributes``."""
    return json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attributes}, allow_nan=False).encode()
