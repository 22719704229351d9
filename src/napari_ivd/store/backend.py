"""Raw keys of a store location: atomic replace, exclusive create, listing, durability.

zarr reads and writes the arrays; the few keys whose *write semantics* carry the store's
guarantees (``HEAD``, ``LOCK``, revision records, model files) go through this small layer,
because zarr's store API promises neither an atomic replace nor an exclusive create on every
backend. Two implementations: a local folder (temp file + ``os.replace`` + ``fsync``: a
crash or power cut leaves the old or the new value, never a mix) and any fsspec file system
(one ``pipe`` per key: object stores replace objects atomically; ``memory://`` is a dict).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from zarr.abc.store import Store

log = logging.getLogger(__name__)

__all__ = ["FsspecKeys", "KeyValue", "LocalKeys", "is_url", "open_keys"]


def is_url(location: str | Path) -> bool:
    """True for an fsspec URL such as ``memory://x`` or ``s3://bucket/x`` (``file://`` counts as local)."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


class KeyValue(ABC):
    """The key operations the store needs, over ``/``-separated keys relative to the store root."""

    #: Where the store lives, for messages.
    location: str
    #: True when :meth:`create` is exclusive even against other hosts (and :meth:`take_over` is atomic).
    exclusive_create: bool = True

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """The value of ``key``, or None when it does not exist."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Replace ``key`` atomically: readers see the old or the new value, never a mix."""

    @abstractmethod
    def write(self, key: str, data: bytes) -> None:
        """Write a key nobody reads yet (uncommitted); flushed later by :meth:`make_durable`."""

    @abstractmethod
    def create(self, key: str, data: bytes) -> bool:
        """Create ``key`` with ``data`` unless it exists; True when this call created it."""

    def take_over(self, key: str, expected: bytes) -> bool:
        """Remove ``key`` if it still holds ``expected``, atomically; True when this call removed it.

        Where that cannot be done atomically (``exclusive_create`` False) nothing is removed.
        """
        return False

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key`` (nothing happens when it is absent)."""

    @abstractmethod
    def delete_tree(self, prefix: str) -> None:
        """Remove every key under ``prefix/`` (and ``prefix`` itself)."""

    @abstractmethod
    def children(self, prefix: str) -> list[str]:
        """Names directly under ``prefix`` (keys and sub-prefixes), sorted; empty when none."""

    @abstractmethod
    def files(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (relative to the store root), sorted."""

    @abstractmethod
    def size_bytes(self, prefix: str = "") -> int:
        """Total size of the values under ``prefix``, in bytes."""

    @abstractmethod
    def exists(self) -> bool:
        """True when the store location exists (even if empty)."""

    @abstractmethod
    def zarr_store(self, read_only: bool = False) -> Store:
        """A zarr store over the same location."""

    def make_durable(self, keys: Iterable[str], top: str) -> None:  # noqa: B027 - a no-op where writes are durable
        """Flush ``keys`` and their folders up to ``top`` to stable storage before a commit points at them.

        ``top`` is the deepest folder that existed before the keys were written (it gained
        an entry); folders above it did not change.
        """


