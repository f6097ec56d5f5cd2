"""The session index part of the storage conformance suite
(`SessionIndexConformance`, which `StorageConformance` includes).

It checks what listing and filtering sessions rely on: each write leaves the
session's summary (`atriggers.storage.index.summarize` of the change) in the
index, in the same atomic step (a conflicting write changes neither);
`list_summaries` pages in uid order with a cursor, applies every filter (failed,
stuck, waiting, task, uid prefix) and refuses bad arguments; `count_sessions`
counts the sessions and each flag.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from ... import _rules as rules
from ...config import parse_configuration
from ...errors import InvalidInput
from ...instance import Status
from ...state import Draft
from ...storage.base import Storage, VersionConflict
from ...storage.index import SessionFilter, SessionSummary

__all__ = ["SessionIndexConformance"]

#: A fixed time for the operations (2001-09-09): the index's last activity is
#: the time of the write (real time), not this.
T0 = 1_000_000_000.0

#: ``go`` schedules ``work``; ``later`` waits for ``never`` too (unstarted).
_CONFIG: dict[str, dict[str, Any]] = {
    "work": {"after": ["go"], "run": "conformance.echo"},
    "later": {"after": ["go", "never"], "run": "conformance.echo"},
}


async def _write(storage: Storage, uid: str, apply: Callable[[Draft], object], at: float = T0) -> int:
    state = await storage.load(uid)
    draft = Draft(state, at=at)
    apply(draft)
    change = draft.changes()
    await storage.store(uid, state.version, change)
    return change.version


async def _summary(storage: Storage, uid: str) -> SessionSummary | None:
    page = await storage.list_summaries(SessionFilter(prefix=uid))
    found = [s for s in page.summaries if s.uid == uid]
    return found[0] if found else None


async def _all(storage: Storage, filter: SessionFilter, limit: int) -> list[str]:
    """Every uid `filter` selects, page by page."""
    uids: list[str] = []
    after: str | None = None
    for _ in range(1000):
        page = await storage.list_summaries(filter, after=after, limit=limit)
        assert len(page.summaries) <= limit
        uids += [s.uid for s in page.summaries]
        if page.next is None:
            return uids
        after = page.next
    raise AssertionError("list_summaries never reached the last page")


async def _session(storage: Storage, uid: str, kind: str, at: float = T0) -> None:
    """A session that is `kind`: configured only ("idle"), with ``work``
    scheduled and ``later`` waiting ("busy"), with ``work`` failed ("failed") or
    finished ("done")."""
    tasks = parse_configuration(_CONFIG)
    await _write(storage, uid, lambda d: rules.configure(d, tasks), at)
    if kind == "idle":
        return
    await _write(storage, uid, lambda d: rules.fire(d, "go", {"k": uid}), at)
    if kind == "failed":
        await _write(storage, uid, lambda d: d.set_status(d.edit("work#0"), Status.FAILED), at)
    elif kind == "done":
        await _write(storage, uid, lambda d: d.set_status(d.edit("work#0"), Status.FINISHED), at)


class SessionIndexConformance:
    """The session index's tests (see the module's docstring)."""

    async def test_index_follows_each_write(self, storage: Storage) -> None:
        uid = f"index-{uuid.uuid4().hex[:12]}"
        assert await _summary(storage, uid) is None
        tasks = parse_configuration(_CONFIG)
        before = time.time()
        await _write(storage, uid, lambda d: rules.configure(d, tasks), T0)
        summary = await _summary(storage, uid)
        assert summary is not None
        assert summary.version == 1 and summary.tasks == ("later", "work")
        assert summary.instances == 0 and not (summary.failed or summary.stuck or summary.waiting)
        # The last activity is the time of the last write, in real time.
        assert summary.last_activity is not None and before - 1 <= summary.last_activity <= time.time() + 1

        await _write(storage, uid, lambda d: rules.fire(d, "go", {"text": "héllo"}), T0 + 5)
        summary = await _summary(storage, uid)
        assert summary is not None and summary.version == 2
        assert summary.counts["scheduled"] == 1 and summary.counts["unstarted"] == 1
        assert summary.stuck and summary.waiting and not summary.failed

        # A fire that only records kwargs leaves the counts; version and last
        # activity still follow the write.
        first = summary.last_activity
        await _write(storage, uid, lambda d: rules.fire(d, "other", {}), T0 + 6)
        summary = await _summary(storage, uid)
        assert summary is not None and summary.version == 3 and summary.stuck and summary.waiting
        assert summary.last_activity is not None and first is not None and summary.last_activity >= first

        await _write(storage, uid, lambda d: d.set_status(d.edit("work#0"), Status.FAILED), T0 + 6)
        summary = await _summary(storage, uid)
        assert summary is not None and summary.failed and not summary.stuck
        assert summary.counts["failed"] == 1

        # Replaying resolves the failure and schedules a clone: counted as resolved
        # and scheduled, though the working view holds no resolved instance.
        await _write(storage, uid, lambda d: rules.replay(d, "work#0"), T0 + 7)
        summary = await _summary(storage, uid)
        assert summary is not None and not summary.failed and summary.stuck
        assert summary.counts == {"unstarted": 1, "scheduled": 1, "running": 0, "failed": 0, "resolved": 1}
        assert summary.instances == 3

    async def test_conflicting_write_leaves_the_index_alone(self, storage: Storage) -> None:
        uid = f"index-{uuid.uuid4().hex[:12]}"
        await _session(storage, uid, "busy")
        before = await _summary(storage, uid)
        state = await storage.load(uid)
        draft = Draft(state, at=T0 + 60)
        draft.set_status(draft.edit("work#0"), Status.FAILED)
        stale = draft.changes()
        await _write(storage, uid, lambda d: rules.fire(d, "other", {}), T0 + 30)
        with pytest.raises(VersionConflict):
            await storage.store(uid, state.version, stale)
        after = await _summary(storage, uid)
        assert before is not None and after is not None
        assert not after.failed and after.version == before.version + 1

    async def test_index_pages_and_filters(self, storage: Storage) -> None:
        run = uuid.uuid4().hex[:8]
        kinds = ["idle", "busy", "failed", "done"]
        made: dict[str, str] = {}
        for n in range(14):
            uid = f"pf-{run}-{n:02d}-{'ü' if n % 3 == 0 else 'u'}"
            made[uid] = kinds[n % len(kinds)]
            await _session(storage, uid, made[uid])
        other = f"pf-{run}x-other"
        await _session(storage, other, "failed")
        prefix = f"pf-{run}-"
        everything = sorted(made)

        for limit in (1, 3, 50):
            assert await _all(storage, SessionFilter(prefix=prefix), limit) == everything
        failed = await _all(storage, SessionFilter(failed=True, prefix=prefix), 2)
        assert failed == [u for u in everything if made[u] == "failed"]
        stuck = await _all(storage, SessionFilter(stuck=True, prefix=prefix), 2)
        assert stuck == [u for u in everything if made[u] == "busy"]
        waiting = await _all(storage, SessionFilter(waiting=True, prefix=prefix), 2)
        assert waiting == [u for u in everything if made[u] in ("busy", "failed", "done")]
        both = await _all(storage, SessionFilter(failed=True, waiting=True, prefix=prefix), 2)
        assert both == failed
        assert await _all(storage, SessionFilter(failed=True, stuck=True, prefix=prefix), 2) == []
        assert await _all(storage, SessionFilter(task="work", prefix=prefix), 4) == everything
        assert await _all(storage, SessionFilter(task="nosuch", prefix=prefix), 4) == []
        assert await _all(storage, SessionFilter(task="work", failed=True, prefix=prefix), 4) == failed
        assert await _all(storage, SessionFilter(prefix=f"pf-{run}x"), 4) == [other]
        # A cursor before the prefix starts at the prefix; one past it ends the list.
        page = await storage.list_summaries(SessionFilter(prefix=prefix), after="pf-", limit=2)
        assert [s.uid for s in page.summaries] == everything[:2] and page.next == everything[1]
        page = await storage.list_summaries(SessionFilter(prefix=prefix), after=everything[-1])
        assert page.summaries == () and page.next is None

    async def test_a_session_leaves_a_filter_when_it_no_longer_matches(self, storage: Storage) -> None:
        run = uuid.uuid4().hex[:8]
        uids = [f"fl-{run}-{n}" for n in range(3)]
        for uid in uids:
            await _session(storage, uid, "failed")
        prefix = f"fl-{run}-"
        assert await _all(storage, SessionFilter(failed=True, prefix=prefix), 2) == uids
        # Replaying the middle one resolves its failure and puts a clone in flight.
        await _write(storage, uids[1], lambda d: rules.replay(d, "work#0"), T0 + 1)
        assert await _all(storage, SessionFilter(failed=True, prefix=prefix), 2) == [uids[0], uids[2]]
        assert await _all(storage, SessionFilter(stuck=True, prefix=prefix), 2) == [uids[1]]
        # And fails again: back in the failed list, out of the stuck one.
        await _write(storage, uids[1], lambda d: d.set_status(d.edit("work#1"), Status.FAILED), T0 + 2)
        assert await _all(storage, SessionFilter(failed=True, prefix=prefix), 1) == uids
        assert await _all(storage, SessionFilter(stuck=True, prefix=prefix), 1) == []

    async def test_count_sessions(self, storage: Storage) -> None:
        before = await storage.count_sessions()
        run = uuid.uuid4().hex[:8]
        for n, kind in enumerate(["idle", "busy", "failed", "failed", "done"]):
            await _session(storage, f"count-{run}-{n}", kind)
        after = await storage.count_sessions()
        assert after.sessions - before.sessions == 5
        assert after.failed - before.failed == 2
        assert after.stuck - before.stuck == 1
        assert after.waiting - before.waiting == 4

    async def test_index_refuses_bad_arguments(self, storage: Storage) -> None:
        for limit in (0, -1, 10_001, 2.5, True):
            with pytest.raises(InvalidInput, match="limit"):
                await storage.list_summaries(limit=limit)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="cursor"):
            await storage.list_summaries(after=3)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="prefix"):
            SessionFilter(prefix=None)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="task"):
            SessionFilter(task="")
