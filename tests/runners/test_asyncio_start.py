"""The asyncio runner starts an instance in the write that schedules it, when it
has a free slot: one write fewer per run, the same guarantees. Real SQLite files."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from atriggers import Status, TaskContext, TaskInstance, TriggerManager, task
from atriggers.errors import StorageError
from atriggers.runners import AsyncioRunner, BaseRunner, register_runner, unregister_runner
from atriggers.state import Change
from atriggers.storage import SQLiteStorage
from atriggers.storage.base import Reapply

gates: dict[str, asyncio.Event] = {}


@task("start.gated")
async def gated(context: TaskContext) -> dict[str, Any]:
    await gates[context.uid].wait()
    return {"done": context.instance_name}


EVERY = {"t": {"after": [], "andEvery": "go", "run": "start.gated", "using": "one-slot"}}


@pytest.fixture
def one_slot() -> Iterator[AsyncioRunner]:
    runner = register_runner(AsyncioRunner(max_concurrency=1), "one-slot")
    yield runner
    unregister_runner("one-slot")


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    async with SQLiteStorage(tmp_path / "start.db") as opened:
        yield opened


async def gated_manager(storage: SQLiteStorage, uid: str) -> tuple[TriggerManager, asyncio.Event]:
    gate = gates[uid] = asyncio.Event()
    manager = TriggerManager(storage, uid)
    await manager.update_configuration(EVERY)
    return manager, gate


async def stored(storage: SQLiteStorage, uid: str) -> dict[str, Status]:
    storage.forget(uid)  # what the file holds, not this process's cache
    state = await storage.load_all(uid)
    return {name: i.status for name, i in state.instances.items()}


async def until_finished(storage: SQLiteStorage, uid: str, name: str = "t#0") -> dict[str, Status]:
    """What the file holds once `name` finished (or after 5 s, for the caller's
    assertion to tell): a run this process picks up on its own, not via `join`."""
    for _ in range(100):
        found = await stored(storage, uid)
        if found.get(name) is Status.FINISHED:
            break
        await asyncio.sleep(0.05)
    return found


def slot_free(runner: AsyncioRunner) -> bool:
    """Whether this loop has a free slot on `runner` (taken and given back)."""
    slots = runner.slots(asyncio.get_running_loop())
    free = slots.take_now()
    if free:
        slots.give_back()
    return free


async def version(storage: SQLiteStorage, uid: str) -> int:
    storage.forget(uid)
    return (await storage.load_all(uid)).version


async def test_a_run_is_stored_running_by_the_write_that_schedules_it(
    storage: SQLiteStorage, one_slot: AsyncioRunner
) -> None:
    manager, gate = await gated_manager(storage, "one-write")
    before = await version(storage, "one-write")
    scheduled = await manager.fire("go", {"n": 1})
    # The fire hands out the instance as it scheduled it ...
    assert [(i.name, i.status) for i in scheduled] == [("t#0", Status.SCHEDULED)]
    # ... and its one write stored it running, held by this process, with a run token.
    assert await version(storage, "one-write") == before + 1
    running = (await storage.load_all("one-write")).instances["t#0"]
    assert running.status is Status.RUNNING
    assert running.owner == storage.lease.owner and running.metadata["token"]
    assert running.metadata["actualKwargs"] == {"go": {"n": 1}}
    stamps = running.timestamps
    assert stamps["scheduled"] == stamps["running"]
    gate.set()
    await manager.join()
    # Two writes per run in all: the fire, and the outcome.
    assert await version(storage, "one-write") == before + 2
    assert await stored(storage, "one-write") == {"t#0": Status.FINISHED}


async def test_runs_past_the_free_slots_wait_scheduled_and_the_slots_come_back(
    storage: SQLiteStorage, one_slot: AsyncioRunner
) -> None:
    manager, gate = await gated_manager(storage, "slots")
    await manager.fire("go")
    await manager.fire("go")
    # One slot: the second waits its turn, scheduled (and starts with a write of its own).
    assert await stored(storage, "slots") == {"t#0": Status.RUNNING, "t#1": Status.SCHEDULED}
    gate.set()
    await manager.join()
    assert await stored(storage, "slots") == {"t#0": Status.FINISHED, "t#1": Status.FINISHED}
    # Every slot was given back: the next run starts in its fire's write again.
    gate.clear()
    await manager.fire("go")
    assert (await stored(storage, "slots"))["t#2"] is Status.RUNNING
    gate.set()
    await manager.join()


async def test_a_conflict_gives_back_the_slot_its_lost_attempt_took(
    tmp_path: Path, storage: SQLiteStorage, one_slot: AsyncioRunner
) -> None:
    manager, gate = await gated_manager(storage, "conflict")
    await manager.fire("unrelated")  # this process's cache now holds the session
    # Another process writes: the next fire here loses its compare-and-swap and is
    # re-applied (in SQLite's thread, under its write lock) to the newer state.
    async with SQLiteStorage(tmp_path / "start.db") as other:
        await TriggerManager(other, "conflict").fire("elsewhere", {"x": 1})
    [scheduled] = await manager.fire("go")
    state = await storage.load_all("conflict")
    assert state.latest_kwargs["elsewhere"] == {"x": 1}  # nothing of the other write lost
    gate.set()
    await manager.join()
    assert await stored(storage, "conflict") == {scheduled.name: Status.FINISHED}
    # The slot the lost attempt took was given back: the next run starts at once.
    gate.clear()
    await manager.fire("go")
    assert (await stored(storage, "conflict"))["t#1"] is Status.RUNNING
    gate.set()
    await manager.join()
    assert await stored(storage, "conflict") == {"t#0": Status.FINISHED, "t#1": Status.FINISHED}


class LostReply(SQLiteStorage):
    """A SQLite storage whose next write lands but reports a failure (a reply
    lost on the way back)."""

    lose_next = False

    async def store_or_reapply(
        self, uid: str, expected_version: int, change: Change, reapply: Reapply | None
    ) -> Change | None:
        written = await super().store_or_reapply(uid, expected_version, change, reapply)
        if self.lose_next:
            self.lose_next = False
            raise StorageError("the reply to a write that landed was lost")
        return written


async def test_a_run_started_by_a_write_whose_reply_was_lost_still_runs(
    tmp_path: Path, one_slot: AsyncioRunner
) -> None:
    async with LostReply(tmp_path / "lost.db") as storage:
        manager, gate = await gated_manager(storage, "lost-reply")
        gate.set()
        storage.lose_next = True
        with pytest.raises(StorageError):
            await manager.fire("go", {"n": 1})
        # The fire landed with its instance stored running: once storage answers,
        # this process finds its run there and runs it (nobody else would, while
        # its lease holds the instance).
        await until_finished(storage, "lost-reply")
        state = await storage.load_all("lost-reply")
        assert state.instances["t#0"].status is Status.FINISHED, state.debug_repr()
        assert state.instances["t#0"].result == {"done": "t#0"}


async def test_a_new_process_first_fire_into_a_stored_session_holds_its_run(
    tmp_path: Path, one_slot: AsyncioRunner
) -> None:
    async with SQLiteStorage(tmp_path / "cold.db") as first:
        await gated_manager(first, "cold")
    # A process that has registered no lease yet, with nothing cached: its fire is
    # first applied to a guessed empty session, then re-applied to the stored one
    # inside the write. The instance it places must still be held by its lease.
    async with SQLiteStorage(tmp_path / "cold.db") as storage:
        assert storage.lease.current() is None
        manager = TriggerManager(storage, "cold")
        await manager.fire("go")
        running = (await storage.load_all("cold")).instances["t#0"]
        assert running.status is Status.RUNNING
        assert running.owner is not None and running.owner == storage.lease.current()
        gates["cold"].set()
        await manager.join()


class OwnWay(AsyncioRunner):
    """A subclass that dispatches its own way: it gets scheduled instances."""

    seen: list[Status]

    async def run(self, manager: TriggerManager, instance: TaskInstance) -> None:
        self.seen.append((await manager.get_instance(instance.name)).status)
        manager.track(asyncio.create_task(manager.run_instance(instance.name)))


async def test_a_subclass_with_a_run_of_its_own_gets_instances_scheduled(storage: SQLiteStorage) -> None:
    runner = register_runner(OwnWay(), "own-way")
    runner.seen = []
    try:
        gates["own"] = asyncio.Event()
        gates["own"].set()
        manager = TriggerManager(storage, "own")
        await manager.update_configuration({"t": {**EVERY["t"], "using": "own-way"}})
        before = await version(storage, "own")
        await manager.fire("go")
        await manager.join()
    finally:
        unregister_runner("own-way")
    assert runner.seen == [Status.SCHEDULED]
    assert await stored(storage, "own") == {"t#0": Status.FINISHED}
    assert await version(storage, "own") == before + 3  # scheduled, running, finished


async def test_a_lost_reply_to_a_write_reapplied_without_a_free_slot_still_runs(
    tmp_path: Path, one_slot: AsyncioRunner
) -> None:
    async with LostReply(tmp_path / "lost.db") as storage:
        manager, gate = await gated_manager(storage, "reapplied")
        gate.set()
        await manager.fire("unrelated")  # this process's cache holds the session
        async with SQLiteStorage(tmp_path / "lost.db") as other:
            await TriggerManager(other, "reapplied").fire("elsewhere", {"x": 1})
        # The first attempt takes the only slot and starts t#0; the write conflicts
        # and is re-applied to the newer state with no slot free, so it stores t#0
        # scheduled; then the reply is lost. This process must still run it.
        storage.lose_next = True
        with pytest.raises(StorageError):
            await manager.fire("go")
        assert (await until_finished(storage, "reapplied"))["t#0"] is Status.FINISHED
        assert slot_free(one_slot)  # and the slot is free again


async def test_a_run_waiting_for_a_slot_can_be_cancelled_as_the_slot_comes_free(
    one_slot: AsyncioRunner,
) -> None:
    slots = one_slot.slots(asyncio.get_running_loop())
    await slots.take()
    waiting = asyncio.ensure_future(slots.take())
    await asyncio.sleep(0)  # it waits for the slot
    waiting.cancel()
    slots.give_back()  # the run holding it ends in the same turn of the loop
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert slots.take_now() and not slots.take_now()  # one slot, free, not lost
    slots.give_back()


class CancelsItsRuns(TriggerManager):
    """Cancels each run the moment it is dispatched, before the run's task has
    taken a step (as a shutdown that cancels what started meanwhile)."""

    async def post_fire(self, trigger_name: str, tasks_scheduled: list[TaskInstance]) -> None:
        for run in list(self._inflight):
            if run.get_name().startswith(f"atriggers {self.uid} "):
                run.cancel()


async def test_a_run_cancelled_before_its_first_step_gives_its_slot_back(
    storage: SQLiteStorage, one_slot: AsyncioRunner
) -> None:
    gates["cancelled"] = asyncio.Event()
    manager = CancelsItsRuns(storage, "cancelled")
    await manager.update_configuration(EVERY)
    await manager.fire("go")
    await manager.join()
    # The instance stays held by this process (recovered as lost if it stops),
    # or, when tasks start eagerly, its body was cancelled and it failed; either
    # way the slot it was started in is free for the next run.
    assert (await stored(storage, "cancelled"))["t#0"] in (Status.RUNNING, Status.FAILED)
    assert slot_free(one_slot)


class Elsewhere(BaseRunner):
    """Hands instances out of the process (as a broker would); records them."""

    name = "elsewhere"

    def __init__(self) -> None:
        self.sent: list[TaskInstance] = []

    async def run(self, manager: TriggerManager, instance: TaskInstance) -> None:
        self.sent.append(await manager.get_instance(instance.name))


@task("start.fails")
async def fails(context: TaskContext) -> dict[str, Any]:
    raise RuntimeError("boom")


async def test_a_replay_sent_to_another_runner_carries_no_start(storage: SQLiteStorage) -> None:
    elsewhere = register_runner(Elsewhere())
    try:
        manager = TriggerManager(storage, "repair")
        await manager.update_configuration({"t": {"after": ["go"], "run": "start.fails"}})
        await manager.fire("go")
        await manager.join()
        await manager.apply_repairs({"t#0": "replay"}, runner="elsewhere")
    finally:
        unregister_runner("elsewhere")
    [clone] = elsewhere.sent
    assert clone.status is Status.SCHEDULED and clone.runner == "elsewhere"
    assert "running" not in clone.timestamps and "token" not in clone.metadata
    assert "actualKwargs" not in clone.metadata and clone.owner is None
