"""SPEC's concurrency guarantees: no fire lost, each instance dispatched exactly once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from atriggers import ConcurrencyError, Status, TaskContext, TriggerManager, task
from atriggers.state import Change
from atriggers.storage import MemoryStorage, SQLiteStorage, VersionConflict, open_storage

runs: Counter[str] = Counter()


@task("cc.count")
async def count(context: TaskContext) -> dict[str, Any]:
    runs[f"{context.uid}/{context.instance_name}"] += 1
    await asyncio.sleep(0)
    return {"n": context.trigger_kwargs["tick"]["n"]}


@task("cc.ok")
async def ok(context: TaskContext) -> dict[str, Any]:
    return {}


EVERY_TICK = {"t": {"after": [], "andEvery": "tick", "run": "cc.count"}}


@pytest.mark.parametrize("storage_kind", ["sqlite", "memory"])
async def test_hundreds_of_concurrent_fires_on_one_session(db_path: Path, storage_kind: str) -> None:
    storage = SQLiteStorage(db_path) if storage_kind == "sqlite" else MemoryStorage()
    async with storage:
        manager = TriggerManager(storage, f"many-{storage_kind}")
        await manager.update_configuration(EVERY_TICK)
        results = await asyncio.gather(
            *(TriggerManager(storage, manager.uid).fire("tick", {"n": n}) for n in range(300))
        )
        await manager.join()
        await asyncio.gather(*(TriggerManager(storage, manager.uid).join() for _ in range(1)))
        await storage.drain()
        state = await manager.get_state()
    assert sum(len(r) for r in results) == 300
    assert len(state.instances) == 300
    assert {i.status for i in state.instances.values()} == {Status.FINISHED}
    assert sorted(i.result["n"] for i in state.instances.values() if i.result) == list(range(300))
    ours = {k: v for k, v in runs.items() if k.startswith(f"{manager.uid}/")}
    assert len(ours) == 300 and set(ours.values()) == {1}


async def test_concurrent_fires_across_sessions_share_hand_offs(db_path: Path) -> None:
    async with SQLiteStorage(db_path) as storage:
        assert storage._commit is not None
        managers = [TriggerManager(storage, f"s{n}") for n in range(200)]
        await asyncio.gather(
            *(m.update_configuration({"t": {"after": ["a", "b"], "run": "cc.count"}}) for m in managers)
        )
        before = storage._commit.hand_offs
        await asyncio.gather(*(m.fire("a") for m in managers))
        # 200 fires, every snapshot cached: far fewer thread hand-offs than fires.
        assert storage._commit.hand_offs - before < 50, storage._commit.hand_offs - before


async def test_no_lock_or_cache_entry_outlives_its_sessions(db_path: Path) -> None:
    async with SQLiteStorage(db_path, cache_size=100) as storage:
        await asyncio.gather(*(TriggerManager(storage, f"u{n}").fire("x") for n in range(1000)))
        assert len(storage.locks) == 0
        assert len(storage.cache) == 100


async def test_stale_cache_in_another_process_is_caught_by_version(db_path: Path) -> None:
    """Two storage objects on one file behave like two processes."""
    async with SQLiteStorage(db_path) as first, SQLiteStorage(db_path) as second:
        one, two = TriggerManager(first, "shared"), TriggerManager(second, "shared")
        await one.update_configuration({"t": {"after": ["a", "b"], "run": "cc.ok"}})
        await one.fire("x")  # first caches the session
        await two.fire("a", {"from": "two"})  # second writes: first's cache is stale
        scheduled = await one.fire("b", {"from": "one"})  # conflict -> re-read -> re-apply
        await one.join()
        assert [i.name for i in scheduled] == ["t#0"]
        state = await two.get_state()
        assert state.instances["t#0"].kwargs == {"a": {"from": "two"}, "b": {"from": "one"}}
        assert state.instances["t#0"].status is Status.FINISHED
        assert set(state.latest_kwargs) == {"x", "a", "b", "t"}


async def test_stale_cache_never_refuses_a_valid_repair(db_path: Path) -> None:
    async with SQLiteStorage(db_path) as first, SQLiteStorage(db_path) as second:
        one, two = TriggerManager(first, "repair"), TriggerManager(second, "repair")
        await one.update_configuration({"t": {"after": ["a"], "run": "cc.count", "using": "nowhere"}})
        await one.fire("x")  # cached by first: no instance yet
        await two.fire("a")  # second creates t#0, dispatch fails -> failed
        clone = await one.replay_failed_instance("t#0")  # first's cache doesn't know t#0
        assert clone.name == "t#1"


async def test_version_conflict_writes_nothing(db_path: Path) -> None:
    async with SQLiteStorage(db_path) as storage:
        manager = TriggerManager(storage, "cas")
        await manager.fire("a", {"v": 1})
        state = await storage.load("cas")
        stale = Change(
            tasks=None,
            triggers={"a": {"v": 99}},
            instance_counts=None,
            instances=(),
            state=state.__class__(uid="cas", version=state.version),
        )  # expects version - 1
        with pytest.raises(VersionConflict):
            await storage.store("cas", state.version - 1, stale)
        after = await storage.load_all("cas")
        assert after.version == state.version and after.latest_kwargs["a"] == {"v": 1}


async def test_endless_conflicts_raise_concurrency_error_with_nothing_written() -> None:
    class Contended(MemoryStorage):
        async def store(self, uid: str, expected_version: int, change: Change) -> None:
            # Another writer always gets there first.
            rival = await self.load(uid)
            await super().store(
                uid,
                rival.version,
                Change(None, {"rival": {}}, None, (), rival.__class__(uid=uid, version=rival.version + 1)),
            )
            await super().store(uid, expected_version, change)

    async with Contended() as storage:
        manager = TriggerManager(storage, "contended")
        manager.max_attempts = 3
        with pytest.raises(ConcurrencyError, match="gave up after 3 attempts"):
            await manager.fire("mine", {"v": 1})
        state = await manager.get_state()
        assert "mine" not in state.latest_kwargs and state.version == 3


async def test_cancelled_fire_still_dispatches_what_it_stored(db_path: Path) -> None:
    callers: list[asyncio.Task[Any]] = []

    class CancelCallerOnWrite(SQLiteStorage):
        """Cancels the caller (a web client going away) once its fire's write is submitted."""

        async def store_or_reapply(self, uid: str, expected: int, change: Change, reapply: Any) -> Any:
            if change.triggers.get("tick") is not None:
                for caller in callers:
                    caller.cancel()
            return await super().store_or_reapply(uid, expected, change, reapply)

    async with CancelCallerOnWrite(db_path) as storage:
        manager = TriggerManager(storage, "cancelled")
        await manager.update_configuration(EVERY_TICK)

        async def caller() -> None:
            # Under an eager task factory the fire would otherwise reach its
            # write inside create_task, before `callers` knows this task.
            await asyncio.sleep(0)
            await manager.fire("tick", {"n": 0})

        fire = asyncio.create_task(caller())
        callers.append(fire)
        with pytest.raises(asyncio.CancelledError):
            await fire
        await storage.drain()
        state = await manager.get_state()
    # The fire was stored, and what it scheduled was dispatched and ran.
    assert state.latest_kwargs["tick"] == {"n": 0}
    assert [(i.name, i.status) for i in state.instances.values()] == [("t#0", Status.FINISHED)]


