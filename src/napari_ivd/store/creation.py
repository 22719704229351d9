"""Creating a store and a case: root settings, groups, the image copy, the mask arrays, the case record.

Both follow the store's rule of writing everything first and making it visible last: the
root ``zarr.json`` is written after the empty groups, and a case is listed only once its
``HEAD`` is committed (by :mod:`napari_ivd.store.entries`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec

from napari_ivd.errors import StoreError, StoreVersionError
from napari_ivd.io.volume import Volume
from napari_ivd.store import schema
from napari_ivd.store.backend import KeyValue
from napari_ivd.store.content import file_sha256
from napari_ivd.store.reader import StoreReader
from napari_ivd.store.recovery import committed_entries

log = logging.getLogger(__name__)

__all__ = ["open_settings", "write_case"]


def open_settings(
    keys: KeyValue, create: bool, mask_chunk_vox: tuple[int, int, int], keyframe_every: int
) -> dict[str, Any]:
    """The store's settings, creating an empty store first when ``create`` and nothing is there.

    Raises StoreError and StoreVersionError as :meth:`AnnotationStore.open` does.
    """
    root = keys.get(schema.ZARR_JSON)
    if root is None:
        present = [c for c in keys.children("") if not c.startswith(".")] if keys.exists() else []
        if present and not _interrupted_creation(keys, present):
            raise StoreError(
                f"{keys.location}: holds {', '.join(present[:5])} but no zarr.json: a half-written store "
                "(its creation was interrupted) or not a zarr store; move it aside and import again"
            )
        if not create:
            raise StoreError(
                f"{keys.location}: no annotation store here; create one with "
                f"`napari-ivd import IMAGE --store {keys.location}` or AnnotationStore.open(..., create=True)"
            )
        _create(keys, mask_chunk_vox, keyframe_every)
        root = keys.get(schema.ZARR_JSON)
        assert root is not None
    return _read_settings(keys, root)


def _interrupted_creation(keys: KeyValue, present: list[str]) -> bool:
    """True when ``present`` is what a killed :func:`_create` leaves: empty groups only (safe to redo)."""
    return set(present) <= {schema.CASES, schema.MODELS} and all(
        {c for c in keys.children(group) if not c.startswith(".")} <= {schema.ZARR_JSON}  # temp files aside
        for group in present
    )


def _create(keys: KeyValue, mask_chunk_vox: tuple[int, int, int], keyframe_every: int) -> None:
    if len(mask_chunk_vox) != 3 or min(mask_chunk_vox) < 1 or keyframe_every < 1:
        raise StoreError(f"mask_chunk_vox {mask_chunk_vox} and keyframe_every {keyframe_every} must be positive")
    settings = {
        "format_version": schema.FORMAT_VERSION,
        "kind": schema.STORE_KIND,
        "created_utc": schema.utc_now(),
        "mask_chunk_vox": [int(v) for v in mask_chunk_vox],
        "keyframe_every": int(keyframe_every),
    }
    keys.put(f"{schema.CASES}/{schema.ZARR_JSON}", schema.group_json({}))
    keys.put(f"{schema.MODELS}/{schema.ZARR_JSON}", schema.group_json({}))
    keys.put(schema.ZARR_JSON, schema.group_json({schema.ROOT_ATTRS: settings}))  # last: the store now exists
    log.info("created annotation store %s", keys.location)


def _read_settings(keys: KeyValue, root: bytes) -> dict[str, Any]:
    try:
        meta = json.loads(root)
        settings = meta.get("attributes", {}).get(schema.ROOT_ATTRS)
    except (ValueError, AttributeError) as exc:
        raise StoreError(f"{keys.location}: zarr.json is not readable JSON ({exc}); the store is damaged") from exc
    if not isinstance(settings, dict) or settings.get("kind") != schema.STORE_KIND:
        raise StoreError(f"{keys.location}: a zarr store, but not a napari-ivd annotation store")
    version = settings.get("format_version")
    if version != schema.FORMAT_VERSION:
        raise StoreVersionError(
            f"{keys.location}: store format_version {version!r}; this napari-ivd reads version "
            f"{schema.FORMAT_VERSION}. Upgrade napari-ivd (pip install -U napari-ivd) to open it"
        )
    if keys.get(f"{schema.CASES}/{schema.ZARR_JSON}") is None:
        raise StoreError(f"{keys.location}: the cases/ group is missing: a half-written or damaged store")
    return settings


def case_record(case_id: str, volume: Volume, digest: str, dtype: np.dtype) -> dict[str, Any]:
    """The case group's attributes (immutable): the image's identity and grid, and where it came from."""
    geometry = volume.geometry
    source = Path(volume.path)
    return {
        "case_id": case_id,
        "format_version": schema.FORMAT_VERSION,
        "created_utc": schema.utc_now(),
        "image": {
            "sha256": digest,
            "dtype": dtype.str,
            **geometry.to_dict(with_source=False),  # the source path is kept under "source"
            "axcodes": "".join(geometry.axcodes),
            "spacing_mm": list(geometry.spacing_mm),
        },
        "source": {
            "path": str(source.resolve()) if str(source) else "",
            "name": volume.name,
            "file_sha256": file_sha256(source) if str(source) else None,
        },
    }


def write_case(reader: StoreReader, case_id: str, volume: Volume, digest: str, mask_chunk_vox: tuple[int, ...]) -> None:
    """Write a case's record, image copy and empty mask arrays (not yet committed: no ``HEAD``).

    Leftovers of an interrupted import (never committed) are removed first.

    Raises
    ------
    StoreError
        The case folder holds committed records without a ``HEAD``: its ``HEAD`` was lost and
        must be repaired, never overwritten.
    """
    keys = reader.keys
    prefix = schema.case_key(case_id)
    committed = committed_entries(keys, case_id)
    if committed:
        raise StoreError(
            f"{keys.location} case {case_id}: has no HEAD but holds committed {', '.join(committed[:5])}: its HEAD "
            f"was lost. Nothing was changed; run `napari-ivd store repair {keys.location} {case_id}` to restore it"
        )
    keys.delete_tree(prefix)  # leftovers of an interrupted import: never committed
    reader.forget(case_id)
    geometry = volume.geometry
    data = np.ascontiguousarray(volume.array, dtype=volume.array.dtype.newbyteorder("="))
    keys.put(
        schema.case_key(case_id, schema.ZARR_JSON), schema.group_json(case_record(case_id, volume, digest, data.dtype))
    )
    image = zarr.create_array(
        reader.zarr_store,
        name=schema.case_key(case_id, schema.IMAGE),
        shape=geometry.shape,
        dtype=data.dtype,
        chunks=schema.clipped_chunks(geometry.shape, schema.IMAGE_CHUNK_VOX),
        compressors=BloscCodec(cname="zstd", clevel=5, shuffle=BloscShuffle.shuffle),
        fill_value=0,
        dimension_names=("i", "j", "k"),
    )
    image[...] = data
    mask_chunks = schema.clipped_chunks(geometry.shape, mask_chunk_vox)
    for group in (schema.REVISIONS, schema.PROPOSALS):
        keys.put(schema.case_key(case_id, group, schema.ZARR_JSON), schema.group_json({}))
        zarr.create_array(
            reader.zarr_store,
            name=schema.case_key(case_id, group, schema.MASKS),
            shape=(schema.MAX_ENTRIES, *geometry.shape),
            dtype="uint8",
            chunks=(1, *mask_chunks),
            chunk_key_encoding={"name": "default", "separator": "."},  # flat: no folder per revision
            compressors=ZstdCodec(level=3),
            fill_value=0,
            dimension_names=("entry", "i", "j", "k"),
        )
    keys.make_durable(keys.files(prefix), schema.CASES)