class LocalKeys(KeyValue):
    """Keys as files under a local folder.

    Parameters
    ----------
    root : Path
        The store folder.
    fsync : bool
        Flush files and folders to disk before commits (survives power loss, not only
        crashes); turn off only for throw-away stores.
    """

    def __init__(self, root: Path, fsync: bool = True) -> None:
        self.root = Path(root).expanduser().absolute()
        self.location = str(self.root)
        self.fsync = fsync

    def _path(self, key: str) -> Path:
        return self.root / key if key else self.root

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def _sync_dir(self, path: Path) -> None:
        if not self.fsync:
            return
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write_temp(self, path: Path, data: bytes, sync: bool) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        with tmp.open("wb") as f:
            f.write(data)
            if sync and self.fsync:
                f.flush()
                os.fsync(f.fileno())
        return tmp

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = self._write_temp(path, data, sync=True)
        os.replace(tmp, path)
        self._sync_dir(path.parent)

    def write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def create(self, key: str, data: bytes) -> bool:
        # no fsync: a lock need not outlive a power cut (a lost lock is the right outcome)
        path = self._path(key)
        tmp = self._write_temp(path, data, sync=False)
        try:
            os.link(tmp, path)  # atomic, fails when the key exists: the value is complete from the start
        except FileExistsError:
            return False
        except OSError as exc:  # file systems without hard links
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def take_over(self, key: str, expected: bytes) -> bool:
        # rename is atomic: of two writers breaking the same stale lock, exactly one moves it aside
        path = self._path(key)
        aside = path.with_name(f".{path.name}.{uuid.uuid4().hex}.broken")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return False
        try:
            if aside.read_bytes() == expected:
                return True
            try:  # a fresh lock was taken meanwhile and we moved it: put it back
                os.link(aside, path)
            except FileExistsError:
                log.warning("%s: %s was replaced while being put back", self.location, key)
            return False
        finally:
            aside.unlink(missing_ok=True)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_tree(self, prefix: str) -> None:
        path = self._path(prefix)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def children(self, prefix: str) -> list[str]:
        try:
            return sorted(os.listdir(self._path(prefix)))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def files(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(self.root).as_posix()) for p in base.rglob("*") if p.is_file())

    def size_bytes(self, prefix: str = "") -> int:
        base = self._path(prefix)
        if base.is_file():
            return base.stat().st_size
        return sum(p.stat().st_size for p in base.rglob("*") if p.is_file()) if base.is_dir() else 0

    def exists(self) -> bool:
        return self.root.is_dir()

    def zarr_store(self, read_only: bool = False) -> Store:
        from zarr.storage import LocalStore

        return LocalStore(self.root, read_only=read_only)

    def make_durable(self, keys: Iterable[str], top: str) -> None:
        if not self.fsync:
            return
        stop = self._path(top)
        paths = [self._path(key) for key in keys]
        folders: set[Path] = {stop}
        for path in paths:
            parent = path.parent  # new folders must be flushed in their parents too, up to ``top``
            while parent != stop and stop in parent.parents:
                folders.add(parent)
                parent = parent.parent
        # Concurrent fsyncs share journal commits: a keyframe's 50 chunk files cost a few commits, not 50.
        if len(paths) > 2:
            with ThreadPoolExecutor(max_workers=min(16, len(paths))) as pool:
                list(pool.map(_fsync_path, paths))
        else:
            for path in paths:
                _fsync_path(path)
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            self._sync_dir(folder)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FsspecKeys(KeyValue):
    """Keys as objects of an fsspec file system (``memory://``, ``s3://``, ``gs://`` ...).

    Object stores replace an object atomically on upload, which is all :meth:`put` needs.
    :meth:`create` is "check, write, read back": not exclusive (``exclusive_create`` is
    False), so two writers starting at the same instant are not reliably kept apart, and a
    stale lock is never broken automatically. Use one writer at a time on such a store.
    """

    exclusive_create = False

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        from fsspec.core import url_to_fs

        self.url = url.rstrip("/")
        self.location = self.url
        self.storage_options = dict(storage_options or {})
        self.fs, root = url_to_fs(self.url, **self.storage_options)
        self.root = root.rstrip("/")

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def get(self, key: str) -> bytes | None:
        try:
            return bytes(self.fs.cat_file(self._path(key)))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def put(self, key: str, data: bytes) -> None:
        self.fs.pipe_file(self._path(key), data)

    def write(self, key: str, data: bytes) -> None:
        self.fs.pipe_file(self._path(key), data)

    def create(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        if self.fs.exists(path):
            return False
        self.fs.pipe_file(path, data)
        return self.get(key) == data  # another writer's value landed last: theirs, not ours

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(key))

    def delete_tree(self, prefix: str) -> None:
        path = self._path(prefix)
        if self.fs.exists(path):
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(path, recursive=True)

    def children(self, prefix: str) -> list[str]:
        try:
            entries = self.fs.ls(self._path(prefix), detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted({str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries})

    def files(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not self.fs.exists(base):
            return []
        root = self.root.lstrip("/") + "/"
        found = (str(p).lstrip("/") for p in self.fs.find(base))
        return sorted(p[len(root) :] for p in found if p.startswith(root))

    def size_bytes(self, prefix: str = "") -> int:
        base = self._path(prefix)
        if not self.fs.exists(base):
            return 0
        return int(self.fs.du(base, total=True))

    def exists(self) -> bool:
        return bool(self.fs.exists(self.root))

    def zarr_store(self, read_only: bool = False) -> Store:
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(self.url, storage_options=self.storage_options or None, read_only=read_only)


def open_keys(location: str | Path, storage_options: dict[str, Any] | None = None, fsync: bool = True) -> KeyValue:
    """The key layer for a local path (``file://`` allowed) or an fsspec URL."""
    if is_url(location):
        return FsspecKeys(str(location), storage_options)
    text = str(location)
    return LocalKeys(Path(text.removeprefix("file://")), fsync=fsync)
