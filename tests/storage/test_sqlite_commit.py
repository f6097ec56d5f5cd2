"""The SQLite group commit: what an operation costs in hand-offs and loop
iterations, how callers share batches, and how another connection's write lock
is waited for."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

import atriggers.storage.sqlite_commit as sqlite_commit
from atriggers import Status, StorageError, TriggerManager
from atriggers import _rules as rules
from atriggers.config import parse_configuration
from atriggers.state import Change, Draft, SessionState
from atriggers.storage import SessionFilter, SQLiteStorage

IDLE = {"t": {"after": ["a", "never"], "run": "gc.noop"}}


def hand_offs(storage: SQLiteStorage) -> int:
    assert storage._commit is not None
    return storage._commit.hand_offs


async def test_a_warm_fire_writes_on_the_loop_and_a_read_takes_two_loop_iterations(
    db_path: Path, loop_iterations: Callable[[], AbstractContextManager[list[int]]]
) -> None:
    async with SQLiteStorage(db_path) as storage:
        manager = TriggerManager(storage, "s")
        await manager.update_configuration(IDLE)
        await manager.fire("a", {"i": 0})  # the session is cached from here on
        before = hand_offs(storage)
        for i in range(10):
            await manager.fire("a", {"i": i})
        # A lone write with nothing in the thread costs less written at once
        # than handed off.
        assert hand_offs(storage) - before == 0
        assert (await manager.get_state()).latest_kwargs["a"] == {"i": 9}
        # The storage's share of the loop's iterations: what a fire costs on
        # SQLite beyond what it costs in memory, where nothing is handed off.
        with loop_iterations() as count:
            await storage.load("s")
        # One iteration for the thread's answer, one for the caller to resume:
        # no flush task and no future relaying the answer.
        assert count[0] == 2, count[0]


async def test_writes_that_sync_to_disk_at_commit_are_handed_off(db_path: Path) -> None:
    # synchronous=FULL waits for the disk at every commit: never on the loop.
    async with SQLiteStorage(db_path, synchronous="FULL") as storage:
        manager = TriggerManager(storage, "s")
        await manager.update_configuration(IDLE)
        await manager.fire("a", {"i": 0})
        before = hand_offs(storage)
        for i in range(10):
            await manager.fire("a", {"i": i})
        assert hand_offs(storage) - before == 10


async def test_writes_on_the_loop_keep_the_wal_bounded_by_checkpoints(
    db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The connection never checkpoints at a commit on the loop (that would sync
    # to disk there): every CHECKPOINT_EVERY operations one runs elsewhere, so
    # the WAL does not grow without bound.
    async def wal_after_fires(path: Path) -> tuple[int, int]:
        async with SQLiteStorage(path) as storage:
            manager = TriggerManager(storage, "s")
            await manager.update_configuration(IDLE)
            assert storage._commit is not None
            before, handed = storage._commit.checkpoints, hand_offs(storage)
            for i in range(300):
                await manager.fire("a", {"i": i, "pad": "x" * 2000})
            checkpoints = storage._commit.checkpoints - before
            # (Each ends in the thread, and the write after it may wait for it there.)
            assert hand_offs(storage) - handed <= 2 * checkpoints
            size = os.stat(f"{path}-wal").st_size
        return checkpoints, size

    monkeypatch.setattr(sqlite_commit, "CHECKPOINT_EVERY", 10**9)
    never, unbounded = await wal_after_fires(tmp_path / "never.db")
    monkeypatch.setattr(sqlite_commit, "CHECKPOINT_EVERY", 30)
    checkpoints, bounded = await wal_after_fires(db_path)
    # (None begins while the last one still runs: one may come later than every 30.)
    assert never == 0 and 8 <= checkpoints <= 10, checkpoints
    assert bounded * 3 < unbounded, (bounded, unbounded)


def wal_salts(path: Path) -> bytes:
    """The salts in the WAL's header: new each time the WAL starts over."""
    with open(f"{path}-wal", "rb") as wal:
        return wal.read(32)[16:24]


