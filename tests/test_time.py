"""Deadlines, windows, delays, cooldowns and fencing, on a clock the tests move."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from atriggers import InstanceLost, Status, Sweeper, TaskContext, TriggerManager, task
from atriggers.clock import FakeClock, from_iso
from atriggers.runners import AsyncioRunner, BaseRunner, register_runner
from atriggers.runners.base import DEFAULT_START_WITHIN, RunnerRegistry
from atriggers.runners.base import runners as default_runners
from atriggers.storage import MemoryStorage, SQLiteStorage, Storage

LOST = "atriggers.errors.InstanceLost"
EXCEEDED = "atriggers.errors.MaxRetriesExceeded"
runs: list[str] = []
gate = asyncio.Event()


@task("time.ok")
async def ok(context: TaskContext) -> dict[str, Any]:
    runs.append(context.instance_name)
    return {"from": context.instance_name}


@task("time.hang")
async def hang(context: TaskContext) -> dict[str, Any]:
    runs.append(context.instance_name)
    await asyncio.Event().wait()
    return {}


@task("time.beating")
async def beating(context: TaskContext) -> dict[str, Any]:
    runs.append(context.instance_name)
    for _ in range(3):
        await gate.wait()
        gate.clear()
        await context.heartbeat()
    return {"beats": 3}


@task("time.retry_once", max_retries=3)
async def retry_once(context: TaskContext) -> dict[str, Any]:
    runs.append(context.instance_name)
    if context.instance.depth == 0:
        raise context.retry(RuntimeError("not yet"), cooldown=600)
    return {"depth": context.instance.depth}


@task("time.lose_twice", max_retries=1)
async def lose_twice(context: TaskContext) -> dict[str, Any]:
    runs.append(context.instance_name)
    await asyncio.Event().wait()
    return {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    global gate
    runs.clear()
    gate = asyncio.Event()  # bound to each test's own loop


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "sqlite"])
async def storage(request: pytest.FixtureRequest, clock: FakeClock, tmp_path: Path) -> AsyncIterator[Storage]:
    store: Storage
    if request.param == "memory":
        store = MemoryStorage(clock=clock, close_timeout=1)
    else:
        store = SQLiteStorage(tmp_path / "time.db", clock=clock, close_timeout=1)
    async with store:
        yield store


async def settle() -> None:
    """Let runs started by a clock move reach storage (SQLite answers from a thread)."""
    for _ in range(5):
        await asyncio.sleep(0.01)


# -- timeout and fencing ------------------------------------------------------------------


async def test_a_run_past_its_timeout_is_lost_and_nothing_cascades(
    storage: Storage, clock: FakeClock
) -> None:
    manager = TriggerManager(storage, "timeout")
    await manager.update_configuration(
        {
            "t_hang": {"after": ["go"], "run": "time.hang", "timeout": 5},
            "t_next": {"after": ["t_hang"], "run": "time.ok"},
        }
    )
    await manager.fire("go")
    await settle()
    running = await manager.get_instance("t_hang#0")
    assert running.status is Status.RUNNING
    assert from_iso(running.metadata["deadline"]) == clock.time() + 5
    await clock.advance(4.9)
    await settle()
    assert (await manager.get_instance("t_hang#0")).status is Status.RUNNING
    await clock.advance(0.2)
    await manager.join()
    lost = await manager.get_instance("t_hang#0")
    assert lost.status is Status.FAILED
    assert lost.metadata["exceptionType"] == LOST
    assert "did not store an outcome by its deadline" in lost.metadata["exceptionInfo"]
    assert lost.metadata["exceptionContext"]["deadline"] == running.metadata["deadline"]
    assert "t_next#0" not in (await manager.get_state()).instances
    assert runs == ["t_hang#0"]


async def test_heartbeats_move_the_deadline_and_a_lost_run_learns_it(
    storage: Storage, clock: FakeClock
) -> None:
    manager = TriggerManager(storage, "beats")
    await manager.update_configuration({"t": {"after": ["go"], "run": "time.beating", "timeout": 10}})
    await manager.fire("go")
    await settle()
    for _ in range(3):  # 3 times 8 s: far past the first deadline, alive thanks to heartbeats
        await clock.advance(8)
        gate.set()
        await settle()
    await manager.join()
    done = await manager.get_instance("t#0")
    assert done.status is Status.FINISHED and done.result == {"beats": 3}
    # A heartbeat from a run that is not the instance's current one is refused.
    with pytest.raises(InstanceLost, match="was lost"):
        await manager.heartbeat("t#0", "not-the-token")


async def test_a_zombies_late_outcome_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A process stalls past its lease while running an instance; a sweeper
    elsewhere declares the instance lost; the stalled run then ends: its outcome
    is refused, logged, and nothing cascades."""
    release = asyncio.Event()

    @task("time.zombie")
    async def zombie(context: TaskContext) -> dict[str, Any]:
        await release.wait()
        return {"late": True}

    path = tmp_path / "zombie.db"
    async with SQLiteStorage(path, lease=0.3) as stalled, SQLiteStorage(path) as other:
        manager = TriggerManager(stalled, "zombie")
        await manager.update_configuration(
            {
                "t": {"after": ["go"], "run": "time.zombie"},
                "t_next": {"after": ["t"], "run": "time.ok"},
            }
        )
        await manager.fire("go")
        await settle()
        assert stalled.lease._beating is not None
        stalled.lease._beating.cancel()  # the process stalls: no more renewals
        await asyncio.sleep(0.35)
        assert await Sweeper(other).run_once() == 1
        lost = (await other.load_all("zombie")).instances["t#0"]
        assert lost.status is Status.FAILED and lost.metadata["exceptionType"] == LOST
        with caplog.at_level(logging.WARNING, logger="atriggers"):
            release.set()  # the stalled run comes back and tries to store its outcome
            await manager.join()
        after = await other.load_all("zombie")
    assert after.instances["t#0"] == lost
    assert "t_next#0" not in after.instances
    assert any("was refused" in r.getMessage() for r in caplog.records), caplog.text


