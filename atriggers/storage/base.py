"""The storage plug-in point: a per-session versioned store with compare-and-swap.

A backend implements the contract: `url`, `from_url`, `load`, `load_all`, `store`
and `list_sessions`, plus `connect`/`disconnect` if it holds resources, and
keeps the session index (`list_summaries`, `count_sessions`: see
`atriggers.storage.index`) with each write. The base
class owns what every backend shares, each in a small class of its own:
per-session locks (`SessionLocks`), a cache of recent working snapshots
(`SnapshotCache`) and the in-process runs closing must drain (`RunTracker`).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from types import TracebackType
from typing import Any, ClassVar, Self
from urllib.parse import urlencode, urlsplit, urlunsplit

from ..clock import Clock, SystemClock
from ..due import DueEntry
from ..errors import TriggerError
from ..state import Change, SessionState
from .cache import SnapshotCache
from .index import (
    SessionCounts,
    SessionFilter,
    SessionPage,
    SessionSummary,
    check_page,
    latest_stamp,
    summarize_state,
)
from .lease import DEFAULT_LEASE, OwnerLease
from .locks import SessionLocks
from .runs import RunTracker

__all__ = [
    "LOCK_AFTER_CONFLICTS",
    "Reapply",
    "SessionLocks",
    "Storage",
    "VersionConflict",
    "mask_url",
    "with_params",
]

#: Recomputes an operation's change against the session's current state (None:
#: nothing to change). Pure and quick: it may run in a storage's worker thread.
Reapply = Callable[[SessionState], Change | None]

#: After this many writes of one process to one session in a row lost to other
#: writers, a backend that can (PostgreSQL's row lock, Redis's fairness lock)
#: makes the next one under a lock that cannot lose: no writer starves.
LOCK_AFTER_CONFLICTS = 8


class VersionConflict(TriggerError):
    """Raised by `Storage.store` when the session's stored version is not the one
    the change was computed from. The manager re-reads and re-applies.

    A backend that can cheaply read the current state in the same round trip
    passes it as `fresh`, saving the re-read.
    """

    def __init__(self, uid: str, expected: int, fresh: SessionState | None = None) -> None:
        self.uid = uid
        self.expected = expected
        self.fresh = fresh
        super().__init__(f"session {uid!r} is no longer at version {expected}")


class Storage(ABC):
    """Base class of session stores. Use as ``async with``."""

    #: URL scheme this backend is opened with (``open_storage``).
    scheme: ClassVar[str]
    #: True when writing a session as if it were new costs no more than reading
    #: it first: `store_or_reapply` resolves conflicts itself (re-applying the
    #: operation), or its `VersionConflict` carries the current state (the
    #: manager re-applies the operation to it at once). Then an uncached session
    #: is not read before an operation: it is written as if new.
    reapplies_conflicts: ClassVar[bool] = False
    #: True when another process can reach the same data through `url` (remote
    #: runners refuse sessions of a storage that cannot be reached that way).
    cross_process: ClassVar[bool] = True

    def __init__(
        self,
        *,
        cache_size: int = 1024,
        close_timeout: float = 30.0,
        lease: float = DEFAULT_LEASE,
        clock: Clock | None = None,
    ) -> None:
        #: Seconds `aclose` waits for in-process runs before cancelling them.
        self.close_timeout = close_timeout
        #: Where every deadline, cooldown and lease of this storage reads the time.
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.locks = SessionLocks()
        self.cache = SnapshotCache(cache_size)
        self.runs = RunTracker()
        #: This process as an owner: `lease` seconds without renewal and what it
        #: holds is recovered elsewhere.
        self.lease = OwnerLease(self, lease)
        self._open = False

    # -- what a backend implements -------------------------------------------------

    @classmethod
    @abstractmethod
    def from_url(cls, url: str) -> Storage:
        """The storage a URL names (``open_storage`` calls it for the backend's
        scheme; remote workers rebuild the storage of a session with it)."""

    @property
    @abstractmethod
    def url(self) -> str:
        """A URL that `open_storage` turns into a storage holding the same data
        (remote workers use it to reach the session)."""

    @abstractmethod
    async def load(self, uid: str, names: Collection[str] = ()) -> SessionState:
        """The session's working snapshot: configuration, latest kwargs, instance
        counts, every unresolved instance, plus the instances named in `names`
        whatever their status (``complete=False``). An unknown uid reads as an
        empty session at version 0."""

    @abstractmethod
    async def load_all(self, uid: str) -> SessionState:
        """The session with every instance (``complete=True``)."""

    @abstractmethod
    async def store(self, uid: str, expected_version: int, change: Change) -> None:
        """Write `change` atomically if the session is still at `expected_version`
        (0: the session must not exist yet), moving it to ``change.version``.
        Otherwise write nothing and raise `VersionConflict`. Backend failures are
        raised as `StorageError`, with nothing half-written."""

    @abstractmethod
    async def list_sessions(self) -> list[str]:
        """The uids of every stored session, sorted."""

    async def list_summaries(
        self, filter: SessionFilter | None = None, *, after: str | None = None, limit: int = 50
    ) -> SessionPage:
        """One page of the session index, in uid order: the summaries of the
        sessions matching `filter` whose uid sorts after `after` (a cursor: the
        ``next`` of the previous page), at most `limit`.

        A backend stores ``EncodedChange.summary`` in the same atomic write as the
        change and answers this from what it stored, at a cost that does not grow
        with the number of sessions that do not match. This default reads every
        session instead (correct, slow: for backends without an index yet).
        """
        check_page(after, limit)
        wanted = filter or SessionFilter()
        found: list[SessionSummary] = []
        for uid in await self.list_sessions():
            if (after is not None and uid <= after) or not uid.startswith(wanted.prefix):
                continue
            state = await self.load_all(uid)
            summary = summarize_state(state, latest_stamp(state.instances.values()))
            if wanted.matches(summary):
                found.append(summary)
                if len(found) > limit:
                    break
        more = len(found) > limit
        page = tuple(found[:limit])
        return SessionPage(page, page[-1].uid if more else None)

    async def count_sessions(self) -> SessionCounts:
        """How many sessions the index holds, in all and failed, stuck, waiting."""
        totals = {"sessions": 0, "failed": 0, "stuck": 0, "waiting": 0}
        after: str | None = None
        while True:
            page = await self.list_summaries(after=after, limit=1000)
            for summary in page.summaries:
                totals["sessions"] += 1
                totals["failed"] += summary.failed
                totals["stuck"] += summary.stuck
                totals["waiting"] += summary.waiting
            if page.next is None:
                return SessionCounts(**totals)
            after = page.next

    async def exists(self) -> bool:
        """Whether the store is already there, before `open` (False: opening it
        would create it, as for a SQLite file not yet made). Tools use it so that
        a mistyped location is reported instead of silently created."""
        return True

    @abstractmethod
    async def claim_due(
        self,
        now: float,
        until: float,
        limit: int = 100,
        keys: Collection[tuple[str, str]] | None = None,
    ) -> list[DueEntry]:
        """Claim due-index entries, atomically: those due at `now` (``at <= now``)
        and those whose owner's lease has expired (``lapsed=True``; leases are in
        real time, `time.time`, whatever the storage's clock), oldest first, at
        most `limit` (with `keys`: only those ``(uid, key)`` entries, if due).
        Each claimed entry's ``at`` becomes `until` and it is no longer bound to
        its owner, so no other claimer takes it before then; whoever handles it
        rewrites or deletes it with the session's next write. The entries are
        returned as they were before the claim. Cost: proportional to what is
        due, not to what is stored."""

    @abstractmethod
    async def renew_owner(self, owner: str, expires_at: float, *, create: bool = False) -> bool:
        """Register (`create`) or renew the lease of `owner` until `expires_at`
        (real time, `time.time`). Renewing returns False, changing nothing, when
        the owner is unknown or its lease already expired (it lapsed: what it held
        is being recovered, and it must register again under a new id)."""

    @abstractmethod
    async def release_owner(self, owner: str) -> None:
        """The owner stops: its lease ends now, so what it still holds is due."""

    async def connect(self) -> None:
        """Acquire resources (connections, files); called once by `open`."""

    async def disconnect(self) -> None:
        """Release them; called once by `aclose`, after in-process runs drained."""

    # -- lifecycle: one way in, one way out ------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._open

    async def open(self) -> None:
        """Acquire resources (idempotent). Called by ``async with``."""
        if not self._open:
            await self.connect()
            self._open = True

    async def aclose(self) -> None:
        """Drain in-process runs (see `close_timeout`), then release resources.
        Called by ``async with``; idempotent."""
        try:
            await self.drain(self.close_timeout)
            if self._open:
                await self.lease.release()
        finally:
            self.cache.clear()
            if self._open:
                self._open = False
                await self.disconnect()

    async def close(self) -> None:
        """The same as `aclose`."""
        await self.aclose()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- shared machinery --------------------------------------------------------------

    def lock(self, uid: str) -> Any:
        """Async context manager serializing operations on `uid` in this process."""
        return self.locks.hold(uid)

    async def read(self, uid: str, names: Collection[str] = (), *, fresh: bool = False) -> SessionState:
        """Working snapshot of `uid`, from the cache unless `fresh` or a named
        instance is missing from it. A cached snapshot may be stale if another
        process wrote since; `store`'s version check catches that."""
        if not fresh:
            cached = self.cache.get(uid)
            if cached is not None and all(n in cached.instances for n in names):
                return cached
            if cached is None and not names and self.reapplies_conflicts:
                # Guess "new session" instead of paying a round trip to read: if
                # the session exists, the write re-applies the operation to it.
                return SessionState(uid=uid, complete=False)
        state = await self.load(uid, names)
        self.cache.remember(state)
        return state

    async def store_or_reapply(
        self, uid: str, expected_version: int, change: Change, reapply: Reapply | None
    ) -> Change | None:
        """Like `store`, but on a version conflict a backend that can hold the
        session locked (a SQLite transaction) reads the current state, calls
        ``reapply(current)`` for the change to make instead, and writes that, all
        in one atomic step: no conflict reaches the caller. Returns the change
        written (None if `reapply` found nothing to change). Exceptions from
        `reapply` propagate with nothing written.

        The default just calls `store` and lets `VersionConflict` through: the
        manager then re-reads and re-applies itself.
        """
        await self.store(uid, expected_version, change)
        return change

    async def write(self, change: Change, reapply: Reapply | None = None) -> Change | None:
        """Store `change` with compare-and-swap (see `store_or_reapply`) and cache
        the resulting snapshot. Returns the change actually written."""
        uid = change.state.uid
        try:
            written = await self.store_or_reapply(uid, change.version - 1, change, reapply)
        except VersionConflict as conflict:
            if conflict.fresh is not None:
                self.cache.remember(conflict.fresh)
            else:
                self.cache.forget(uid)
            raise
        except BaseException:
            # Whether the write landed is unknown: never trust the cache for it.
            self.cache.forget(uid)
            raise
        if written is not None:
            self.cache.remember(written.state)
        return written

    def forget(self, uid: str) -> None:
        """Drop the cached snapshot of `uid`."""
        self.cache.forget(uid)

    def track(self, task: asyncio.Task[Any], *, cancellable: bool = True, timer: bool = False) -> None:
        """Keep `task` alive until done; `aclose` waits for it.

        Runs are `cancellable`: past `close_timeout` they are cancelled (and record
        themselves failed). Short store-then-dispatch steps are not: they always
        complete, so nothing stored as scheduled is left undispatched. A `timer`
        (waiting for a due entry) is cancelled at once: what it waits for is durable.
        """
        self.runs.track(task, cancellable=cancellable, timer=timer)

    async def drain(self, timeout: float | None = None, *, grace: float = 10.0) -> None:
        """Wait for in-process runs (cascades included) to finish. After
        `timeout` seconds, cancel the runs still going, and keep cancelling runs
        that start meanwhile, for at most `grace` more seconds; each cancelled run
        records its instance as failed (replayable)."""
        await self.runs.drain(timeout, grace=grace, owner=self)

    @property
    def safe_url(self) -> str:
        """`url` with any password masked, for output and logs."""
        return mask_url(self.url)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.safe_url}>"


def mask_url(url: str) -> str:
    """`url` with the password of its user info replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def with_params(url: str, params: list[tuple[str, str]]) -> str:
    """`url` with `params` added to its query (a backend's own options, as its
    `Storage.url` gives them back after the driver's)."""
    if not params:
        return url
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit(parts._replace(query=query))
