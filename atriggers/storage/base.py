"""The storage plug-in point: a per-session versioned store with compare-and-swap.

A backend implements five methods (`load`, `load_all`, `store`, `list_sessions`
and, if it holds resources, `close`). This base class adds what every backend
shares: per-session asyncio locks that never outlive their users, a bounded cache
of recent working snapshots (so a fire in a steady process costs one write and no
read), and tracking of in-process runs so closing the storage drains them.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Collection
from types import TracebackType
from typing import Any, ClassVar, Self

from ..errors import TriggerError
from ..state import Change, SessionState

__all__ = ["Reapply", "SessionLocks", "Storage", "VersionConflict"]

#: Recomputes an operation's change against the session's current state (None:
#: nothing to change). Pure and quick: it may run in a storage's worker thread.
Reapply = Callable[[SessionState], Change | None]

log = logging.getLogger("atriggers.storage")


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


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class SessionLocks:
    """One asyncio lock per session uid, dropped as soon as nobody holds or waits
    for it: a million distinct uids leave nothing behind."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def hold(self, uid: str) -> _Hold:
        """``async with locks.hold(uid):`` holds the lock of `uid`."""
        return _Hold(self._entries, uid)


class _Hold:
    """The context manager of `SessionLocks.hold`: a class rather than an
    ``@asynccontextmanager`` generator, which costs several microseconds more on
    every operation."""

    __slots__ = ("_entries", "_entry", "_uid")

    def __init__(self, entries: dict[str, _Entry], uid: str) -> None:
        self._entries = entries
        self._uid = uid

    async def __aenter__(self) -> None:
        entry = self._entries.get(self._uid)
        if entry is None:
            entry = self._entries[self._uid] = _Entry()
        entry.users += 1
        self._entry = entry
        try:
            await entry.lock.acquire()
        except BaseException:
            self._leave()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._entry.lock.release()
        self._leave()

    def _leave(self) -> None:
        self._entry.users -= 1
        if not self._entry.users:
            del self._entries[self._uid]


class Storage(ABC):
    """Base class of session stores. Use as ``async with``."""

    #: URL scheme this backend is opened with (``open_storage``).
    scheme: ClassVar[str]
    #: True when `store_or_reapply` resolves conflicts itself (re-applying the
    #: operation atomically): then an uncached session is not read before an
    #: operation, it is written as if new and re-applied if it was not.
    reapplies_conflicts: ClassVar[bool] = False
    #: True when another process can reach the same data through `url` (remote
    #: runners refuse sessions of a storage that cannot be reached that way).
    cross_process: ClassVar[bool] = True

    def __init__(self, *, cache_size: int = 1024, close_timeout: float = 30.0) -> None:
        self.cache_size = cache_size
        self.close_timeout = close_timeout
        self._cache: OrderedDict[str, SessionState] = OrderedDict()
        self._locks = SessionLocks()
        self._inflight: set[asyncio.Task[Any]] = set()
        self._uncancellable: set[asyncio.Task[Any]] = set()

    # -- what a backend implements -------------------------------------------------

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

    async def exists(self) -> bool:
        """Whether the store is already there, before `open` (False: opening it
        would create it, as for a SQLite file not yet made). Tools use it so that
        a mistyped location is reported instead of silently created."""
        return True

    async def open(self) -> None:
        """Acquire resources (connections). Called by ``async with``."""

    async def close(self) -> None:
        """Release resources. Called by `aclose` after in-flight runs drained."""

    # -- shared machinery --------------------------------------------------------------

    def lock(self, uid: str) -> Any:
        """Async context manager serializing operations on `uid` in this process."""
        return self._locks.hold(uid)

    async def read(self, uid: str, names: Collection[str] = (), *, fresh: bool = False) -> SessionState:
        """Working snapshot of `uid`, from the cache unless `fresh` or a named
        instance is missing from it. A cached snapshot may be stale if another
        process wrote since; `store`'s version check catches that."""
        if not fresh:
            cached = self._cache.get(uid)
            if cached is not None and all(n in cached.instances for n in names):
                self._cache.move_to_end(uid)
                return cached
            if cached is None and not names and self.reapplies_conflicts:
                # Guess "new session" instead of paying a round trip to read: if
                # the session exists, the write re-applies the operation to it.
                return SessionState(uid=uid, complete=False)
        state = await self.load(uid, names)
        self._remember(state)
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
                self._remember(conflict.fresh)
            else:
                self._cache.pop(uid, None)
            raise
        except BaseException:
            # Whether the write landed is unknown: never trust the cache for it.
            self._cache.pop(uid, None)
            raise
        if written is not None:
            self._remember(written.state)
        return written

    def forget(self, uid: str) -> None:
        """Drop the cached snapshot of `uid`."""
        self._cache.pop(uid, None)

    def _remember(self, state: SessionState) -> None:
        if self.cache_size <= 0 or state.complete:
            return
        self._cache[state.uid] = state
        self._cache.move_to_end(state.uid)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def track(self, task: asyncio.Task[Any], *, cancellable: bool = True) -> None:
        """Keep `task` alive until done; `aclose` waits for it.

        Runs are `cancellable`: past `close_timeout` they are cancelled (and record
        themselves failed). Short store-then-dispatch steps are not: they always
        complete, so nothing stored as scheduled is left undispatched.
        """
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        if not cancellable:
            self._uncancellable.add(task)
            task.add_done_callback(self._uncancellable.discard)

    async def drain(self, timeout: float | None = None, *, grace: float = 10.0) -> None:
        """Wait for in-process runs (cascades included) to finish. After
        `timeout` seconds, cancel the runs still going, and keep cancelling runs
        that start meanwhile (a cascade of a run that ended anyway), for at most
        `grace` more seconds; each cancelled run records its instance as failed
        (replayable)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        cancelled: set[asyncio.Task[Any]] = set()
        while self._inflight:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                if remaining <= -grace:
                    log.error(
                        "%r closes with %d run(s) still going: they ignored cancellation",
                        self,
                        len(self._inflight),
                    )
                    return
                for task in self._inflight - self._uncancellable - cancelled:
                    task.cancel()
                    cancelled.add(task)
                remaining = grace + remaining
            await asyncio.wait(set(self._inflight), timeout=remaining, return_when=asyncio.FIRST_COMPLETED)

    async def aclose(self) -> None:
        """Drain in-process runs (see `close_timeout`), then release resources."""
        try:
            await self.drain(self.close_timeout)
        finally:
            self._cache.clear()
            await self.close()

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

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"
