"""The due index part of the storage conformance suite (`DueIndexConformance`,
which `StorageConformance` includes).

It checks what `atriggers.Sweeper` relies on: entries are written and deleted in
the same atomic write as the state they belong to (and not at all when that
write conflicts); `claim_due` hands out what is due by time, oldest first, up to
`limit`, moving each claimed entry to `until` and unbinding it from its owner;
entries held by an owner whose lease lapsed are claimed as ``lapsed``; payloads
come back intact; storage objects on one store never claim the same entry; and
three sweepers handle every due entry of hundreds of sessions exactly once.

Times given to `claim_due` are on the storage's clock; here they are mostly a
fixed epoch far in the past (`T0`), so that real time (on which owners' leases
run) and due times do not mix by accident.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

import pytest

from ... import _rules as rules
from ...clock import FakeClock, SystemClock
from ...config import parse_configuration
from ...context import TaskContext
from ...due import Due, DueEntry
from ...instance import Meta, Status
from ...manager import TriggerManager
from ...state import Draft, Placement
from ...storage.base import Storage, VersionConflict
from ...sweeper import Sweeper
from ...tasks import TaskRegistry

if TYPE_CHECKING:
    from .storage import StorageFactory

__all__ = ["DueIndexConformance"]

#: A fixed time for due entries (2001-09-09): far from now, whatever now is.
T0 = 1_000_000_000.0

_WINDOW: dict[str, dict[str, Any]] = {
    "window": {"after": ["a", "b"], "within": 60, "run": "conformance.due.echo"}
}


def _uid() -> str:
    return f"due-{uuid.uuid4().hex[:12]}"


async def _apply_at(
    storage: Storage,
    uid: str,
    at: float,
    apply: Callable[[Draft], object],
    placement: Placement | None = None,
) -> int:
    """Apply a rule to the stored session as of time `at` and store the change
    (no manager, no cache); returns the version written."""
    state = await storage.load(uid)
    draft = Draft(state, at=at, placement=placement)
    apply(draft)
    change = draft.changes()
    await storage.store(uid, state.version, change)
    storage.forget(uid)
    return change.version


def _entries(entries: Mapping[str, Due | None]) -> Callable[[Draft], None]:
    """A rule writing (or with None deleting) due entries of the session."""

    def write(draft: Draft) -> None:
        for key, entry in entries.items():
            draft.set_due(key, entry)

    return write


def _held_by(owner: str) -> Placement:
    """Instances dispatched in this placement are held by `owner` (in-process)."""
    return Placement(owner_for=lambda runner: owner)


def _refs(entries: Collection[DueEntry]) -> list[tuple[str, str]]:
    return [(e.uid, e.key) for e in entries]


async def _claim_everything(storage: Storage, now: float = T0 + 10**7) -> list[DueEntry]:
    """Claim whatever is left (in a store of this test only)."""
    found: list[DueEntry] = []
    for _ in range(100):
        batch = await storage.claim_due(now, now + 10**6, 1000)
        if not batch:
            return found
        found += batch
    raise AssertionError(f"claim_due keeps handing out entries: {found[:5]}... (claims must move them)")


class _Recorder:
    """The sweeper test's task, recording each run and what it received."""

    def __init__(self) -> None:
        self.registry = TaskRegistry(entry_point_group=None)
        self.runs: list[tuple[str, str]] = []
        self.kwargs: dict[tuple[str, str], dict[str, Any]] = {}
        self.registry.register(self._echo, "conformance.due.echo")

    async def _echo(self, context: TaskContext) -> dict[str, Any]:
        self.runs.append((context.uid, context.instance_name))
        self.kwargs[context.uid, context.instance_name] = dict(context.trigger_kwargs)
        await asyncio.sleep(0)
        return {}