@pytest.mark.slow
def test_several_processes_fire_into_one_sqlite_session(tmp_path: Path) -> None:
    db_path, runs_file = tmp_path / "shared.db", tmp_path / "runs.txt"
    setup = (
        "import asyncio\n"
        "from atriggers import TriggerManager\n"
        "from atriggers.storage import SQLiteStorage\n"
        "async def main():\n"
        f"    async with SQLiteStorage({str(db_path)!r}) as s:\n"
        "        await TriggerManager(s, 'shared').update_configuration("
        "{'t': {'after': [], 'andEvery': 'tick', 'run': 'worker.record'}})\n"
        "asyncio.run(main())\n"
    )
    subprocess.run([sys.executable, "-c", setup], check=True, timeout=60)
    worker = Path(__file__).with_name("fire_worker.py")
    processes = [
        subprocess.Popen([sys.executable, str(worker), str(db_path), "shared", "60", str(runs_file)])
        for _ in range(4)
    ]
    for process in processes:
        assert process.wait(timeout=120) == 0

    async def read() -> Any:
        async with SQLiteStorage(db_path) as storage:
            return await TriggerManager(storage, "shared").get_state()

    state = asyncio.run(read())
    assert len(state.instances) == 240  # no fire lost
    assert {i.status for i in state.instances.values()} == {Status.FINISHED}
    ran = Counter(runs_file.read_text().split())
    assert len(ran) == 240 and set(ran.values()) == {1}  # each instance ran exactly once
    fired = sorted((i.kwargs["tick"]["pid"], i.kwargs["tick"]["n"]) for i in state.instances.values())
    assert len(set(fired)) == 240