async def test_a_requeued_instance_fences_off_its_first_run(storage: Storage, clock: FakeClock) -> None:
    first_run = asyncio.Event()
    finish_first = asyncio.Event()

    @task("time.twice")
    async def twice(context: TaskContext) -> dict[str, Any]:
        runs.append(context.token or "")
        if len(runs) == 1:
            first_run.set()
            await finish_first.wait()
            return {"run": 1}
        return {"run": 2}

    manager = TriggerManager(storage, "fence")
    await manager.update_configuration({"t": {"after": ["go"], "run": "time.twice"}})
    await manager.fire("go")
    await first_run.wait()
    # An operator re-queues the instance they believe stuck: a second run starts.
    await manager.update_instance_status("t#0", "scheduled")
    await settle()
    finish_first.set()
    await manager.join()
    done = await manager.get_instance("t#0")
    assert done.status is Status.FINISHED and done.result == {"run": 2}
    assert done.metadata["token"] == runs[1] != runs[0]


# -- onLost ---------------------------------------------------------------------------------


async def test_on_lost_retry_replays_until_max_retries(storage: Storage, clock: FakeClock) -> None:
    manager = TriggerManager(storage, "retry")
    manager.lost_backoff = 0.5
    await manager.update_configuration(
        {"t": {"after": ["go"], "run": "time.lose_twice", "timeout": 5, "onLost": "retry"}}
    )
    await manager.fire("go")
    await settle()
    await clock.advance(6)  # lost: replayed after at most 0.5 s of backoff
    await settle()
    state = await manager.get_state()
    assert state.instances["t#0"].status is Status.REPLAYED
    assert state.instances["t#0"].metadata["exceptionType"] == LOST
    clone = state.instances["t#1"]
    assert clone.status in (Status.SCHEDULED, Status.RUNNING) and clone.parent == "t#0"
    await clock.advance(1)  # backoff over: the clone runs (and hangs too)
    await settle()
    assert (await manager.get_instance("t#1")).status is Status.RUNNING
    await clock.advance(6)  # lost again, and max_retries=1 is used up
    await manager.join()
    state = await manager.get_state()
    assert state.instances["t#1"].status is Status.FAILED
    assert state.instances["t#1"].metadata["exceptionType"] == EXCEEDED
    assert runs == ["t#0", "t#1"]


# -- within ---------------------------------------------------------------------------------


