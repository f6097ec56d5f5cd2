"""Nothing is silently stuck, nothing runs twice: cancellations, late dispatch
errors, unstorable task output, shutdown while cascades start."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from atriggers import Status, TaskContext, TaskInstance, TriggerManager, task
from atriggers.runners import BaseRunner, register_runner
from atriggers.state import Change
from atriggers.storage import MemoryStorage, SQLiteStorage
from atriggers.storage.base import Reapply

PAIR = {"t_a": {"after": ["go"], "run": "rb.a"}, "t_b": {"after": ["t_a"], "run": "rb.b"}}


@task("rb.a")
async def a(context: TaskContext) -> dict[str, Any]:
    return {"x": 1}


@task("rb.b")
async def b(context: TaskContext) -> dict[str, Any]:
    return {}


async def test_cancelling_a_run_while_its_outcome_is_stored_still_dispatches_the_cascade(
    db_path: Path,
) -> None:
    runs: list[asyncio.Task[Any]] = []

    class CancelRunOnFinish(SQLiteStorage):
        """Cancels the run (as a shutdown or a time limit would) the moment its
        outcome write is submitted."""

        async def store_or_reapply(
            self, uid: str, expected: int, change: Change, reapply: Reapply | None
        ) -> Change | None:
            if any(i.status is Status.FINISHED and i.task_name == "t_a" for i in change.instances):
                for run in runs:
                    run.cancel()
            return await super().store_or_reapply(uid, expected, change, reapply)

    async with CancelRunOnFinish(db_path) as storage:
        manager = TriggerManager(storage, "cancel-finish")
        await manager.update_configuration(PAIR)
        await manager.fire("go")
        # The run's task (the runner names it), not the shielded operation storing
        # its outcome, which may be under way already.
        runs.extend(t for t in manager._inflight if t.get_name() == "atriggers cancel-finish t_a#0")
        assert runs
        await storage.drain()
        state = await manager.get_state()
    assert state.instances["t_a#0"].status is Status.FINISHED
    assert state.instances["t_b#0"].status is Status.FINISHED  # dispatched and run, not stuck


@task("rb.slow")
async def slow(context: TaskContext) -> dict[str, Any]:
    await asyncio.sleep(0.1)
    return {"ok": 1}


class LateTimeoutRunner(BaseRunner):
    """Hands the instance over, then fails to hear back (a lost broker reply)."""

    name = "late-timeout"

    async def run(self, manager: TriggerManager, instance: TaskInstance) -> None:
        manager.track(asyncio.create_task(manager.run_instance(instance.name)))
        await asyncio.sleep(0.03)  # the "worker" has started it by now
        raise TimeoutError("no acknowledgement from the broker")


async def test_a_dispatch_error_after_handover_does_not_fail_a_running_instance() -> None:
    register_runner(LateTimeoutRunner())
    async with MemoryStorage() as storage:
        manager = TriggerManager(storage, "late-error")
        await manager.update_configuration(
            {
                "t": {"after": ["go"], "run": "rb.slow", "using": "late-timeout"},
                "t2": {"after": ["t"], "run": "rb.b"},
            }
        )
        await manager.fire("go")
        await manager.join()
        state = await manager.get_state()
    assert state.instances["t#0"].status is Status.FINISHED
    assert state.instances["t2#0"].status is Status.FINISHED


@task("rb.bad_skip")
async def bad_skip(context: TaskContext) -> dict[str, Any]:
    from atriggers.context import Skip

    raise Skip({"when": object()})  # built by hand: nothing checked it


@task("rb.bad_retry", max_retries=3)
async def bad_retry(context: TaskContext) -> dict[str, Any]:
    raise context.retry(metadata={"when": {1, 2}})


async def test_unstorable_skip_or_retry_metadata_fails_the_instance_clearly(
    sqlite_storage: SQLiteStorage,
) -> None:
    manager = TriggerManager(sqlite_storage, "bad-signals")
    await manager.update_configuration(
        {"s": {"after": ["go"], "run": "rb.bad_skip"}, "r": {"after": ["go"], "run": "rb.bad_retry"}}
    )
    await manager.fire("go")
    await manager.join()
    state = await manager.get_state()
    for name, words in (("s#0", "skip metadata"), ("r#0", "retry metadata")):
        failed = state.instances[name]
        assert failed.status is Status.FAILED, name
        assert failed.metadata["exceptionType"] == "atriggers.errors.InvalidInput"
        assert words in failed.metadata["exceptionInfo"] and "JSON" in failed.metadata["exceptionInfo"]


@task("rb.stubborn")
async def stubborn(context: TaskContext) -> dict[str, Any]:
    with contextlib.suppress(asyncio.CancelledError):  # finishes anyway, and its
        await asyncio.sleep(0.3)  # cascade starts during shutdown
    return {"ok": 1}


@task("rb.after_stubborn")
async def after_stubborn(context: TaskContext) -> dict[str, Any]:
    await asyncio.sleep(0.05)
    return {}


async def test_closing_waits_for_runs_started_while_it_cancels(db_path: Path) -> None:
    async with SQLiteStorage(db_path, close_timeout=0.1) as storage:
        manager = TriggerManager(storage, "stubborn")
        await manager.update_configuration(
            {"a": {"after": ["go"], "run": "rb.stubborn"}, "b": {"after": ["a"], "run": "rb.after_stubborn"}}
        )
        await manager.fire("go")
    async with SQLiteStorage(db_path) as reopened:
        state = await TriggerManager(reopened, "stubborn").get_state()
    assert state.instances["a#0"].status is Status.FINISHED
    # The cascade started during shutdown was waited for (or cancelled and
    # recorded): never left running or scheduled.
    assert state.instances["b#0"].status in (Status.FINISHED, Status.FAILED)


async def test_handed_out_instances_share_nothing_with_storage(memory_storage: MemoryStorage) -> None:
    seen: list[dict[str, Any]] = []

    @task("rb.sees")
    async def sees(context: TaskContext) -> dict[str, Any]:
        seen.append(context.trigger_kwargs)
        return {}

    manager = TriggerManager(memory_storage, "deep")
    await manager.update_configuration({"t": {"after": ["a", "b"], "run": "rb.sees"}})
    await manager.fire("a", {"x": 1})
    instance = await manager.update_instance_metadata("t#0", {"note": "hi"})
    instance.kwargs["a"]["x"] = "changed by caller"
    instance.metadata["timestamps"]["created"] = "changed by caller"
    await manager.fire("b")
    await manager.join()
    assert seen == [{"a": {"x": 1}, "b": {}}]
    stored = (await manager.get_state()).instances["t#0"]
    assert stored.timestamps["created"] != "changed by caller"


async def test_setting_scheduled_dispatches_the_instance(sqlite_storage: SQLiteStorage) -> None:
    manager = TriggerManager(sqlite_storage, "requeue")
    await manager.update_configuration({"t": {"after": ["go"], "run": "rb.a", "using": "nowhere"}})
    await manager.fire("go")  # unknown runner: failed
    await manager.update_configuration({"t": {"after": ["go"], "run": "rb.a"}})
    await manager.update_instance_status("t#0", "scheduled")
    await manager.join()
    assert (await manager.get_state()).instances["t#0"].status is Status.FINISHED
