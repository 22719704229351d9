"""The store's writer lock: one writer at a time, readers never wait.

zarr has no locks, and two writers appending revision ``r000007`` to the same case at once
would each believe they wrote it. Every write operation therefore holds the ``LOCK`` key,
created exclusively with the holder's pid, host and start time. A lock whose process is
gone (same host, pid not running) or that is older than ``stale_after_s`` is stale and is
broken by the next writer, so a crashed viewer never blocks the store for good; breaking is
one atomic take-over of exactly the lock judged stale (never "check, then delete", which
would let two writers break it and both proceed). On object stores (fsspec URLs) no key
can be created exclusively: the lock is best effort, a stale one is never broken
automatically, and the user is told so. Readers never take the lock: they follow committed
``HEAD`` records only.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone

from napari_ivd.errors import StoreLockedError
from napari_ivd.store import schema
from napari_ivd.store.backend import KeyValue

log = logging.getLogger(__name__)

__all__ = ["LockHolder", "WriterLock"]


@dataclass(frozen=True)
class LockHolder:
    """Who holds the writer lock, as written in the ``LOCK`` key."""

    pid: int
    hostname: str
    created_utc: str
    operation: str
    token: str

    @property
    def age_s(self) -> float:
        """Seconds since the lock was taken (0 when the time cannot be read)."""
        try:
            created = datetime.strptime(self.created_utc, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        except ValueError:
            return 0.0
        return max(0.0, (datetime.now(timezone.utc) - created).total_seconds())

    def describe(self) -> str:
        """One line for messages: pid, host, since when, doing what."""
        return f"pid {self.pid} on {self.hostname} since {self.created_utc} ({self.operation})"

    def to_json(self) -> bytes:
        """The ``LOCK`` key's content."""
        return json.dumps(self.__dict__, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> LockHolder | None:
        """Parse a ``LOCK`` key; None when it is not a lock record."""
        try:
            d = json.loads(data)
            return cls(int(d["pid"]), str(d["hostname"]), str(d["created_utc"]), str(d["operation"]), str(d["token"]))
        except (ValueError, KeyError, TypeError):
            return None


def _parse(data: bytes) -> LockHolder:
    """The holder a ``LOCK`` key names (an unreadable one counts as a stale holder)."""
    return LockHolder.from_json(data) or LockHolder(-1, "?", "", "unreadable lock record", "")


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class WriterLock:
    """Re-entrant writer lock over a store's ``LOCK`` key.

    Parameters
    ----------
    keys : KeyValue
        The store location.
    timeout_s : float
        How long :meth:`hold` waits for another writer before raising.
    stale_after_s : float
        Age after which a lock is broken even when its process cannot be checked (another host).

    Example
    -------
    >>> with lock.hold("save r000004 of case L3"):
    ...     write_revision()
    """

    def __init__(self, keys: KeyValue, timeout_s: float = 10.0, stale_after_s: float = 600.0) -> None:
        self.keys = keys
        self.timeout_s = timeout_s
        self.stale_after_s = stale_after_s
        self._token: str | None = None
        self._depth = 0

    def holder(self) -> LockHolder | None:
        """The current holder, or None when the store is not locked."""
        data = self.keys.get(schema.LOCK)
        return None if data is None else _parse(data)

    def is_stale(self, holder: LockHolder) -> bool:
        """True when ``holder``'s process is gone or the lock is older than ``stale_after_s``."""
        if holder.hostname == socket.gethostname() and holder.pid > 0 and not _pid_running(holder.pid):
            return True
        if holder.pid == os.getpid() and holder.hostname == socket.gethostname() and holder.token != self._token:
            return False  # another store object of this very process holds it: wait for it
        return holder.age_s > self.stale_after_s or holder.pid < 0

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._depth > 0

    def _acquire(self, operation: str) -> None:
        token = uuid.uuid4().hex
        me = LockHolder(os.getpid(), socket.gethostname(), schema.utc_now(), operation, token)
        deadline = time.monotonic() + self.timeout_s
        location = self.keys.location
        if not self.keys.exclusive_create:
            log.warning(
                "%s: an object store cannot create the writer lock exclusively; two writers starting at the "
                "same instant are not kept apart, so write from one place at a time",
                location,
            )
        while True:
            if self.keys.create(schema.LOCK, me.to_json()):
                self._token = token
                return
            raw = self.keys.get(schema.LOCK)
            holder = None if raw is None else _parse(raw)
            if raw is not None and holder is not None and self.is_stale(holder):
                if not self.keys.exclusive_create:
                    raise StoreLockedError(
                        f"{location}: the writer lock of {holder.describe()} looks stale, but on this storage a "
                        "lock cannot be taken over safely, so it is left alone. If that writer is surely gone, "
                        f"delete {location}/LOCK and retry"
                    )
                if self.keys.take_over(schema.LOCK, raw):  # only exactly the lock judged stale
                    log.warning("%s: broke the stale writer lock held by %s", location, holder.describe())
                continue
            if time.monotonic() >= deadline:
                who = holder.describe() if holder else "another writer"
                raise StoreLockedError(
                    f"{location}: the store is being written by {who}; waited {self.timeout_s:g} s. "
                    f"Retry when it is done; if that process no longer exists, delete {location}/LOCK"
                )
            time.sleep(0.02)

    def _release(self) -> None:
        holder = self.holder()
        if holder is not None and holder.token == self._token:
            self.keys.delete(schema.LOCK)
        else:
            log.warning("%s: writer lock was taken over while held; not removing it", self.keys.location)
        self._token = None

    @contextmanager
    def hold(self, operation: str) -> Iterator[None]:
        """Hold the lock for the ``with`` block (nested blocks reuse it)."""
        if self._depth == 0:
            self._acquire(operation)
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._release()