async def test_within_expires_an_unstarted_instance(storage: Storage, clock: FakeClock) -> None:
    manager = TriggerManager(storage, "within")
    await manager.update_configuration(
        {
            "t_once": {"after": ["a", "b"], "run": "time.ok", "within": 3600},
            "t_every": {"after": ["a", "b"], "andEvery": "b", "run": "time.ok", "within": 60},
        }
    )
    await manager.fire("a")  # one unstarted instance of each task, waiting for b
    sweeper = Sweeper(storage)
    await clock.advance(59)
    assert await sweeper.run_once() == 0
    await clock.advance(1)
    assert await sweeper.run_once() == 1  # t_every#0's minute is up
    await clock.advance(3540)
    assert await sweeper.run_once() == 1  # and t_once#0's hour
    assert sweeper.counts == {"expired": 2}
    state = await manager.get_state()
    for name in ("t_once#0", "t_every#0"):
        assert state.instances[name].status is Status.ABANDONED
        assert state.instances[name].metadata["reason"] == "expired"
    # A trigger arriving later does not run them; an andEvery firing makes a new
    # instance, with a window of its own.
    await manager.fire("b")
    await manager.join()
    state = await manager.get_state()
    assert state.instances["t_once#0"].status is Status.ABANDONED
    assert state.instances["t_every#1"].status is Status.FINISHED
    assert runs == ["t_every#1"]


async def test_a_closed_window_is_closed_even_before_a_sweep(storage: Storage, clock: FakeClock) -> None:
    manager = TriggerManager(storage, "late")
    await manager.update_configuration({"t": {"after": ["a", "b"], "run": "time.ok", "within": 10}})
    await manager.fire("a")
    await clock.advance(11)
    assert await manager.fire("b") == []
    expired = await manager.get_instance("t#0")
    assert expired.status is Status.ABANDONED and expired.metadata["reason"] == "expired"
    assert runs == []


class Dropping(BaseRunner):
    """A queue that loses every message it is given."""

    name = "dropping"

    def __init__(self, start_within: float | None = DEFAULT_START_WITHIN) -> None:
        self.start_within = start_within
        self.sent: list[str] = []

    async def run(self, manager: TriggerManager, instance: Any) -> None:
        self.sent.append(instance.name)


async def test_an_instance_sent_elsewhere_and_never_started_is_lost_in_time(
    storage: Storage, clock: FakeClock
) -> None:
    # Held by nobody, it has a deadline (six hours by default): any process recovers it.
    runners = RunnerRegistry(fallback=default_runners)
    dropping = runners.register(Dropping())
    manager = TriggerManager(storage, "dropped", runners=runners)
    await manager.update_configuration({"t": {"after": ["a"], "run": "time.ok", "using": "dropping"}})
    await manager.fire("a")
    sent = await manager.get_instance("t#0")
    assert sent.status is Status.SCHEDULED and "owner" not in sent.metadata
    assert from_iso(sent.metadata["deadline"]) == pytest.approx(clock.time() + 6 * 3600)
    sweeper = Sweeper(storage)
    await clock.advance(6 * 3600 - 1)
    assert await sweeper.run_once() == 0
    await clock.advance(1)
    assert await sweeper.run_once() == 1
    lost = await manager.get_instance("t#0")
    assert lost.status is Status.FAILED and lost.metadata["exceptionType"] == LOST
    assert isinstance(dropping, Dropping) and dropping.sent == ["t#0"] and runs == []
    # A queue trusted never to lose a message: no deadline.
    runners.register(Dropping(start_within=None), "trusted")
    await manager.update_configuration({"u": {"after": ["b"], "run": "time.ok", "using": "trusted"}})
    await manager.fire("b")
    assert "deadline" not in (await manager.get_instance("u#0")).metadata


# -- delays and cooldowns -------------------------------------------------------------------------


async def test_a_delayed_fire_applies_later_once(storage: Storage, clock: FakeClock) -> None:
    manager = TriggerManager(storage, "delay")
    await manager.update_configuration({"t": {"after": ["go"], "andEvery": "go", "run": "time.ok"}})
    assert await manager.fire("go", {"n": 1}, delay=30) == []
    await settle()
    assert not (await manager.get_state()).instances
    await clock.advance(30)
    await settle()
    # The process's own timer applied it; a sweep right after finds nothing left.
    assert await Sweeper(storage).run_once() == 0
    await manager.join()
    state = await manager.get_state()
    assert list(state.instances) == ["t#0"] and state.instances["t#0"].kwargs == {"go": {"n": 1}}
    assert runs == ["t#0"]


