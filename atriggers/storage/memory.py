"""In-process storage: for tests and single-process tools. Nothing persists."""

from __future__ import annotations

import bisect
import heapq
import itertools
import time
from collections.abc import Collection
from dataclasses import dataclass, field, replace

from ..clock import Clock
from ..due import Due, DueEntry
from ..state import Change, SessionState
from .base import Storage, VersionConflict
from .codec import ConfigCache, decode_state, decode_tasks, encode_change
from .index import FLAGS, SessionCounts, SessionFilter, SessionPage, SessionSummary, check_page, reindexed
from .lease import DEFAULT_LEASE, OWNER_RETENTION

__all__ = ["MemoryStorage"]


@dataclass
class _Session:
    version: int = 0
    tasks: str = "{}"
    counts: str = "{}"
    triggers: dict[str, str] = field(default_factory=dict)
    instances: dict[str, str] = field(default_factory=dict)
    unresolved: set[str] = field(default_factory=set)
    #: When it was last written (real time, as the other backends keep it).
    updated: float = 0.0


def _creation_order(name: str) -> tuple[str, int]:
    task, _, number = name.rpartition("#")
    return task, int(number) if number.isdigit() else 0


@dataclass(slots=True)
class _Due:
    due: Due
    #: Which heap item is this entry's current one (older ones are skipped).
    seq: int


