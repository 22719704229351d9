"""Models trained from the store, kept beside the annotations they were trained on.

A model folder (``weights.safetensors`` + ``card.json``, see
:mod:`napari_ivd.models.registry`) is stored byte for byte under ``models/<model_id>/``;
``model.json`` is written last and is what makes the model visible, so an interrupted
upload is never listed; an ``UPLOADING`` key, there from before the files until after
``model.json``, tells such an upload from a model whose ``model.json`` was lost later.
The card's ``weights_sha256`` is checked on the way in and out.
No torch import here: the store only moves bytes.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from napari_ivd.errors import CheckpointError, StoreError
from napari_ivd.store import schema
from napari_ivd.store.backend import KeyValue
from napari_ivd.store.content import sha256_hex
from napari_ivd.store.records import ModelInfo

log = logging.getLogger(__name__)

__all__ = [
    "ActiveModel",
    "add_model",
    "export_model",
    "list_models",
    "model_folders",
    "model_record",
    "read_active_model",
    "read_model_record",
    "read_scores",
    "recoverable_model_record",
    "restore_model_record",
    "write_active_model",
    "write_scores",
]

_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


def _key(model_id: str, name: str = "") -> str:
    return "/".join(p for p in (schema.MODELS, model_id, name) if p)


def _info(record: dict[str, Any]) -> ModelInfo:
    return ModelInfo(
        model_id=record["model_id"],
        name=record["name"],
        arch=record.get("arch", ""),
        weights_sha256=record["weights_sha256"],
        card_sha256=record["card_sha256"],
        size_bytes=int(record["size_bytes"]),
        added_utc=record["added_utc"],
        card=record.get("card", {}),
    )


def read_model_record(keys: KeyValue, model_id: str) -> dict[str, Any] | None:
    """The commit record of a stored model, or None when it is not (completely) stored.

    The id (the folder name, and the one the record names) is checked before it is used in
    any key or path, and the digests before they name a cache folder.

    Raises
    ------
    StoreError
        An id that is no model id (``../x``), or a damaged ``model.json``.
    """
    schema.check_case_id(model_id, "model id")
    where = f"{keys.location}: model {model_id} ({_key(model_id, schema.MODEL_RECORD)})"
    data = keys.get(_key(model_id, schema.MODEL_RECORD))
    if data is None:
        return None
    try:
        record = json.loads(data)
        if record["model_id"] != model_id:
            raise ValueError(f"it names model id {record['model_id']!r}, not its folder's")
        for field in ("weights_sha256", "card_sha256"):
            schema.check_sha256(record[field], where)
        _info(record)  # every field a reader uses is there and typed
    except (ValueError, KeyError, TypeError, AttributeError, StoreError) as exc:
        raise StoreError(
            f"{where} is damaged ({type(exc).__name__}: {exc}); run `napari-ivd store check`, then add the "
            "model folder again"
        ) from exc
    return record


def model_folders(keys: KeyValue) -> list[str]:
    """The folder names under ``models/`` (committed or not), without metadata and temp files."""
    return [m for m in keys.children(schema.MODELS) if m != schema.ZARR_JSON and not m.startswith(".")]


def model_record(
    card_bytes: bytes, weights: bytes, where: str, model_id: str | None = None, source_dir: str | None = None
) -> dict[str, Any]:
    """The commit record (``model.json``) of a model's card and weights, checked as they are stored.

    Shared by :func:`add_model` and :func:`recoverable_model_record` so a record rebuilt by
    ``store repair`` is the one an upload writes. ``model_id`` defaults to
    ``<card name>-<first 12 hex of the weights' sha256>``; ``source_dir`` is None when unknown.

    Raises
    ------
    CheckpointError
        An unreadable card or one without a name, or weights that do not match the card's sha256.
    StoreError
        ``model_id`` is no usable id.
    """
    try:
        card = json.loads(card_bytes)
        name = str(card["name"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{where}: {schema.MODEL_CARD} is not a model card with a name ({exc})") from exc
    weights_sha = sha256_hex(weights)
    if card.get("weights_sha256") not in (None, "", weights_sha):
        raise CheckpointError(
            f"{where}: {schema.MODEL_WEIGHTS} does not match the card's weights_sha256; the folder is damaged"
        )
    return {
        "format_version": schema.FORMAT_VERSION,
        "model_id": schema.check_case_id(model_id or f"{_SLUG.sub('-', name)}-{weights_sha[:12]}", "model id"),
        "name": name,
        "arch": str(card.get("arch", card.get("name", ""))),
        "weights_sha256": weights_sha,
        "card_sha256": sha256_hex(card_bytes),
        "size_bytes": len(weights),
        "added_utc": schema.utc_now(),
        "source_dir": source_dir,
        "card": card,
    }


def _commit_record(keys: KeyValue, record: dict[str, Any]) -> None:
    """Write ``model.json`` (one atomic key): what makes a model visible."""
    keys.put(_key(record["model_id"], schema.MODEL_RECORD), json.dumps(record, indent=1).encode())


def add_model(keys: KeyValue, model_dir: Path, model_id: str | None = None) -> ModelInfo:
    """Copy a model folder into the store (the caller holds the writer lock).

    Parameters
    ----------
    keys : KeyValue
        The store location.
    model_dir : Path
        Folder with ``weights.safetensors`` and ``card.json``.
    model_id : str, optional
        Default: ``<card name>-<first 12 hex of the weights' sha256>``.

    Returns
    -------
    ModelInfo
        The stored model (the existing one when the same weights are stored under that id).

    Raises
    ------
    CheckpointError
        Missing files, unreadable card, or weights that do not match the card's sha256.
    StoreError
        ``model_id`` is taken by other weights.
    """
    card_path, weights_path = model_dir / schema.MODEL_CARD, model_dir / schema.MODEL_WEIGHTS
    for path in (card_path, weights_path):
        if not path.is_file():
            raise CheckpointError(f"{model_dir}: {path.name} is missing; a model folder holds card.json and weights")
    card_bytes, weights = card_path.read_bytes(), weights_path.read_bytes()
    record = model_record(card_bytes, weights, str(model_dir), model_id, str(model_dir.resolve()))
    model_id = record["model_id"]
    existing = read_model_record(keys, model_id)
    if existing is not None:
        if existing["weights_sha256"] != record["weights_sha256"]:
            raise StoreError(f"{keys.location}: model id {model_id!r} already holds other weights; pick another id")
        keys.delete(_key(model_id, schema.MODEL_UPLOADING))  # left by an upload killed right after its commit
        return _info(existing)
    keys.delete_tree(_key(model_id))  # leftovers of an interrupted upload
    written = [_key(model_id, name) for name in (schema.MODEL_UPLOADING, schema.MODEL_WEIGHTS, schema.MODEL_CARD)]
    for key, data in zip(written, (b"", weights, card_bytes), strict=True):
        keys.write(key, data)
    keys.make_durable(written, schema.MODELS)
    _commit_record(keys, record)
    keys.delete(written[0])  # committed: no longer an upload in progress
    log.info("%s: stored model %s (%d bytes)", keys.location, model_id, len(weights))
    return _info(record)


def recoverable_model_record(keys: KeyValue, model_id: str) -> dict[str, Any] | None:
    """The record a model folder without ``model.json`` gets back, or None when it cannot be trusted.

    Only weights and a card that are both there, whole and consistent (the card parses, has
    a name, and its ``weights_sha256`` is the weights' sha256), in a folder without the
    ``UPLOADING`` key of an upload in progress, are taken for a committed model whose
    ``model.json`` was lost; anything less is what an interrupted upload leaves.

    Raises
    ------
    StoreError
        ``model_id`` is no usable id.
    """
    schema.check_case_id(model_id, "model id")
    if keys.get(_key(model_id, schema.MODEL_UPLOADING)) is not None:
        return None  # its upload never reached model.json
    weights, card = keys.get(_key(model_id, schema.MODEL_WEIGHTS)), keys.get(_key(model_id, schema.MODEL_CARD))
    if weights is None or card is None:
        return None
    try:
        record = model_record(card, weights, f"{keys.location}: model {model_id}", model_id)
    except CheckpointError:
        return None
    if record["card"].get("weights_sha256") != record["weights_sha256"]:
        return None  # a card that does not name its weights cannot vouch for them
    return record


def restore_model_record(keys: KeyValue, model_id: str) -> ModelInfo | None:
    """Write a lost ``model.json`` again from whole, consistent weights and card (the caller holds the lock).

    Nothing is written where ``model.json`` is there (readable or not) or the folder is not
    recoverable (see :func:`recoverable_model_record`); returns the restored model, or None.
    """
    if keys.get(_key(model_id, schema.MODEL_RECORD)) is not None:
        return None
    record = recoverable_model_record(keys, model_id)
    if record is None:
        return None
    _commit_record(keys, record)
    log.info("%s: model %s listed again (its model.json was lost)", keys.location, model_id)
    return _info(record)


def list_models(keys: KeyValue) -> list[ModelInfo]:
    """Every committed model, sorted by id."""
    out = []
    for model_id in model_folders(keys):
        try:
            record = read_model_record(keys, model_id)
        except StoreError as exc:  # one damaged model must not hide the others; `store check` reports it
            log.warning("%s; left out", exc)
            continue
        if record is not None:
            out.append(_info(record))
    return out


def export_model(keys: KeyValue, model_id: str, out_dir: Path) -> Path:
    """Write a stored model as a model folder, after checking both files' sha256.

    Raises
    ------
    StoreError
        No such model, or its stored bytes no longer match their digests.
    """
    record = read_model_record(keys, model_id)
    if record is None:
        known = ", ".join(m.model_id for m in list_models(keys)) or "none"
        raise StoreError(f"{keys.location}: no model {model_id!r} (models: {known})")
    weights = keys.get(_key(model_id, schema.MODEL_WEIGHTS)) or b""
    card = keys.get(_key(model_id, schema.MODEL_CARD)) or b""
    if sha256_hex(weights) != record["weights_sha256"] or sha256_hex(card) != record["card_sha256"]:
        raise StoreError(f"{keys.location}: model {model_id}'s stored files do not match their sha256; it is damaged")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / schema.MODEL_WEIGHTS).write_bytes(weights)
    (out_dir / schema.MODEL_CARD).write_bytes(card)
    return out_dir


@dataclass(frozen=True)
class ActiveModel:
    """The model Predict uses for this store, and why.

    ``model`` is a stored model id when ``stored`` is True, else a bundled model's name.
    """

    model: str
    stored: bool
    reason: str
    set_utc: str
    author: str


def read_active_model(keys: KeyValue) -> ActiveModel | None:
    """The store's active model, or None when none was ever chosen (the bundled default applies)."""
    data = keys.get(schema.ACTIVE_MODEL)
    if data is None:
        return None
    try:
        active = ActiveModel(**json.loads(data))
        schema.check_case_id(active.model, "active model")  # a name or id, never a path
    except (ValueError, TypeError, StoreError) as exc:
        raise StoreError(f"{keys.location}: {schema.ACTIVE_MODEL} is damaged ({exc}); choose the model again") from exc
    return active


def write_active_model(keys: KeyValue, model: str, stored: bool, reason: str, author: str) -> ActiveModel:
    """Make ``model`` the active one (the caller holds the writer lock); one atomic key replace.

    Raises
    ------
    StoreError
        ``stored`` and no committed model has that id.
    """
    if stored and read_model_record(keys, model) is None:
        raise StoreError(f"{keys.location}: no stored model {model!r} to make active")
    active = ActiveModel(model=model, stored=stored, reason=reason, set_utc=schema.utc_now(), author=author)
    keys.put(schema.ACTIVE_MODEL, json.dumps(asdict(active), indent=1).encode())
    return active


def _scores_key(model: str) -> str:
    return f"{schema.SCORES}/{_SLUG.sub('-', model)}.json"


def read_scores(keys: KeyValue, model: str) -> dict[str, Any] | None:
    """Cached active-learning scores under ``model`` (None when there are none or they are unreadable)."""
    data = keys.get(_scores_key(model))
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError:
        log.warning("%s: cached scores of %s are unreadable; they will be recomputed", keys.location, model)
        return None


def write_scores(keys: KeyValue, model: str, scores: dict[str, Any]) -> None:
    """Replace the cached scores under ``model`` (one atomic key; a cache, so no history is kept)."""
    keys.put(_scores_key(model), json.dumps(scores, allow_nan=False).encode())