class DueIndexConformance:
    """Tests of the due index; mixed into `StorageConformance` (whose fixtures,
    ``storage`` and ``storage_factory``, they use)."""

    #: Sessions of the sweepers test (each holds three due entries) and sweepers.
    sweep_sessions: int = 100
    sweepers: int = 3

    @staticmethod
    def _require_shared(factory: StorageFactory) -> None:
        if not factory.shared:
            pytest.skip("this storage keeps its data per object: nothing to share")

    # -- entries follow the state they belong to ------------------------------------------

    async def test_due_entries_are_written_and_deleted_with_changes(self, storage: Storage) -> None:
        uid = _uid()
        tasks = parse_configuration(_WINDOW)
        await _apply_at(storage, uid, T0, lambda d: rules.configure(d, tasks))
        assert await _claim_everything(storage) == []  # a configuration needs no entry
        await _apply_at(storage, uid, T0, lambda d: rules.fire(d, "a", {}))  # window#0: expires at T0+60
        assert await storage.claim_due(T0 + 59.9, T0 + 100) == []
        assert await storage.claim_due(T0 + 60, T0 + 100) == [DueEntry(uid, "window#0", T0 + 60)]
        # Claimed: not due again before `until`, due again from then on.
        assert await storage.claim_due(T0 + 99, T0 + 200) == []
        assert await storage.claim_due(T0 + 100, T0 + 200) == [DueEntry(uid, "window#0", T0 + 100)]
        # The instance starts: its window no longer matters, the entry goes.
        await _apply_at(storage, uid, T0 + 1, lambda d: rules.fire(d, "b", {}))
        assert await _claim_everything(storage) == []

    async def test_due_entries_rewritten_and_deleted_by_key(self, storage: Storage) -> None:
        uid = _uid()
        await _apply_at(storage, uid, T0, _entries({"fire@one": Due(T0 + 10, None, "1")}))
        await _apply_at(storage, uid, T0, _entries({"fire@two": Due(T0 + 20, None, "2")}))
        # Rewriting an entry replaces it (one entry per key), deleting it removes it.
        await _apply_at(storage, uid, T0, _entries({"fire@one": Due(T0 + 30, None, "1b")}))
        await _apply_at(storage, uid, T0, _entries({"fire@two": None}))
        assert await storage.claim_due(T0 + 25, T0 + 100) == []
        assert await storage.claim_due(T0 + 30, T0 + 100) == [DueEntry(uid, "fire@one", T0 + 30, None, "1b")]
        # The same key in another session is another entry.
        other = _uid()
        await _apply_at(storage, other, T0, _entries({"fire@one": Due(T0 + 5, None, "other")}))
        await _apply_at(storage, uid, T0, _entries({"fire@one": None}))
        assert await _claim_everything(storage, T0 + 50) == [
            DueEntry(other, "fire@one", T0 + 5, None, "other")
        ]

    async def test_conflicting_write_writes_no_entry(self, storage: Storage) -> None:
        uid = _uid()
        tasks = parse_configuration(_WINDOW)
        base = await storage.load(uid)
        creating = Draft(base, at=T0)
        rules.configure(creating, tasks)
        rules.fire(creating, "a", {})
        await _apply_at(storage, uid, T0, lambda d: rules.configure(d, tasks))
        with pytest.raises(VersionConflict):  # creates a session that now exists
            await storage.store(uid, 0, creating.changes())
        assert await _claim_everything(storage) == []
        v1 = await storage.load(uid)
        winner, loser = Draft(v1, at=T0), Draft(v1, at=T0)
        rules.fire(winner, "unrelated", {})  # writes no entry
        rules.fire(loser, "a", {})  # would write window#0's entry
        loser.set_due("fire@late", Due(T0, None, "{}"))
        await storage.store(uid, 1, winner.changes())
        with pytest.raises(VersionConflict):
            await storage.store(uid, 1, loser.changes())
        assert await _claim_everything(storage) == []

    # -- claiming by time ----------------------------------------------------------------------

    async def test_claim_due_oldest_first_up_to_limit(self, storage: Storage) -> None:
        uids = [_uid() for _ in range(3)]
        at = {(uid, f"fire@{k}"): T0 + 7 * k + j for j, uid in enumerate(uids) for k in range(4)}
        for (uid, key), when in sorted(at.items(), key=lambda item: -item[1]):  # newest written first
            await _apply_at(storage, uid, T0, _entries({key: Due(when, None, key)}))
        due_now = sorted((ref for ref in at if at[ref] <= T0 + 15), key=at.__getitem__)
        assert len(due_now) == 8
        first = await storage.claim_due(T0 + 15, T0 + 1000, limit=5)
        assert _refs(first) == due_now[:5]
        assert [e.at for e in first] == [at[ref] for ref in due_now[:5]]
        rest = await storage.claim_due(T0 + 15, T0 + 1000, limit=5)
        assert _refs(rest) == due_now[5:]
        assert await storage.claim_due(T0 + 15, T0 + 1000, limit=5) == []
        later = await storage.claim_due(T0 + 999, T0 + 2000, limit=100)
        assert sorted(_refs(later)) == sorted(ref for ref in at if ref not in due_now)
        assert [e.at for e in later] == sorted(e.at for e in later if e.at is not None)

    async def test_claim_due_only_the_given_keys(self, storage: Storage) -> None:
        uid, other = _uid(), _uid()
        entries = {"fire@due": Due(T0, None, "x"), "fire@later": Due(T0 + 50, None, "y")}
        await _apply_at(storage, uid, T0, _entries(entries))
        await _apply_at(storage, other, T0, _entries({"fire@due": Due(T0, None, "z")}))
        assert await storage.claim_due(T0 + 1, T0 + 100, keys=[]) == []
        claimed = await storage.claim_due(
            T0 + 1,
            T0 + 100,
            keys=[(uid, "fire@due"), (uid, "fire@later"), (uid, "fire@missing"), ("nobody", "x#0")],
        )
        assert claimed == [DueEntry(uid, "fire@due", T0, None, "x")]
        assert await storage.claim_due(T0 + 1, T0 + 100, keys=[(uid, "fire@due")]) == []  # claimed
        assert await storage.claim_due(T0 + 1, T0 + 100) == [DueEntry(other, "fire@due", T0, None, "z")]

    async def test_payloads_come_back_intact(self, storage: Storage) -> None:
        uid = _uid()
        payloads = {
            "fire@json": json.dumps(
                {"trigger": "go", "kwargs": {"text": "héllo wörld ✓", "n": [1, 2.5, None]}}
            ),
            "fire@raw": 'line one\nline two\r\n\ttabbed "quoted" \\ back\\slash ünï 🎉',
            "fire@big": json.dumps({"trigger": "go", "kwargs": {"blob": "x" * 200_000}}),
            "fire@none": None,
        }
        for n, (key, payload) in enumerate(payloads.items()):
            await _apply_at(storage, uid, T0, _entries({key: Due(T0 + n, None, payload)}))
        claimed = await storage.claim_due(T0 + 10, T0 + 100)
        assert {e.key: e.payload for e in claimed} == payloads
        # A claim keeps the payload: claimed again later, it is still there.
        again = await storage.claim_due(T0 + 100, T0 + 200)
        assert {e.key: e.payload for e in again} == payloads

    # -- owners' leases ---------------------------------------------------------------------------

    async def test_entries_of_a_lapsed_owner_are_claimed_as_lapsed(self, storage: Storage) -> None:
        uid = _uid()
        owner = f"conformance/{uuid.uuid4().hex}"
        tasks = parse_configuration({"held": {"after": ["h"], "run": "conformance.due.echo"}})
        assert await storage.renew_owner(owner, time.time() + 60, create=True)
        await _apply_at(storage, uid, T0, lambda d: rules.configure(d, tasks))
        await _apply_at(storage, uid, T0, lambda d: rules.fire(d, "h", {}), _held_by(owner))
        # Held by a live owner and not due by time: not claimable, whatever the time.
        assert await _claim_everything(storage) == []
        assert await storage.renew_owner(owner, time.time() + 60)  # renewed while alive
        assert await _claim_everything(storage) == []
        # The lease runs out: what the owner holds is claimed, once, as lapsed.
        assert await storage.renew_owner(owner, time.time() - 1, create=True)
        assert await storage.claim_due(T0, T0 + 100) == [
            DueEntry(uid, "held#0", None, owner, None, lapsed=True)
        ]
        assert await storage.claim_due(T0 + 99, T0 + 200) == []
        # No longer bound to the owner: due again at `until` like any claimed entry.
        assert await storage.claim_due(T0 + 100, T0 + 200) == [DueEntry(uid, "held#0", T0 + 100)]
        # A lapsed owner cannot renew (it must register again under a new id).
        assert not await storage.renew_owner(owner, time.time() + 60)
        assert not await storage.renew_owner(f"conformance/unknown-{uuid.uuid4().hex}", time.time() + 60)

    async def test_released_owner_entries_are_claimed_and_renewal_refused(self, storage: Storage) -> None:
        uid = _uid()
        owner, other = (f"conformance/{uuid.uuid4().hex}" for _ in range(2))
        for who in (owner, other):
            assert await storage.renew_owner(who, time.time() + 60, create=True)
        await _apply_at(
            storage,
            uid,
            T0,
            _entries(
                {
                    "x#0": Due(None, owner),
                    "x#1": Due(None, owner),
                    "x#2": Due(T0 + 50, owner),  # a run's deadline, and its owner
                    "x#3": Due(None, other),
                }
            ),
        )
        # Rebinding an entry to another owner removes it from its former owner.
        await _apply_at(storage, uid, T0, _entries({"x#1": Due(None, other)}))
        assert await storage.claim_due(T0 + 49, T0 + 100) == []
        assert await storage.claim_due(T0 + 50, T0 + 100) == [DueEntry(uid, "x#2", T0 + 50, owner)]
        await storage.release_owner(owner)
        await storage.release_owner(f"conformance/unknown-{uuid.uuid4().hex}")  # no error
        assert await storage.claim_due(T0, T0 + 100) == [DueEntry(uid, "x#0", None, owner, None, lapsed=True)]
        assert not await storage.renew_owner(owner, time.time() + 60)
        assert await storage.renew_owner(other, time.time() + 60)
        # Claimed entries were unbound from their owner: due at `until`, not lapsed.
        left = sorted(await _claim_everything(storage), key=lambda e: e.key)
        assert left == [DueEntry(uid, "x#0", T0 + 100), DueEntry(uid, "x#2", T0 + 100)]

    async def test_claim_limit_counts_lapsed_entries(self, storage: Storage) -> None:
        owner = f"conformance/{uuid.uuid4().hex}"
        uid = _uid()
        assert await storage.renew_owner(owner, time.time() - 1, create=True)
        await _apply_at(
            storage,
            uid,
            T0,
            _entries(
                {f"held#{n}": Due(None, owner) for n in range(5)}
                | {f"fire@{n}": Due(T0 + n, None, str(n)) for n in range(5)}
            ),
        )
        batches: list[DueEntry] = []
        for _ in range(10):
            batch = await storage.claim_due(T0 + 10, T0 + 100, limit=3)
            assert len(batch) <= 3
            batches += batch
        assert sorted(_refs(batches)) == sorted(
            [(uid, f"held#{n}") for n in range(5)] + [(uid, f"fire@{n}") for n in range(5)]
        )
        assert {e.key for e in batches if e.lapsed} == {f"held#{n}" for n in range(5)}

    # -- many claimers -----------------------------------------------------------------------------

    async def test_two_storage_objects_never_claim_the_same_entry(
        self, storage_factory: StorageFactory
    ) -> None:
        self._require_shared(storage_factory)
        owner = f"conformance/{uuid.uuid4().hex}"
        expected: set[tuple[str, str]] = set()
        async with storage_factory() as one, storage_factory() as two, storage_factory() as three:
            assert await one.renew_owner(owner, time.time() - 1, create=True)
            for s in range(20):
                uid = _uid()
                keys = [f"fire@{n}" for n in range(10)] + [f"held#{n}" for n in range(5)]
                expected.update((uid, key) for key in keys)

                def write(d: Draft, uid: str = uid) -> None:
                    for n in range(10):
                        d.set_due(f"fire@{n}", Due(T0 + n, None, f"{uid}/{n}"))
                    for n in range(5):
                        d.set_due(f"held#{n}", Due(None, owner))

                await _apply_at((one, two, three)[s % 3], uid, T0, write)

            async def claim(storage: Storage) -> list[tuple[str, str]]:
                mine: list[tuple[str, str]] = []
                for _ in range(len(expected)):  # bounded, should claims not move entries
                    batch = await storage.claim_due(T0 + 100, T0 + 1000, limit=7)
                    if not batch:
                        break
                    mine += _refs(batch)
                    await asyncio.sleep(0)
                return mine

            claimed = await asyncio.gather(claim(one), claim(two), claim(three), claim(one))
        everything = [ref for mine in claimed for ref in mine]
        assert Counter(everything) == dict.fromkeys(expected, 1)

    async def test_sweepers_handle_every_due_entry_once(self, storage_factory: StorageFactory) -> None:
        """Hundreds of sessions, each with an expired ``within`` window, a delayed
        fire that is due and an instance held by an owner that stopped; several
        `Sweeper`s (on as many storage objects when the store is shared) sweep at
        once: every entry is handled exactly once and every instance ends as it
        should."""
        recorder = _Recorder()
        owners = [f"conformance/dead-{n}-{uuid.uuid4().hex[:8]}" for n in range(5)]
        configuration: dict[str, dict[str, Any]] = {
            **_WINDOW,
            "later": {"after": ["go"], "run": "conformance.due.echo"},
            "held": {"after": ["h"], "run": "conformance.due.echo"},
        }
        uids = [_uid() for _ in range(self.sweep_sessions)]
        shared = storage_factory.shared
        async with storage_factory() as storage:
            # Written an hour ago, by the storage's clock: every window has closed
            # and every delayed fire is due. (This process's own timer for each
            # delayed fire sleeps on that stopped clock: only sweepers act.)
            past = FakeClock(time.time() - 3600)
            storage.clock = past
            for n, uid in enumerate(uids):
                manager = TriggerManager(storage, uid, tasks=recorder.registry)
                await manager.update_configuration(configuration)
                await manager.fire("a", {"n": n})
                assert await manager.fire("go", {"n": n, "text": "héllo\n"}, delay=60) == []
                owner = owners[n % len(owners)]
                await _apply_at(storage, uid, past.time(), lambda d: rules.fire(d, "h", {}), _held_by(owner))
            for owner in owners:
                assert await storage.renew_owner(owner, time.time() - 1, create=True)
            storage.clock = SystemClock()
            if shared:
                others = [storage_factory() for _ in range(self.sweepers)]
                for other in others:
                    await other.open()
            else:
                others = [storage] * self.sweepers
            try:
                sweepers = [Sweeper(s, limit=10, concurrency=4, tasks=recorder.registry) for s in others]

                async def sweep(sweeper: Sweeper) -> int:
                    handled = 0
                    for _ in range(3 * len(uids)):  # bounded, should claims not move entries
                        done = await sweeper.run_once()
                        if not done:
                            break
                        handled += done
                    return handled

                handled = await asyncio.gather(*(sweep(s) for s in sweepers))
                for s in set(others):
                    await s.drain(30)
                assert await _claim_everything(storage, time.time() + 3600) == []
            finally:
                if shared:
                    for other in others:
                        await other.aclose()
            entries = 3 * len(uids)
            assert sum(handled) == entries, handled
            counts: Counter[str] = Counter()
            for sweeper in sweepers:
                counts.update(sweeper.counts)
            assert counts == {"expired": len(uids), "delay": len(uids), "lost": len(uids)}, [
                s.counts for s in sweepers
            ]
            if shared:
                assert sum(1 for n in handled if n) > 1, f"one sweeper did all the work: {handled}"
            assert Counter(recorder.runs) == {(uid, "later#0"): 1 for uid in uids}
            for n, uid in enumerate(uids):
                assert recorder.kwargs[uid, "later#0"] == {"go": {"n": n, "text": "héllo\n"}}
                storage.forget(uid)
                state = await storage.load_all(uid)
                window, later, held = (state.instances[f"{t}#0"] for t in ("window", "later", "held"))
                assert window.status is Status.ABANDONED and window.metadata[Meta.REASON] == "expired"
                assert later.status is Status.FINISHED
                assert held.status is Status.FAILED
                assert held.metadata[Meta.EXCEPTION_TYPE] == "atriggers.errors.InstanceLost"
                assert sorted(state.instances) == ["held#0", "later#0", "window#0"]
