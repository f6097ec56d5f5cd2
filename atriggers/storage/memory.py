"""In-process storage: for tests and single-process tools. Nothing persists."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from ..state import Change, SessionState
from .base import Storage, VersionConflict
from .codec import ConfigCache, decode_state, encode_change

__all__ = ["MemoryStorage"]


@dataclass
class _Session:
    version: int = 0
    tasks: str = "{}"
    counts: str = "{}"
    triggers: dict[str, str] = field(default_factory=dict)
    instances: dict[str, str] = field(default_factory=dict)
    unresolved: set[str] = field(default_factory=set)


class MemoryStorage(Storage):
    """Sessions kept in this process's memory, as the same JSON a database holds
    (so what cannot be stored fails here too).

    Each ``MemoryStorage()`` (and each ``open_storage("memory://")``) is a separate,
    empty store; share the object to share the sessions.
    """

    scheme = "memory"
    cross_process = False

    def __init__(self, *, cache_size: int = 1024, close_timeout: float = 30.0) -> None:
        super().__init__(cache_size=cache_size, close_timeout=close_timeout)
        self._sessions: dict[str, _Session] = {}
        self._configs = ConfigCache()

    @property
    def url(self) -> str:
        return "memory://"

    @classmethod
    def from_url(cls, url: str) -> MemoryStorage:
        return cls()

    async def load(self, uid: str, names: Collection[str] = ()) -> SessionState:
        session = self._sessions.get(uid) or _Session()
        wanted = session.unresolved.union(n for n in names if n in session.instances)
        return self._decode(uid, session, wanted, complete=False)

    async def load_all(self, uid: str) -> SessionState:
        session = self._sessions.get(uid) or _Session()
        return self._decode(uid, session, session.instances, complete=True)

    def _decode(self, uid: str, session: _Session, names: Collection[str], *, complete: bool) -> SessionState:
        return decode_state(
            uid,
            session.version,
            self._configs.decode(session.tasks),
            session.counts,
            session.triggers.items(),
            ((n, session.instances[n]) for n in names),
            complete=complete,
        )

    async def store(self, uid: str, expected_version: int, change: Change) -> None:
        session = self._sessions.get(uid)
        if (session.version if session else 0) != expected_version:
            raise VersionConflict(uid, expected_version)
        encoded = encode_change(change)
        if session is None:
            session = self._sessions[uid] = _Session()
        session.version = encoded.version
        if encoded.tasks is not None:
            session.tasks = encoded.tasks
        if encoded.counts is not None:
            session.counts = encoded.counts
        session.triggers.update(encoded.triggers)
        for name, _task, _status, resolved, text in encoded.instances:
            session.instances[name] = text
            if resolved:
                session.unresolved.discard(name)
            else:
                session.unresolved.add(name)

    async def list_sessions(self) -> list[str]:
        return sorted(self._sessions)