@pytest.fixture
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where the processes of a multi-process test meet: an SQLite file, a Redis
    server or a PostgreSQL cluster (each test in a store of its own)."""
    kind = request.param
    if kind == "sqlite":
        yield str(tmp_path / "shared.db")
    elif kind == "postgres":
        cluster = request.getfixturevalue("postgres_cluster")
        yield f"{cluster.url}?schema=cc{uuid.uuid4().hex[:10]}"
    else:
        pytest.importorskip("redis", reason="the redis extra is not installed")
        sys.path.insert(0, str(Path(__file__).with_name("faults")))
        from fault_helpers import RedisProcess

        server = RedisProcess(tmp_path)
        server.start()
        try:
            yield f"{server.url}?prefix=cc{uuid.uuid4().hex[:10]}:"
        finally:
            server.stop()


@pytest.mark.slow
@pytest.mark.parametrize("shared_store", ["sqlite", "redis", "postgres"], indirect=True)
def test_four_processes_with_250_concurrent_fires_each(shared_store: str, tmp_path: Path) -> None:
    """4 OS processes fire 250 times each into one session, all 250 of a process
    in flight at once: no fire is lost and each instance runs exactly once."""
    runs_file = tmp_path / "runs.txt"
    setup = (
        "import asyncio\n"
        "from atriggers import TriggerManager\n"
        "from atriggers.storage import SQLiteStorage, open_storage\n"
        f"where = {shared_store!r}\n"
        "async def main():\n"
        "    async with (open_storage(where) if '://' in where else SQLiteStorage(where)) as s:\n"
        "        await TriggerManager(s, 'shared').update_configuration("
        "{'t': {'after': [], 'andEvery': 'tick', 'run': 'worker.record'}})\n"
        "asyncio.run(main())\n"
    )
    subprocess.run([sys.executable, "-c", setup], check=True, timeout=60)
    worker = Path(__file__).with_name("fire_worker.py")
    processes = [
        subprocess.Popen([sys.executable, str(worker), shared_store, "shared", "250", str(runs_file), "250"])
        for _ in range(4)
    ]
    for process in processes:
        assert process.wait(timeout=240) == 0

    async def read() -> Any:
        storage = open_storage(shared_store) if "://" in shared_store else SQLiteStorage(shared_store)
        async with storage:
            return await TriggerManager(storage, "shared").get_state()

    state = asyncio.run(read())
    assert len(state.instances) == 1000  # no fire lost
    assert {i.status for i in state.instances.values()} == {Status.FINISHED}
    ran = Counter(runs_file.read_text().split())
    assert len(ran) == 1000 and set(ran.values()) == {1}  # each instance ran exactly once
    fired = {(i.kwargs["tick"]["pid"], i.kwargs["tick"]["n"]) for i in state.instances.values()}
    assert len(fired) == 1000 and len({pid for pid, _ in fired}) == 4


async def test_an_uncached_session_costs_one_transaction_per_fire(db_path: Path) -> None:
    async with SQLiteStorage(db_path) as first:
        manager = TriggerManager(first, "cold")
        await manager.update_configuration({"t": {"after": ["a", "b", "c"], "run": "cc.ok"}})
        await manager.fire("a", {"v": 1})
    async with SQLiteStorage(db_path) as second:
        commit = second._commit
        assert commit is not None
        before = commit.hand_offs + commit.alone
        manager = TriggerManager(second, "cold")
        # Nothing cached: the fire is written as if the session were new, and
        # re-applied to the stored session inside the same transaction.
        assert await manager.fire("b", {"v": 2}) == []
        assert commit.hand_offs + commit.alone - before == 1
        assert [i.name for i in await manager.fire("c", {"v": 3})] == ["t#0"]
        await manager.join()
        state = await manager.get_state()
        assert state.instances["t#0"].kwargs == {"a": {"v": 1}, "b": {"v": 2}, "c": {"v": 3}}
        assert state.instances["t#0"].status is Status.FINISHED


async def test_reapplied_operation_sees_the_resolved_instance_it_names(db_path: Path) -> None:
    class Racy(SQLiteStorage):
        """Lets another process write between this one's read and its write."""

        rival: SQLiteStorage | None = None

        async def read(self, uid: str, names: Any = (), *, fresh: bool = False) -> Any:
            state = await super().read(uid, names, fresh=fresh)
            if self.rival is not None:
                rival, self.rival = self.rival, None
                await TriggerManager(rival, uid).fire("x")
            return state

    async with SQLiteStorage(db_path) as other, Racy(db_path) as racy:
        manager = TriggerManager(racy, "named")
        await manager.update_configuration({"t": {"after": ["a"], "run": "cc.ok"}})
        await manager.fire("a")
        await manager.join()  # t#0 finished: resolved, out of the working view
        racy.rival = other
        updated = await manager.update_instance_metadata("t#0", {"note": 1})  # re-applied in SQLite
        assert updated.metadata["note"] == 1
        stored = (await manager.get_state()).instances["t#0"]
        assert stored.status is Status.FINISHED and stored.metadata["note"] == 1
        assert "x" in (await manager.get_state()).latest_kwargs