async def test_writes_go_on_while_a_checkpoint_copies_the_wal_and_the_wal_starts_over_after_it(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Copying the WAL into the database costs about what the writes that filled
    # it did: it runs on a connection of its own, in a thread of its own, while
    # the writes go on, on the loop. Then what they added meanwhile is copied in
    # the writes' thread, with them waiting, so the next write starts the WAL over.
    monkeypatch.setattr(sqlite_commit, "CHECKPOINT_EVERY", 20)
    async with SQLiteStorage(db_path) as storage:
        manager = TriggerManager(storage, "s")
        await manager.update_configuration(IDLE)
        commit = storage._commit
        assert commit is not None
        checkpoint_beside = commit._beside
        assert checkpoint_beside is not None
        let_go = asyncio.Event()

        async def held() -> None:  # (the real checkpoint, once the test lets it go)
            await let_go.wait()
            await checkpoint_beside()

        commit._beside = held
        for i in range(25):  # (the configuration was one write: a checkpoint begins at the 19th fire)
            await manager.fire("a", {"i": i})
        assert commit.checkpoints == 1 and commit._checkpointing is not None
        before, inline = hand_offs(storage), commit.alone
        for i in range(30):
            await manager.fire("a", {"i": i})
        assert (hand_offs(storage), commit.alone) == (before, inline + 30)
        salts, size = wal_salts(db_path), os.stat(f"{db_path}-wal").st_size
        let_go.set()
        await commit.wait_idle()
        assert storage._checkpointer is not None
        for i in range(10):
            await manager.fire("a", {"i": i})
        # Started over: the writes after the checkpoint went to the WAL's start.
        assert wal_salts(db_path) != salts
        assert os.stat(f"{db_path}-wal").st_size == size
        assert (await manager.get_state()).latest_kwargs["a"] == {"i": 9}


async def test_a_checkpoint_never_creates_a_deleted_database_again(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_commit, "CHECKPOINT_EVERY", 5)
    async with SQLiteStorage(db_path) as storage:
        manager = TriggerManager(storage, "s")
        await manager.update_configuration(IDLE)
        for name in os.listdir(db_path.parent):
            os.unlink(db_path.parent / name)
        for i in range(12):  # (refused: past CHECKPOINT_EVERY, a checkpoint is tried)
            with pytest.raises(StorageError, match="deleted or replaced"):
                await manager.fire("a", {"i": i})
        assert storage._commit is not None and storage._commit.checkpoints >= 1
        await storage._commit.wait_idle()
        assert storage._checkpointer is None
    assert not os.listdir(db_path.parent)  # (nothing made again, not even a WAL)


async def test_operations_arriving_during_a_batch_share_the_next(db_path: Path) -> None:
    async with SQLiteStorage(db_path) as storage:
        before = hand_offs(storage)
        await asyncio.gather(*(storage.load(f"s{i}") for i in range(100)))
        # The first goes at once, the 99 others together while it is in the thread.
        assert hand_offs(storage) - before == 2


async def test_a_cancelled_caller_leaves_its_batch_be(db_path: Path) -> None:
    async with SQLiteStorage(db_path) as storage:
        loads = [asyncio.ensure_future(storage.load(f"s{i}")) for i in range(5)]
        await asyncio.sleep(0)  # all submitted: the first batch is in the thread
        loads[0].cancel()
        loads[3].cancel()
        done = await asyncio.gather(*loads, return_exceptions=True)
        assert isinstance(done[0], asyncio.CancelledError)
        assert isinstance(done[3], asyncio.CancelledError)
        assert [state.uid for state in done if not isinstance(state, BaseException)] == ["s1", "s2", "s4"]
        assert (await asyncio.wait_for(storage.load("later"), timeout=5)).uid == "later"


async def test_closing_waits_for_the_batch_in_the_thread(db_path: Path) -> None:
    storage = SQLiteStorage(db_path)
    await storage.open()
    manager = TriggerManager(storage, "s")
    await manager.update_configuration(IDLE)
    fires = [asyncio.ensure_future(manager.fire("a", {"i": i})) for i in range(20)]
    await asyncio.sleep(0)
    await storage.aclose()
    await asyncio.gather(*fires)
    async with SQLiteStorage(db_path) as again:
        assert (await TriggerManager(again, "s").get_state()).version == 21


@contextmanager
def write_lock_held(path: Path) -> Iterator[sqlite3.Connection]:
    """Another connection (as another process would) holding the write lock."""
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield other
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()


@contextmanager
def pauses_until_released(
    path: Path, monkeypatch: pytest.MonkeyPatch, release_at: int
) -> Iterator[list[float]]:
    """The pauses a writer makes while another connection holds the write lock
    (recorded, not slept; in aiosqlite's thread, where the batch waits). The
    other connection lets go during pause number `release_at`."""
    pauses: list[float] = []
    with write_lock_held(path) as other:

        def pause(seconds: float) -> None:
            pauses.append(seconds)
            if len(pauses) == release_at:
                other.execute("COMMIT")

        monkeypatch.setattr(sqlite_commit, "sleep", pause)
        yield pauses
    monkeypatch.undo()


async def test_a_writer_finding_the_lock_held_looks_again_after_a_short_pause(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SQLiteStorage(db_path) as storage:
        manager = TriggerManager(storage, "s")
        await manager.update_configuration(IDLE)
        with pauses_until_released(db_path, monkeypatch, release_at=2) as pauses:
            await manager.fire("a", {"i": 1})
        # SQLite's own busy handler would have slept 1 ms, then 2 ms.
        assert len(pauses) == 2
        assert pauses[0] <= 1.5 * sqlite_commit.FIRST_PAUSE
        assert pauses[1] <= 3 * sqlite_commit.FIRST_PAUSE
        assert (await manager.get_state()).latest_kwargs["a"] == {"i": 1}


async def test_the_lock_is_waited_for_at_most_timeout_seconds(db_path: Path) -> None:
    async with SQLiteStorage(db_path, timeout=0.0) as storage:
        manager = TriggerManager(storage, "s")
        await manager.update_configuration(IDLE)
        with write_lock_held(db_path), pytest.raises(StorageError, match="locked"):
            await manager.fire("a", {"i": 1})
        await manager.fire("a", {"i": 2})
        assert (await manager.get_state()).latest_kwargs["a"] == {"i": 2}


async def test_pauses_grow_to_a_bound_while_the_lock_stays_held(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SQLiteStorage(db_path, timeout=3600) as storage:
        await storage.load("s")
        with pauses_until_released(db_path, monkeypatch, release_at=30) as pauses:
            await storage.claim_due(0.0, 1.0)
        assert len(pauses) == 30
        assert max(pauses) <= 1.5 * sqlite_commit.LONGEST_PAUSE
        assert min(pauses[-10:]) >= 0.5 * sqlite_commit.LONGEST_PAUSE


# -- what a write rewrites ---------------------------------------------------------------


def _kwargs_only(state: SessionState, value: int) -> Change:
    """A change to t#0's stored body that keeps its status (as recording kwargs does)."""
    draft = Draft(state)
    draft.edit("t#0").metadata["note"] = value
    return draft.changes()


async def _configured(storage: SQLiteStorage) -> SessionState:
    draft = Draft(SessionState(uid="s"))
    rules.configure(draft, parse_configuration(IDLE))
    rules.fire(draft, "a", {"i": 0})
    change = draft.changes()
    await storage.store("s", 0, change)
    return change.state


async def test_a_change_keeping_every_status_rewrites_only_instance_bodies(db_path: Path) -> None:
    async with SQLiteStorage(db_path) as storage:
        state = await _configured(storage)
        change = _kwargs_only(state, 1)
        assert not change.reindex
        await storage.store("s", state.version, change)
        stored = await storage.load_all("s")
        assert stored.instances["t#0"].metadata["note"] == 1
        assert stored.instances["t#0"].status is Status.UNSTARTED
        assert (await storage.list_summaries(SessionFilter(waiting=True))).summaries[0].uid == "s"


async def test_a_change_wrongly_claiming_no_status_moved_is_still_written_whole(db_path: Path) -> None:
    """The body-only update finds the row with another status: the whole row is
    written after all (what the change says is what is stored)."""
    async with SQLiteStorage(db_path) as storage:
        state = await _configured(storage)
        draft = Draft(state)
        draft.set_status(draft.edit("t#0"), Status.FAILED)
        change = dataclasses.replace(draft.changes(), reindex=False)
        await storage.store("s", state.version, change)
        stored = await storage.load("s", ["t#0"])
        assert stored.instances["t#0"].status is Status.FAILED
        assert (await storage.count_sessions()).failed == 1
        assert not (await storage.list_summaries(SessionFilter(waiting=True))).summaries


def wal_frames(path: Path) -> float:
    """Pages written to the WAL so far (each frame: a 24-byte header and a page)."""
    return (os.path.getsize(f"{path}-wal") - 32) / (4096 + 24)


async def test_a_fire_recording_kwargs_writes_two_pages(db_path: Path) -> None:
    """The session's row and the trigger's: an upsert leaves the trigger table's
    primary-key index alone (INSERT OR REPLACE rewrote it, and every index of a
    replaced instance)."""
    async with SQLiteStorage(db_path) as storage:
        await storage._call(storage._require(), lambda db: db.execute("PRAGMA wal_autocheckpoint = 0"))
        manager = TriggerManager(storage, "s")
        await manager.update_configuration(IDLE)
        await manager.fire("a", {"i": 0})
        before = wal_frames(db_path)
        for i in range(10):
            await manager.fire("a", {"i": i})
        assert wal_frames(db_path) - before <= 2 * 10
