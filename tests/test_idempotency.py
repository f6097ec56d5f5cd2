"""Idempotent fires (``fire(..., key=...)``): applied once, conflicts refused with
nothing written, retention by time (on the controllable clock) and by count."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from atriggers import (
    IdempotencyConflict,
    InvalidInput,
    Status,
    Sweeper,
    TaskContext,
    TriggerError,
    TriggerManager,
    task,
)
from atriggers.clock import FakeClock
from atriggers.idempotency import MAX_KEY_LENGTH, is_key_row, key_row_name
from atriggers.storage import MemoryStorage, SQLiteStorage
from atriggers.storage.base import Storage

EVERY = {"t": {"after": [], "andEvery": "tick", "run": "idem.ok"}}
runs: list[str] = []


@task("idem.ok")
async def ok(context: TaskContext) -> dict[str, Any]:
    runs.append(context.instance_name)
    return {"n": context.trigger_kwargs["tick"].get("n")}


@pytest.fixture(autouse=True)
def _runs() -> None:
    runs.clear()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "sqlite"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> AsyncIterator[Storage]:
    store: Storage = (
        MemoryStorage(clock=clock)
        if request.param == "memory"
        else SQLiteStorage(tmp_path / "k.db", clock=clock)
    )
    async with store:
        yield store


async def unchanged(storage: Storage, uid: str) -> tuple[int, dict[str, Any], list[Any]]:
    storage.forget(uid)
    state = await storage.load_all(uid)
    return state.version, state.debug_repr(), state.fire_keys.records()


async def test_a_repeated_fire_changes_nothing_and_returns_the_first_instances(storage: Storage) -> None:
    manager = TriggerManager(storage, "once")
    await manager.update_configuration(EVERY)
    first = await manager.fire("tick", {"n": 1, "m": [1, 2]}, key="order-1")
    assert [i.name for i in first] == ["t#0"] and first[0].status is Status.SCHEDULED
    await manager.join()
    before = await unchanged(storage, "once")
    # Kwargs built in another order are the same fire; the instances come as they are now.
    again = await manager.fire("tick", {"m": [1, 2], "n": 1}, key="order-1")
    assert [(i.name, i.status, i.result) for i in again] == [("t#0", Status.FINISHED, {"n": 1})]
    assert await unchanged(storage, "once") == before
    assert runs == ["t#0"]
    # Another key is another fire.
    assert [i.name for i in await manager.fire("tick", {"n": 1}, key="order-2")] == ["t#1"]


@pytest.mark.parametrize(
    ("trigger", "kwargs", "differs"),
    [("tick", {"n": 2}, "kwargs"), ("tock", {"n": 1}, "trigger"), ("tick", {}, "kwargs")],
)
async def test_the_same_key_for_another_fire_is_refused_with_nothing_written(
    storage: Storage, trigger: str, kwargs: dict[str, Any], differs: str
) -> None:
    manager = TriggerManager(storage, "conflict")
    await manager.update_configuration({**EVERY, "u": {"after": ["tock"], "run": "idem.ok"}})
    await manager.fire("tick", {"n": 1}, key="k")
    await manager.join()
    before = await unchanged(storage, "conflict")
    with pytest.raises(IdempotencyConflict) as caught:
        await manager.fire(trigger, kwargs, key="k")
    assert caught.value.key == "k" and caught.value.differs == differs
    assert "'k'" in str(caught.value) and differs in str(caught.value)
    assert isinstance(caught.value, TriggerError) and isinstance(caught.value, ValueError)
    assert await unchanged(storage, "conflict") == before
    # Also with a delay: refused, and no delayed fire stored.
    with pytest.raises(IdempotencyConflict):
        await manager.fire(trigger, kwargs, key="k", delay=5)
    assert await unchanged(storage, "conflict") == before


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (42, "must be a string"),
        ("", "empty or blank"),
        ("  ", "empty or blank"),
        ("x" * (MAX_KEY_LENGTH + 1), f"at most {MAX_KEY_LENGTH}"),
        ("bad\udc80", "not valid Unicode"),
    ],
)
async def test_bad_keys_are_refused_before_anything_is_written(
    storage: Storage, key: Any, message: str
) -> None:
    manager = TriggerManager(storage, "bad")
    await manager.update_configuration(EVERY)
    before = await unchanged(storage, "bad")
    # One caller's bad key does not fail another's fire running at the same time.
    good, bad = await asyncio.gather(
        TriggerManager(storage, "bad").fire("tick", {"n": 1}, key="good"),
        manager.fire("tick", {"n": 2}, key=key),
        return_exceptions=True,
    )
    assert isinstance(bad, InvalidInput) and message in str(bad)
    assert isinstance(good, list) and [i.name for i in good] == ["t#0"]
    await storage.drain()
    after = await unchanged(storage, "bad")
    assert [r.key for r in after[2]] == ["good"] and list(after[1]["instances"]) == ["t#0"]
    assert before[2] == []


async def test_keys_are_forgotten_after_their_retention(storage: Storage, clock: FakeClock) -> None:
    manager = TriggerManager(storage, "retention")
    await manager.update_configuration(EVERY)
    await manager.fire("tick", {"n": 0}, key="old")
    await clock.advance(23 * 3600)
    await manager.fire("tick", {"n": 1}, key="recent")
    await clock.advance(3599)
    # Still held just before 24 h: a retry applies nothing.
    assert [i.name for i in await manager.fire("tick", {"n": 0}, key="old")] == ["t#0"]
    await clock.advance(1)
    # 24 h after its fire the key is forgotten: the next keyed fire blanks its row
    # in the same write, and the key may be used again (a new fire).
    await manager.fire("tick", {"n": 2}, key="new")
    storage.forget("retention")
    held = [r.key for r in (await storage.load("retention")).fire_keys.records()]
    assert held == ["recent", "new"]
    assert [i.name for i in await manager.fire("tick", {"n": 5}, key="old")] == ["t#3"]


async def test_a_busy_session_keeps_every_key_for_its_retention(storage: Storage, clock: FakeClock) -> None:
    manager = TriggerManager(storage, "busy")
    await manager.update_configuration(EVERY)
    for n in range(1500):  # a day of requests, each with its own key
        await manager.fire("tick", {"n": n}, key=f"req-{n}")
        if n % 100 == 99:
            await clock.advance(3600)
    # Each still held: a retry of the first applies nothing, fresh or cold.
    assert [i.name for i in await manager.fire("tick", {"n": 0}, key="req-0")] == ["t#0"]
    storage.forget("busy")
    assert [i.name for i in await manager.fire("tick", {"n": 0}, key="req-0")] == ["t#0"]
    # A day after the first 100, the next keyed fire forgets those (and only those).
    await clock.advance(24 * 3600 - 15 * 3600)
    await manager.fire("tick", {"n": "late"}, key="late")
    storage.forget("busy")
    held = [r.key for r in (await storage.load("busy")).fire_keys.records()]
    assert held == [f"req-{n}" for n in range(100, 1500)] + ["late"]
    await manager.join()


async def test_retention_is_configurable(storage: Storage, clock: FakeClock) -> None:
    class Brief(TriggerManager):
        key_retention = 60.0

    manager = Brief(storage, "brief")
    await manager.update_configuration(EVERY)
    await manager.fire("tick", {"n": 0}, key="k")
    await clock.advance(59)
    assert [i.name for i in await manager.fire("tick", {"n": 0}, key="k")] == ["t#0"]
    await clock.advance(1)
    assert [i.name for i in await manager.fire("tick", {"n": 0}, key="k")] == ["t#1"]
    manager.max_keys = 0
    with pytest.raises(InvalidInput, match="max_keys"):
        await manager.fire("tick", {}, key="z")


async def test_a_session_keeps_at_most_max_keys(storage: Storage) -> None:
    manager = TriggerManager(storage, "count")
    manager.max_keys = 3
    await manager.update_configuration(EVERY)
    for n in range(5):
        await manager.fire("tick", {"n": n}, key=f"k{n}")
    storage.forget("count")
    state = await storage.load_all("count")
    assert [r.key for r in state.fire_keys.records()] == ["k2", "k3", "k4"]
    assert "k0" not in str(state.latest_kwargs) and set(state.latest_kwargs) == {"tick", "t"}
    # The oldest keys were replaced: k0 is a new fire now, k4 is still held.
    assert [i.name for i in await manager.fire("tick", {"n": 4}, key="k4")] == ["t#4"]
    assert [i.name for i in await manager.fire("tick", {"n": 0}, key="k0")] == ["t#5"]
    await manager.join()


async def test_a_delayed_keyed_fire_is_stored_once(storage: Storage, clock: FakeClock) -> None:
    manager = TriggerManager(storage, "later")
    await manager.update_configuration(EVERY)
    assert await manager.fire("tick", {"n": 1}, key="k", delay=30) == []
    version = (await manager.get_state()).version
    # Retried while it waits: nothing stored (no second delayed fire).
    assert await manager.fire("tick", {"n": 1}, key="k", delay=30) == []
    assert await manager.fire("tick", {"n": 1}, key="k") == []
    assert (await manager.get_state()).version == version
    await clock.advance(30)
    assert await Sweeper(storage).run_once() <= 1
    await manager.join()
    state = await manager.get_state()
    assert list(state.instances) == ["t#0"] and state.instances["t#0"].status is Status.FINISHED
    # Retried after it applied: still the first answer, still nothing applied.
    assert await manager.fire("tick", {"n": 1}, key="k", delay=30) == []
    await clock.advance(60)
    assert await Sweeper(storage).run_once() == 0
    await manager.join()
    assert list((await manager.get_state()).instances) == ["t#0"] and runs == ["t#0"]


async def test_concurrent_retries_apply_once(storage: Storage) -> None:
    manager = TriggerManager(storage, "burst")
    await manager.update_configuration(EVERY)
    answers = await asyncio.gather(
        *(TriggerManager(storage, "burst").fire("tick", {"n": n % 50}, key=f"k{n % 50}") for n in range(200))
    )
    await storage.drain()
    by_key: dict[int, set[tuple[str, ...]]] = {}
    for n, answer in enumerate(answers):
        by_key.setdefault(n % 50, set()).add(tuple(i.name for i in answer))
    assert all(len(names) == 1 for names in by_key.values())
    state = await manager.get_state()
    assert len(state.instances) == 50 and sorted(runs) == sorted(state.instances)


async def test_a_stale_cache_in_another_storage_object_finds_the_key(tmp_path: Path) -> None:
    """Two storage objects on one file, as two processes: each has the session
    cached; the second's keyed fire is re-applied to the stored state (which holds
    the key) instead of being applied twice."""
    path = tmp_path / "two.db"
    async with SQLiteStorage(path) as one, SQLiteStorage(path) as two:
        await TriggerManager(one, "s").update_configuration(EVERY)
        await TriggerManager(two, "s").fire("tick", {"n": 0})  # both now hold it cached
        await TriggerManager(one, "s").fire("tick", {"n": 0})
        first = await TriggerManager(one, "s").fire("tick", {"n": 1}, key="k")
        again = await TriggerManager(two, "s").fire("tick", {"n": 1}, key="k")
        assert [i.name for i in again] == [i.name for i in first] == ["t#2"]
        await TriggerManager(one, "s").fire("tick", {"n": 9}, key="k2")
        with pytest.raises(IdempotencyConflict):  # found by the re-application, too
            await TriggerManager(two, "s").fire("tick", {"n": 8}, key="k2")
        await TriggerManager(one, "s").join()
        await TriggerManager(two, "s").join()
        state = await one.load_all("s")
    assert sorted(state.instances) == ["t#0", "t#1", "t#2", "t#3"]


async def test_key_rows_never_collide_with_triggers(storage: Storage) -> None:
    manager = TriggerManager(storage, "names")
    # A trigger that starts like a key row is an ordinary trigger.
    odd = "\x1fx"
    assert not is_key_row(odd) and is_key_row(key_row_name(12)) and not key_row_name(12).strip()
    await manager.update_configuration({"t": {"after": [odd], "run": "idem.ok"}})
    await manager.fire(odd, {"n": 1}, key="k")
    storage.forget("names")
    state = await storage.load_all("names")
    assert set(state.latest_kwargs) == {odd} and [r.key for r in state.fire_keys.records()] == ["k"]


async def test_keys_belong_to_their_session(storage: Storage) -> None:
    one, two = TriggerManager(storage, "one"), TriggerManager(storage, "two")
    for manager in (one, two):
        await manager.update_configuration(EVERY)
    await one.fire("tick", {"n": 1}, key="k")
    await two.fire("tick", {"n": 2}, key="x")
    # The same key in another session is another fire, with its own kwargs.
    assert [i.name for i in await two.fire("tick", {"n": 3}, key="k")] == ["t#1"]
    assert [i.name for i in await one.fire("tick", {"n": 1}, key="k")] == ["t#0"]
    await storage.drain()
    for manager, keys in ((one, ["k"]), (two, ["x", "k"])):
        storage.forget(manager.uid)
        assert [r.key for r in (await storage.load(manager.uid)).fire_keys.records()] == keys


async def test_a_conflict_fails_only_its_own_fire(storage: Storage) -> None:
    manager = TriggerManager(storage, "shared")
    await manager.update_configuration(EVERY)
    await manager.fire("tick", {"n": 0}, key="taken")
    answers = await asyncio.gather(
        *(TriggerManager(storage, "shared").fire("tick", {"n": n}, key=f"k{n}") for n in range(1, 20)),
        TriggerManager(storage, "shared").fire("tick", {"n": 99}, key="taken"),
        return_exceptions=True,
    )
    assert isinstance(answers[-1], IdempotencyConflict)
    assert all(isinstance(a, list) and len(a) == 1 for a in answers[:-1])
    await storage.drain()
    assert len((await manager.get_state()).instances) == 20