async def test_an_operation_runs_as_its_own_task_not_the_callers() -> None:
    """A storage's timeout scope (``asyncio.timeout``) bounds the operation: when it
    expires, the operation fails with it and the caller hears the failure; the
    caller's own task is never cancelled by it, however the operation was started."""
    seen: list[asyncio.Task[Any] | None] = []

    class SlowOnce(MemoryStorage):
        async def store_or_reapply(self, uid: str, expected: int, change: Change, reapply: Any) -> Any:
            seen.append(asyncio.current_task())
            if len(seen) == 1:
                async with asyncio.timeout(0.01):
                    await asyncio.sleep(5)
            return await super().store_or_reapply(uid, expected, change, reapply)

    async with SlowOnce() as storage:
        manager = TriggerManager(storage, "own-task")
        caller = asyncio.current_task()
        with pytest.raises(TimeoutError):
            await manager.fire("tick", {"n": 0})
        assert caller is not None and not caller.cancelling()
        await manager.fire("tick", {"n": 1})
        state = await manager.get_state()
    assert seen[0] is not None and seen[0] is not caller
    assert state.latest_kwargs["tick"] == {"n": 1}


async def test_join_waits_for_the_operation_of_a_cancelled_caller() -> None:
    """A caller cancelled while its fire is being written goes away at once; the
    fire goes on, and `join` waits until what it scheduled has run."""
    release = asyncio.Event()
    writing = asyncio.Event()

    class HeldWrite(MemoryStorage):
        async def store_or_reapply(self, uid: str, expected: int, change: Change, reapply: Any) -> Any:
            if change.triggers.get("tick") is not None and not release.is_set():
                writing.set()
                await release.wait()
            return await super().store_or_reapply(uid, expected, change, reapply)

    async with HeldWrite() as storage:
        manager = TriggerManager(storage, "held")
        await manager.update_configuration(EVERY_TICK)
        caller = asyncio.create_task(manager.fire("tick", {"n": 0}))
        await writing.wait()
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        joined = asyncio.create_task(manager.join())
        await asyncio.sleep(0.01)
        assert not joined.done(), "join returned while the fire was still being written"
        release.set()
        await asyncio.wait_for(joined, 5)
        state = await manager.get_state()
    assert [(i.name, i.status) for i in state.instances.values()] == [("t#0", Status.FINISHED)]
