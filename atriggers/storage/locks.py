"""`SessionLocks`: one asyncio lock per session uid, serializing a process's
operations on each session."""

from __future__ import annotations

import asyncio

__all__ = ["SessionLocks"]


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