class MemoryStorage(Storage):
    """Sessions kept in this process's memory, as the same JSON a database holds
    (so what cannot be stored fails here too).

    Each ``MemoryStorage()`` (and each ``open_storage("memory://")``) is a separate,
    empty store; share the object to share the sessions.
    """

    scheme = "memory"
    cross_process = False

    def __init__(
        self,
        *,
        cache_size: int = 1024,
        close_timeout: float = 30.0,
        lease: float = DEFAULT_LEASE,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(cache_size=cache_size, close_timeout=close_timeout, lease=lease, clock=clock)
        self._sessions: dict[str, _Session] = {}
        self._configs = ConfigCache()
        # The due index: entries, a heap of (at, seq, uid, key) with stale items
        # skipped lazily, entries by owner, and owners' lease expiries.
        self._due: dict[tuple[str, str], _Due] = {}
        self._heap: list[tuple[float, int, str, str]] = []
        self._by_owner: dict[str, set[tuple[str, str]]] = {}
        self._owners: dict[str, float] = {}
        self._seq = itertools.count()
        # The session index: summaries, and the uids in order for paging: all of
        # them, and those of each flag (so that listing the few failed sessions
        # among many does not walk them all).
        self._summaries: dict[str, SessionSummary] = {}
        self._uids: list[str] = []
        self._flagged: dict[str, list[str]] = {flag: [] for flag in FLAGS}

    @property
    def url(self) -> str:
        return "memory://"

    @classmethod
    def from_url(cls, url: str) -> MemoryStorage:
        return cls()

    async def load(self, uid: str, names: Collection[str] = ()) -> SessionState:
        session = self._sessions.get(uid) or _Session()
        wanted = session.unresolved.union(n for n in names if n in session.instances)
        # In a stable order (by task, then creation), not a set's, which would
        # change from one process to the next.
        names = sorted(wanted, key=_creation_order) if len(wanted) > 1 else wanted
        return self._decode(uid, session, names, complete=False)

    async def load_all(self, uid: str) -> SessionState:
        session = self._sessions.get(uid) or _Session()
        return self._decode(uid, session, session.instances, complete=True)

    def _decode(self, uid: str, session: _Session, names: Collection[str], *, complete: bool) -> SessionState:
        return decode_state(
            uid,
            session.version,
            decode_tasks(self._configs, session.tasks, uid),
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
        session.updated = time.time()
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
        for key, due in change.due.items():
            self._set_due((uid, key), due)
        summary = reindexed(change)
        if summary is not None:
            old = self._summaries.get(uid)
            if old is None:
                bisect.insort(self._uids, uid)
            for flag, uids in self._flagged.items():
                was, now = old is not None and getattr(old, flag), getattr(summary, flag)
                if now and not was:
                    bisect.insort(uids, uid)
                elif was and not now:
                    at = bisect.bisect_left(uids, uid)
                    if at < len(uids) and uids[at] == uid:
                        del uids[at]
            self._summaries[uid] = summary

    # -- the due index ----------------------------------------------------------------------

    def _set_due(self, ref: tuple[str, str], due: Due | None) -> None:
        old = self._due.pop(ref, None)
        if old is not None and old.due.owner is not None:
            held = self._by_owner.get(old.due.owner)
            if held is not None:
                held.discard(ref)
                if not held:
                    del self._by_owner[old.due.owner]
        if due is None:
            return
        seq = next(self._seq)
        self._due[ref] = _Due(due, seq)
        if due.at is not None:
            heapq.heappush(self._heap, (due.at, seq, *ref))
        if due.owner is not None:
            self._by_owner.setdefault(due.owner, set()).add(ref)

    def _lapsed(self, owner: str | None, now: float) -> bool:
        """`now`: real time (leases are about processes being alive)."""
        if owner is None:
            return False
        expires = self._owners.get(owner)
        return expires is not None and expires <= now

    async def claim_due(
        self,
        now: float,
        until: float,
        limit: int = 100,
        keys: Collection[tuple[str, str]] | None = None,
    ) -> list[DueEntry]:
        refs: list[tuple[str, str]] = []
        alive_until = time.time()
        if keys is not None:
            for ref in keys:
                entry = self._due.get(ref)
                if entry is not None and (
                    (entry.due.at is not None and entry.due.at <= now)
                    or self._lapsed(entry.due.owner, alive_until)
                ):
                    refs.append(ref)
        else:
            for owner, expires in list(self._owners.items()):
                if expires > alive_until:
                    continue
                held = self._by_owner.get(owner)
                if held:
                    refs.extend(sorted(held)[: limit - len(refs)])
                elif expires <= alive_until - OWNER_RETENTION:
                    del self._owners[owner]
                if len(refs) >= limit:
                    break
            taken = set(refs)
            while self._heap and self._heap[0][0] <= now and len(refs) < limit:
                _, seq, uid, key = heapq.heappop(self._heap)
                entry = self._due.get((uid, key))
                if entry is not None and entry.seq == seq and (uid, key) not in taken:
                    refs.append((uid, key))
                    taken.add((uid, key))
        claimed: list[DueEntry] = []
        for ref in refs[:limit]:
            due = self._due[ref].due
            lapsed = self._lapsed(due.owner, alive_until)
            claimed.append(DueEntry(*ref, due.at, due.owner, due.payload, lapsed))
            # Claimed: due again at `until` unless handled, and no longer bound
            # to its owner (the claimer answers for it now).
            self._set_due(ref, Due(until, None, due.payload))
        return claimed

    async def renew_owner(self, owner: str, expires_at: float, *, create: bool = False) -> bool:
        if not create:
            expires = self._owners.get(owner)
            if expires is None or expires <= time.time():
                return False
        self._owners[owner] = expires_at
        return True

    async def release_owner(self, owner: str) -> None:
        if owner in self._owners:
            self._owners[owner] = float("-inf")

    async def list_sessions(self) -> list[str]:
        return sorted(self._sessions)

    async def list_summaries(
        self, filter: SessionFilter | None = None, *, after: str | None = None, limit: int = 50
    ) -> SessionPage:
        check_page(after, limit)
        wanted = filter or SessionFilter()
        # Walk the fewest uids that can match: those of the rarest flag asked for.
        uids = min(
            (self._flagged[flag] for flag in FLAGS if getattr(wanted, flag)), key=len, default=self._uids
        )
        if after is not None and after >= wanted.prefix:
            position = bisect.bisect_right(uids, after)
        else:
            position = bisect.bisect_left(uids, wanted.prefix)
        found: list[SessionSummary] = []
        for uid in itertools.islice(uids, position, None):
            if not uid.startswith(wanted.prefix):
                break
            session = self._sessions[uid]
            summary = replace(self._summaries[uid], version=session.version, last_activity=session.updated)
            if wanted.matches(summary):
                found.append(summary)
                if len(found) > limit:
                    break
        page = tuple(found[:limit])
        return SessionPage(page, page[-1].uid if len(found) > limit else None)

    async def count_sessions(self) -> SessionCounts:
        summaries = self._summaries.values()
        return SessionCounts(
            sessions=len(self._summaries),
            failed=sum(s.failed for s in summaries),
            stuck=sum(s.stuck for s in summaries),
            waiting=sum(s.waiting for s in summaries),
        )