async def test_a_delayed_fire_survives_the_process_that_made_it(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "delay.db"
    async with SQLiteStorage(path, clock=clock) as first:
        manager = TriggerManager(first, "survive")
        await manager.update_configuration({"t": {"after": ["go"], "run": "time.ok"}})
        await manager.fire("go", {"n": 7}, delay=60)
    # That process is gone (its timer with it); another one's sweeper applies it on time.
    async with SQLiteStorage(path, clock=clock) as second:
        sweeper = Sweeper(second)
        await clock.advance(59)
        assert await sweeper.run_once() == 0
        await clock.advance(1)
        assert await sweeper.run_once() == 1 and sweeper.counts == {"delay": 1}
        await second.drain(5)
        done = (await second.load_all("survive")).instances["t#0"]
    assert done.status is Status.FINISHED and done.kwargs == {"go": {"n": 7}}


async def test_bad_delays_are_refused(storage: Storage) -> None:
    manager = TriggerManager(storage, "bad-delay")
    for bad in (-1, float("nan"), float("inf"), "10", True):
        with pytest.raises(ValueError, match="delay"):
            await manager.fire("go", delay=bad)  # type: ignore[arg-type]
    assert (await manager.get_state()).version == 0


async def test_a_retry_cooldown_is_a_durable_timer(storage: Storage, clock: FakeClock) -> None:
    manager = TriggerManager(storage, "cooldown")
    await manager.update_configuration({"t": {"after": ["go"], "run": "time.retry_once"}})
    await manager.fire("go")
    await settle()
    clone = await manager.get_instance("t#1")
    assert clone.status is Status.SCHEDULED
    assert from_iso(clone.metadata["notBefore"]) == clock.time() + 600
    await clock.advance(599)
    await settle()
    assert runs == ["t#0"]
    await clock.advance(1)
    await manager.join()
    done = await manager.get_instance("t#1")
    assert done.status is Status.FINISHED and done.result == {"depth": 1}
    assert "notBefore" not in done.metadata and runs == ["t#0", "t#1"]


# -- owners -----------------------------------------------------------------------------------------


async def test_instances_held_by_a_stalled_process_are_recovered(tmp_path: Path) -> None:
    """A process holding an instance scheduled (waiting for a free slot) and one
    running stops renewing its lease: another process's sweeper loses both."""
    register_runner(AsyncioRunner(max_concurrency=1), "one-slot")
    path = tmp_path / "owners.db"
    async with SQLiteStorage(path, lease=0.3) as stalled, SQLiteStorage(path) as other:
        manager = TriggerManager(stalled, "held", default_runner="one-slot")
        await manager.update_configuration(
            {
                "t_run": {"after": ["go"], "run": "time.hang"},
                "t_wait": {"after": ["go"], "run": "time.lose_twice", "onLost": "retry"},
            }
        )
        await manager.fire("go")
        await settle()
        state = await other.load_all("held")
        owner = stalled.lease.owner
        assert owner is not None
        assert {i.status for i in state.instances.values()} == {Status.RUNNING, Status.SCHEDULED}
        assert {i.owner for i in state.instances.values()} == {owner}
        # The process stalls: its lease is no longer renewed.
        assert stalled.lease._beating is not None
        stalled.lease._beating.cancel()
        sweeper = Sweeper(other)
        assert await sweeper.run_once() == 0
        await asyncio.sleep(0.35)
        assert await sweeper.run_once() == 2
        assert sweeper.counts == {"lost": 2}
        state = await other.load_all("held")
        lost = {n: i for n, i in state.instances.items() if i.metadata.get("exceptionType") == LOST}
        assert set(lost) == {"t_run#0", "t_wait#0"}
        assert lost["t_run#0"].status is Status.FAILED
        assert lost["t_wait#0"].status is Status.REPLAYED  # onLost: retry
        assert lost["t_run#0"].metadata["exceptionContext"]["ownerStopped"] is True
        # The stalled process's own storage cancels its runs at close: their
        # failures are refused, the sweeper's verdict stands.
        stalled.close_timeout = 0.1
    async with SQLiteStorage(path) as reopened:
        after = await reopened.load_all("held")
    assert after.instances["t_run#0"].metadata["exceptionType"] == LOST


async def test_a_lapsed_owner_must_register_again(storage: Storage) -> None:
    import time

    assert await storage.renew_owner("ghost", time.time() - 1, create=True)
    assert not await storage.renew_owner("ghost", time.time() + 30)
    assert not await storage.renew_owner("never-seen", time.time() + 30)
    assert await storage.renew_owner("alive", time.time() + 30, create=True)
    assert await storage.renew_owner("alive", time.time() + 60)
