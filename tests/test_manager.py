"""The manager end to end: SQLite file, asyncio runner, real tasks."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest

from atriggers import (
    MaxRetriesExceeded,
    Status,
    TaskContext,
    TaskInstance,
    TriggerManager,
    task,
    with_context,
)
from atriggers.runners import BaseRunner, register_runner
from atriggers.storage import MemoryStorage, SQLiteStorage

calls: list[tuple[str, dict[str, Any]]] = []


@task("tm.echo")
async def echo(context: TaskContext) -> dict[str, Any]:
    calls.append((context.instance_name, context.trigger_kwargs))
    return {"from": context.instance_name}


@task("tm.boom")
async def boom(context: TaskContext) -> dict[str, Any]:
    raise with_context(ValueError("no score for subject"), {"subject": 7})


@task("tm.not_a_mapping")
async def not_a_mapping(context: TaskContext) -> Any:
    return ["a", "list"]


@task("tm.not_json")
async def not_json(context: TaskContext) -> Any:
    return {"when": object()}


@task("tm.flaky", max_retries=2)
async def flaky(context: TaskContext) -> dict[str, Any]:
    if context.trigger_kwargs["go"].get("fail", True):
        raise context.retry(RuntimeError("try again"), cooldown=0.01)
    return {"ok": True}


@task("tm.fix_kwargs", max_retries=1)
async def fix_kwargs(context: TaskContext) -> dict[str, Any]:
    if context.trigger_kwargs["go"]["n"] < 0:
        raise context.retry(replacement_kwargs={"go": {"n": 1}})
    return {"n": context.trigger_kwargs["go"]["n"]}


@task("tm.skipper")
async def skipper(context: TaskContext) -> dict[str, Any]:
    raise context.skip({"reason": "nothing to do"})


@task("tm.logs_error")
async def logs_error(context: TaskContext) -> dict[str, Any]:
    with context.get_logger_context({"step": 1}) as log:
        log.info("fine")
        log.error("something to look at")
    return {}


@task("tm.logs_warning")
async def logs_warning(context: TaskContext) -> dict[str, Any]:
    with context.get_logger_context() as log:
        log.warning("hmm")
    return {}


thread_names: list[str] = []


@task("tm.sync")
def sync_task(context: TaskContext) -> dict[str, Any]:
    thread_names.append(threading.current_thread().name)
    return {"sync": True}


def config(run: str, **extra: Any) -> dict[str, Any]:
    return {"t": {"after": ["go"], "run": run, **extra}}


async def fire_and_wait(
    manager: TriggerManager, trigger: str = "go", kwargs: dict[str, Any] | None = None
) -> list[TaskInstance]:
    scheduled = await manager.fire(trigger, kwargs)
    await manager.join()
    return scheduled


async def test_fire_runs_task_and_cascades(sqlite_storage: SQLiteStorage) -> None:
    manager = TriggerManager(sqlite_storage, "cascade")
    await manager.update_configuration(
        {
            "t_a": {"after": ["go"], "run": "tm.echo"},
            "t_b": {"after": ["t_a"], "run": "tm.echo", "withParams": {"extra": {"k": 1}}},
        }
    )
    scheduled = await manager.fire("go", {"x": 1})
    assert [i.name for i in scheduled] == ["t_a#0"]
    assert scheduled[0].status is Status.SCHEDULED
    await manager.join()
    state = await manager.get_state()
    assert state.instances["t_a#0"].status is Status.FINISHED
    assert state.instances["t_a#0"].result == {"from": "t_a#0"}
    assert state.instances["t_b#0"].status is Status.FINISHED
    assert state.instances["t_b#0"].metadata["actualKwargs"] == {"t_a": {"from": "t_a#0"}, "extra": {"k": 1}}
    assert state.latest_kwargs["t_a"] == {"from": "t_a#0"}
    assert state.get_unresolved_tasks() == [] and state.get_unresolved_instances() == []


async def test_arguments_go_by_the_names_the_api_gives_them(sqlite_storage: SQLiteStorage) -> None:
    manager = TriggerManager(sqlite_storage, "named")
    await manager.update_configuration({"t_a": {"after": ["go"], "run": "tm.echo"}})
    preview = await manager.preview_fire(trigger="go", kwargs={"x": 1})
    assert [i.name for i in preview.scheduled] == ["t_a#0"]
    scheduled = await manager.fire(trigger="go", kwargs={"x": 1}, key="k1")
    assert [i.name for i in scheduled] == ["t_a#0"]
    await manager.join()
    state = await manager.get_state()
    assert [i.name for i in state.instances_of_task(name="t_a")] == ["t_a#0"]
    assert state.instances_of_task(state.tasks["t_a"]) == state.instances_of_task("t_a")
    assert state.instances["t_a#0"].kwargs == {"go": {"x": 1}}


async def test_state_persists_in_the_file(db_path: Any) -> None:
    async with SQLiteStorage(db_path) as storage:
        manager = TriggerManager(storage, "persist")
        await manager.update_configuration(config("tm.echo"))
        await fire_and_wait(manager, kwargs={"v": 1})
    async with SQLiteStorage(db_path) as storage:
        state = await TriggerManager(storage, "persist").get_state()
    assert state.instances["t#0"].status is Status.FINISHED
    assert state.latest_kwargs == {"go": {"v": 1}, "t": {"from": "t#0"}}
    assert state.version > 1


async def test_failure_is_stored_with_type_traceback_and_context(sqlite_storage: SQLiteStorage) -> None:
    manager = TriggerManager(sqlite_storage, "fail")
    await manager.update_configuration({**config("tm.boom"), "t_next": {"after": ["t"], "run": "tm.echo"}})
    await fire_and_wait(manager)
    state = await manager.get_state()
    failed = state.instances["t#0"]
    assert failed.status is Status.FAILED and failed.can_replay and failed.can_skip
    assert failed.metadata["exceptionType"] == "builtins.ValueError"
    assert "no score for subject" in failed.metadata["exceptionInfo"]
    assert "Traceback" in failed.metadata["exceptionInfo"]
    assert failed.metadata["exceptionContext"] == {"subject": 7}
    assert "t_next#0" not in state.instances  # no cascade on failure
    assert [i.name for i in state.get_unresolved_instances()] == ["t#0"]


@pytest.mark.parametrize(
    ("run", "words"),
    [("tm.not_a_mapping", "must return a mapping"), ("tm.not_json", "cannot be stored as JSON")],
)
async def test_bad_result_fails_instance_clearly(sqlite_storage: SQLiteStorage, run: str, words: str) -> None:
    manager = TriggerManager(sqlite_storage, "bad-result")
    await manager.update_configuration(config(run))
    await fire_and_wait(manager)
    failed = (await manager.get_state()).instances["t#0"]
    assert failed.status is Status.FAILED
    assert words in failed.metadata["exceptionInfo"]


async def test_replay_failed_instance(sqlite_storage: SQLiteStorage) -> None:
    replays: list[TaskInstance] = []

    class Manager(TriggerManager):
        async def post_replay(self, task_instance: TaskInstance) -> None:
            replays.append(task_instance)

    manager = Manager(sqlite_storage, "replay")
    await manager.update_configuration(config("tm.boom"))
    await fire_and_wait(manager, kwargs={"v": 1})
    await manager.update_configuration(config("tm.echo"))  # fix the task, then replay
    clone = await manager.replay_failed_instance("t#0", {"go": {"v": 2}})
    await manager.join()
    assert clone.name == "t#1" and clone.parent == "t#0"
    assert [r.name for r in replays] == ["t#1"]
    state = await manager.get_state()
    assert state.instances["t#0"].status is Status.REPLAYED
    assert state.instances["t#1"].status is Status.FINISHED
    assert state.instances["t#1"].kwargs == {"go": {"v": 2}}


async def test_skip_failed_instance_with_cascade(sqlite_storage: SQLiteStorage) -> None:
    seen: list[tuple[str, bool, list[str]]] = []

    class Manager(TriggerManager):
        async def post_skip(self, task_instance: TaskInstance, cascade: bool) -> None:
            state = await self.get_state()
            seen.append((task_instance.name, cascade, sorted(state.instances)))

    manager = Manager(sqlite_storage, "skip")
    await manager.update_configuration({**config("tm.boom"), "t_next": {"after": ["t"], "run": "tm.echo"}})
    await fire_and_wait(manager)
    await manager.skip_failed_instance("t#0", cascade=True, result={"pretend": 1})
    await manager.join()
    state = await manager.get_state()
    assert state.instances["t#0"].status is Status.SKIPPED
    assert state.instances["t#0"].metadata["result"] == {"pretend": 1}
    assert state.instances["t_next#0"].status is Status.FINISHED
    assert state.instances["t_next#0"].kwargs == {"t": {"pretend": 1}}
    assert seen == [("t#0", True, ["t#0", "t_next#0"])]  # hook runs after the cascade


async def test_retry_until_max_retries(sqlite_storage: SQLiteStorage) -> None:
    manager = TriggerManager(sqlite_storage, "retry")
    await manager.update_configuration(config("tm.flaky"))
    await fire_and_wait(manager, kwargs={"fail": True})
    state = await manager.get_state()
    statuses = {name: i.status for name, i in state.instances.items()}
    assert statuses == {"t#0": Status.REPLAYED, "t#1": Status.REPLAYED, "t#2": Status.FAILED}
    assert state.instances["t#1"].parent == "t#0" and state.instances["t#2"].depth == 2
    assert state.instances["t#1"].cooldown == 0.01
    assert state.instances["t#0"].metadata["exceptionType"] == "builtins.RuntimeError"
    last = state.instances["t#2"].metadata
    assert last["exceptionType"] == f"{MaxRetriesExceeded.__module__}.MaxRetriesExceeded"
    assert "max_retries=2" in last["exceptionInfo"]


async def test_retry_with_replacement_kwargs(sqlite_storage: SQLiteStorage) -> None:
    manager = TriggerManager(sqlite_storage, "retry-kwargs")
    await manager.update_configuration(config("tm.fix_kwargs"))
    await fire_and_wait(manager, kwargs={"n": -1})
    state = await manager.get_state()
    assert state.instances["t#1"].status is Status.FINISHED
    assert state.instances["t#1"].result == {"n": 1}


async def test_task_skips_itself(sqlite_storage: SQLiteStorage) -> None:
    manager = TriggerManager(sqlite_storage, "self-skip")
    await manager.update_configuration({**config("tm.skipper"), "t_next": {"after": ["t"], "run": "tm.echo"}})
    await fire_and_wait(manager)
    state = await manager.get_state()
    assert state.instances["t#0"].status is Status.SKIPPED
    assert state.instances["t#0"].metadata["reason"] == "nothing to do"
    assert "t_next#0" not in state.instances


async def test_logger_context_records_highest_level(sqlite_storage: SQLiteStorage, caplog: Any) -> None:
    manager = TriggerManager(sqlite_storage, "logs")
    await manager.update_configuration(
        {
            "t_err": {"after": ["go"], "run": "tm.logs_error"},
            "t_warn": {"after": ["go"], "run": "tm.logs_warning"},
        }
    )
    with caplog.at_level(logging.INFO, logger="atriggers.tasks"):
        await fire_and_wait(manager)
    record = next(r for r in caplog.records if r.getMessage() == "something to look at")
    assert record.instance == "t_err#0" and record.context == {"step": 1}
    state = await manager.get_state()
    err, warn = state.instances["t_err#0"], state.instances["t_warn#0"]
    assert err.log_level == logging.ERROR and err.log_level_name == "ERROR" and not err.logs_resolved
    assert warn.log_level == logging.WARNING and warn.logs_resolved
    assert [i.name for i in state.get_instances_with_unresolved_logs()] == ["t_err#0"]
    resolved = await manager.mark_instance_logs_resolved("t_err#0")
    assert resolved.logs_resolved
    assert (await manager.get_state()).get_instances_with_unresolved_logs() == []


async def test_update_instance_status_and_metadata(sqlite_storage: SQLiteStorage) -> None:
    manager = TriggerManager(sqlite_storage, "status")
    await manager.update_configuration(
        {
            "t": {"after": ["go"], "unless": ["never"], "run": "tm.echo"},
            "t_next": {"after": ["t"], "run": "tm.echo"},
        }
    )
    await manager.fire("never")  # creates t#0 as abandoned
    updated = await manager.update_instance_status(
        "t#0", "finished", {"note": "done by hand"}, cascade=True, cascade_kwargs={"manual": True}
    )
    await manager.join()
    assert updated.status is Status.FINISHED and updated.metadata["note"] == "done by hand"
    assert "finished" in updated.timestamps
    state = await manager.get_state()
    assert state.instances["t_next#0"].status is Status.FINISHED
    assert state.instances["t_next#0"].kwargs == {"t": {"manual": True}}
    changed = await manager.update_instance_metadata("t#0", {"ticket": "OPS-1"})
    assert changed.status is Status.FINISHED and changed.metadata["ticket"] == "OPS-1"
    assert changed.metadata["note"] == "done by hand"


async def test_post_fire_hook_sees_scheduled_instances(sqlite_storage: SQLiteStorage) -> None:
    fired: list[tuple[str, list[str]]] = []

    class Manager(TriggerManager):
        async def post_fire(self, trigger_name: str, tasks_scheduled: list[TaskInstance]) -> None:
            fired.append((trigger_name, [i.name for i in tasks_scheduled]))

    manager = Manager(sqlite_storage, "hooks")
    await manager.update_configuration(
        {
            "t_a": {"after": ["go"], "run": "tm.echo"},
            "t_b": {"after": ["t_a"], "run": "tm.echo"},
        }
    )
    await fire_and_wait(manager)
    assert fired == [("go", ["t_a#0"]), ("t_a", ["t_b#0"]), ("t_b", [])]


async def test_sync_task_runs_in_a_worker_thread(sqlite_storage: SQLiteStorage) -> None:
    manager = TriggerManager(sqlite_storage, "sync")
    await manager.update_configuration(config("tm.sync"))
    await fire_and_wait(manager)
    assert (await manager.get_state()).instances["t#0"].result == {"sync": True}
    assert thread_names and thread_names[-1] != threading.main_thread().name


async def test_unknown_task_fails_instance_and_is_replayable(sqlite_storage: SQLiteStorage) -> None:
    manager = TriggerManager(sqlite_storage, "unknown-task")
    await manager.update_configuration(config("tm.nobody_registered_this"))
    await fire_and_wait(manager)
    failed = (await manager.get_state()).instances["t#0"]
    assert failed.status is Status.FAILED
    assert failed.metadata["exceptionType"] == "atriggers.errors.UnknownTask"
    assert "tm.nobody_registered_this" in failed.metadata["exceptionInfo"]

    @task("tm.nobody_registered_this")
    async def late(context: TaskContext) -> dict[str, Any]:
        return {"late": True}

    await manager.replay_failed_instance("t#0")
    await manager.join()
    assert (await manager.get_state()).instances["t#1"].result == {"late": True}


async def test_unknown_runner_fails_instance_without_raising(sqlite_storage: SQLiteStorage) -> None:
    manager = TriggerManager(sqlite_storage, "unknown-runner")
    await manager.update_configuration(config("tm.echo", using="carrier-pigeon"))
    scheduled = await manager.fire("go")
    assert [i.name for i in scheduled] == ["t#0"]
    failed = (await manager.get_state()).instances["t#0"]
    assert failed.status is Status.FAILED
    assert failed.metadata["exceptionType"] == "atriggers.errors.UnknownRunner"
    assert "carrier-pigeon" in failed.metadata["exceptionInfo"]


class RecordingRunner(BaseRunner):
    name = "recording"

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def run(self, manager: TriggerManager, instance: TaskInstance) -> None:
        self.seen.append(instance.name)
        # The move to scheduled is stored before dispatch.
        stored = await manager.get_instance(instance.name)
        assert stored.status is Status.SCHEDULED
        await manager.run_instance(instance.name)


async def test_using_picks_the_runner_per_task(sqlite_storage: SQLiteStorage) -> None:
    runner = register_runner(RecordingRunner())
    assert isinstance(runner, RecordingRunner)
    manager = TriggerManager(sqlite_storage, "using")
    await manager.update_configuration(
        {
            "t_a": {"after": ["go"], "run": "tm.echo", "using": "recording"},
            "t_b": {"after": ["go"], "run": "tm.echo"},
        }
    )
    await fire_and_wait(manager)
    assert runner.seen == ["t_a#0"]
    state = await manager.get_state()
    assert {i.status for i in state.instances.values()} == {Status.FINISHED}


async def test_default_runner_per_manager(sqlite_storage: SQLiteStorage) -> None:
    runner = register_runner(RecordingRunner())
    manager = TriggerManager(sqlite_storage, "default-runner", default_runner="recording")
    await manager.update_configuration(config("tm.echo"))
    await fire_and_wait(manager)
    assert runner.seen == ["t#0"]


async def test_dispatch_error_fails_instance(sqlite_storage: SQLiteStorage) -> None:
    class BrokenRunner(BaseRunner):
        name = "broken"

        async def run(self, manager: TriggerManager, instance: TaskInstance) -> None:
            raise ConnectionError("broker is down")

    register_runner(BrokenRunner())
    manager = TriggerManager(sqlite_storage, "broken")
    await manager.update_configuration(config("tm.echo", using="broken"))
    await manager.fire("go")
    failed = (await manager.get_state()).instances["t#0"]
    assert failed.status is Status.FAILED
    assert failed.metadata["exceptionType"] == "builtins.ConnectionError"
    assert "broker is down" in failed.metadata["exceptionInfo"]


async def test_cooldown_delays_the_run(sqlite_storage: SQLiteStorage) -> None:
    manager = TriggerManager(sqlite_storage, "cooldown")
    await manager.update_configuration(config("tm.flaky"))
    loop = asyncio.get_running_loop()
    start = loop.time()
    await fire_and_wait(manager, kwargs={"fail": True})
    assert loop.time() - start >= 0.02  # two retries of 0.01 s each


@task("tm.slow")
async def slow(context: TaskContext) -> dict[str, Any]:
    await asyncio.sleep(30)
    return {}


async def test_closing_storage_cancels_stragglers_and_records_them(db_path: Any) -> None:
    storage = SQLiteStorage(db_path, close_timeout=0.2)
    await storage.open()
    manager = TriggerManager(storage, "shutdown")
    await manager.update_configuration(
        {
            "t_run": {"after": ["go"], "run": "tm.slow"},
            "t_wait": {"after": ["go"], "run": "tm.echo"},
        }
    )
    await manager.fire("go")
    await asyncio.sleep(0.05)
    await storage.aclose()
    async with SQLiteStorage(db_path) as reopened:
        state = await TriggerManager(reopened, "shutdown").get_state()
    failed = state.instances["t_run#0"]
    assert failed.status is Status.FAILED
    assert failed.metadata["exceptionType"] == "asyncio.exceptions.CancelledError"
    assert state.instances["t_wait#0"].status is Status.FINISHED


async def test_concurrency_limit_is_honoured(db_path: Any) -> None:
    from atriggers.runners import AsyncioRunner

    running = 0
    peak = 0

    @task("tm.counted")
    async def counted(context: TaskContext) -> dict[str, Any]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return {}

    register_runner(AsyncioRunner(max_concurrency=3), "limited")
    async with SQLiteStorage(db_path) as storage:
        manager = TriggerManager(storage, "limit", default_runner="limited")
        await manager.update_configuration({"t": {"after": [], "andEvery": "go", "run": "tm.counted"}})
        for _ in range(12):
            await manager.fire("go")
        await manager.join()
        state = await manager.get_state()
    assert len(state.instances) == 12
    assert {i.status for i in state.instances.values()} == {Status.FINISHED}
    assert peak == 3


@task("tm.wait_then_finish")
async def wait_then_finish(context: TaskContext) -> dict[str, Any]:
    await asyncio.sleep(0.05)
    return {"late": True}


async def test_operator_decision_stands_over_a_late_outcome(sqlite_storage: SQLiteStorage) -> None:
    manager = TriggerManager(sqlite_storage, "operator")
    await manager.update_configuration(
        {**config("tm.wait_then_finish"), "t_next": {"after": ["t"], "run": "tm.echo"}}
    )
    await manager.fire("go")
    await asyncio.sleep(0.01)  # the run is under way
    await manager.update_instance_status("t#0", "failed", {"reason": "worker lost"})
    await manager.join()
    state = await manager.get_state()
    assert state.instances["t#0"].status is Status.FAILED
    assert state.instances["t#0"].metadata["reason"] == "worker lost"
    assert "t_next#0" not in state.instances


@task("tm.mutates")
async def mutates(context: TaskContext) -> dict[str, Any]:
    context.trigger_kwargs["go"]["x"] = "changed by task"
    context.instance.metadata["junk"] = True
    return {}


async def test_returned_and_task_side_objects_are_copies(sqlite_storage: SQLiteStorage) -> None:
    manager = TriggerManager(sqlite_storage, "copies")
    await manager.update_configuration(config("tm.mutates"))
    scheduled = await manager.fire("go", {"x": 1})
    scheduled[0].metadata["junk"] = True
    scheduled[0].kwargs["go"] = {"x": "changed by caller"}
    await manager.join()
    instance = (await manager.get_state()).instances["t#0"]
    assert instance.kwargs == {"go": {"x": 1}}
    assert instance.metadata["actualKwargs"] == {"go": {"x": 1}}
    assert "junk" not in instance.metadata
    await manager.fire("go2")  # the cached snapshot was not corrupted either
    assert "junk" not in (await manager.get_state()).instances["t#0"].metadata


async def test_join_waits_for_a_runs_task_to_end_not_only_for_its_outcome(
    sqlite_storage: SQLiteStorage,
) -> None:
    # A runner whose task goes on after the outcome is stored: `join` hears of
    # the run's end at once, and waits on until the task itself has ended.
    class Lingering(BaseRunner):
        name = "lingering"

        def __init__(self) -> None:
            self.ended: list[str] = []

        async def run(self, manager: TriggerManager, instance: TaskInstance) -> None:
            async def go() -> None:
                await manager.run_instance(instance.name)
                for _ in range(3):
                    await asyncio.sleep(0)
                self.ended.append(instance.name)

            manager.track(asyncio.get_running_loop().create_task(go()))

    runner = register_runner(Lingering())
    manager = TriggerManager(sqlite_storage, "lingering", default_runner="lingering")
    await manager.update_configuration(config("tm.echo"))
    await fire_and_wait(manager)
    assert runner.ended == ["t#0"]


async def test_fire_then_join_costs_five_turns_of_the_loop(
    loop_iterations: Callable[[], AbstractContextManager[list[int]]],
) -> None:
    # In memory, on the asyncio runner: the fire's operation, the run, storing
    # its outcome, the run's end, and `join` hearing of it in the next turn
    # (not two turns later, through done callbacks). Eager tasks save more.
    manager = TriggerManager(MemoryStorage(), "turns")
    await manager.update_configuration({"t": {"after": [], "andEvery": "go", "run": "tm.echo"}})
    await fire_and_wait(manager)
    for i in range(3):
        with loop_iterations() as count:
            await fire_and_wait(manager, "go", {"i": i})
        assert count[0] <= 5, count[0]
    assert len((await manager.get_state()).instances) == 4
