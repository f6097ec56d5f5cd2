"""The Celery runner end to end: a real redis-server broker, a real prefork
`celery worker`, session state in a SQLite file shared with the worker."""

from __future__ import annotations

import asyncio
import copy
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import celery_worker_app as wapp
import pytest
from celery import Celery  # type: ignore[import-untyped]
from celery_helpers import Worker, WorkerFactory, all_resolved, purge, wait_for_state

from atriggers import Status, TaskInstance, TriggerManager
from atriggers.remote import RunRequest
from atriggers.runners.celery import CeleryRunner
from atriggers.storage import MemoryStorage, SQLiteStorage
from atriggers.testing.conformance import RunnerConformance, RunnerHarness

pytestmark = pytest.mark.celery

questionnaire = wapp.questionnaire


@pytest.fixture(scope="module")
def worker(redis_url: str, start_worker: WorkerFactory) -> Iterator[Worker]:
    broker = f"{redis_url}/0"
    purge(broker)
    wapp.app.conf.broker_url = broker
    worker = start_worker("celery_worker_app", broker, pool="prefork", concurrency=2)
    yield worker
    wapp.runner.close()
    wapp.app.close()


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    async with SQLiteStorage(tmp_path / "state.db") as storage:
        yield storage


def summary(manager_state: Any) -> list[tuple[str, str, list[str], Any]]:
    return sorted(
        (i.name, i.status.value, sorted(i.kwargs), i.result) for i in manager_state.instances.values()
    )


async def drive(manager: TriggerManager, *, embedded: bool = False) -> None:
    if embedded:
        await manager.fire("isEmbeddedApplication", {"app": "ios"})
    await manager.fire("firstPageReceived", {"name": "Ada"})
    for page in questionnaire.PAGES:
        await manager.fire("pageReceived", page)
    await manager.fire("questionnaireComplete", {"pages": len(questionnaire.PAGES)})


async def reference(embedded: bool) -> list[tuple[str, str, list[str], Any]]:
    """The same workflow on the in-process asyncio runner."""
    async with MemoryStorage() as memory:
        manager = TriggerManager(memory, "reference")
        await manager.update_configuration(questionnaire.CONFIGURATION)
        await drive(manager, embedded=embedded)
        await manager.join()
        return summary(await manager.get_state())


async def test_questionnaire_runs_on_celery_like_on_asyncio(worker: Worker, storage: SQLiteStorage) -> None:
    # A manager whose default runner is "celery"; the worker rebuilds it by name.
    manager = wapp.CeleryManager(storage, "respondent-web")
    await manager.update_configuration(questionnaire.CONFIGURATION)
    await drive(manager)
    state = await wait_for_state(
        manager,
        lambda s: len(s.instances) == 6 and all_resolved(s),
        explain=worker.output,
    )
    assert summary(state) == await reference(embedded=False)
    assert all(i.status is Status.FINISHED for i in state.instances.values())
    score = state.instances["t_computePsychometricScore#0"]
    assert score.result == {"subjectId": "subject-ada", "model": "Psych 01", "score": 0.87}
    assert {"scheduled", "running", "finished"} <= score.timestamps.keys()


async def test_using_celery_per_task_with_unless(worker: Worker, storage: SQLiteStorage) -> None:
    configuration = copy.deepcopy(questionnaire.CONFIGURATION)
    for body in configuration.values():
        body["using"] = "celery"
    manager = TriggerManager(storage, "respondent-app")  # default runner: asyncio
    await manager.update_configuration(configuration)
    await drive(manager, embedded=True)
    state = await wait_for_state(
        manager,
        lambda s: len(s.instances) == 6 and all_resolved(s),
        explain=worker.output,
    )
    assert summary(state) == await reference(embedded=True)
    assert state.instances["t_importBrowserMetadata#0"].status is Status.ABANDONED


async def test_failure_is_stored_with_its_context(worker: Worker, storage: SQLiteStorage) -> None:
    manager = wapp.CeleryManager(storage, "failing")
    await manager.update_configuration({"t_fail": {"after": ["go"], "run": "tests.fail"}})
    await manager.fire("go", {})
    state = await wait_for_state(
        manager, lambda s: s.instances["t_fail#0"].status is Status.FAILED, explain=worker.output
    )
    failed = state.instances["t_fail#0"]
    assert failed.metadata["exceptionType"] == "builtins.ValueError"
    assert "no such subject" in failed.metadata["exceptionInfo"]
    assert failed.metadata["exceptionContext"] == {"subject": "ada"}
    # Replaying goes to Celery again and fails again: history stays in the session.
    clone = await manager.replay_failed_instance("t_fail#0")
    state = await wait_for_state(
        manager, lambda s: s.instances[clone.name].status is Status.FAILED, explain=worker.output
    )
    assert state.instances["t_fail#0"].status is Status.REPLAYED
    assert state.instances[clone.name].parent == "t_fail#0"


async def test_instances_of_many_sessions_run_concurrently(worker: Worker, storage: SQLiteStorage) -> None:
    managers = [wapp.CeleryManager(storage, f"many-{n}") for n in range(10)]
    started = time.monotonic()
    for manager in managers:
        await manager.update_configuration({"t_where": {"after": ["go"], "run": "tests.where"}})
        await manager.fire("go", {})
    pids = set()
    for manager in managers:
        state = await wait_for_state(manager, all_resolved, explain=worker.output)
        instance = state.instances["t_where#0"]
        assert instance.status is Status.FINISHED
        assert instance.result is not None
        pids.add(instance.result["pid"])
    assert worker.pid not in pids  # prefork: children run the tasks
    assert time.monotonic() - started < 20


async def test_a_worker_that_cannot_rebuild_the_session_fails_loudly(
    worker: Worker, storage: SQLiteStorage
) -> None:
    manager = TriggerManager(storage, "orphan")
    await manager.update_configuration(
        {"t_where": {"after": ["go"], "run": "tests.where", "using": "parked"}}
    )
    await manager.fire("go", {})  # no runner "parked": stored failed; we only need the row
    payload = {
        "storage": storage.url,
        "uid": "orphan",
        "instance": "t_where#0",
        "manager": "not-registered-in-the-worker",
    }
    result = wapp.app.send_task("tests.where", args=[payload], ignore_result=True)
    deadline = time.monotonic() + 20
    while f"{result.id}] raised unexpected: UnknownManager" not in worker.output():
        assert time.monotonic() < deadline, worker.output()
        await asyncio.sleep(0.05)
    assert "no trigger manager registered as 'not-registered-in-the-worker'" in worker.output()


async def deliver_again(worker: Worker, manager: TriggerManager, instance: TaskInstance) -> None:
    """The same message again, as a redelivery brings it; returns once handled."""
    payload = RunRequest.for_instance(manager, instance).to_dict()
    run = instance.config.run if instance.config else instance.task_name
    result = wapp.app.send_task(run, args=[payload], ignore_result=True)
    deadline = time.monotonic() + 20
    while f"{result.id}] succeeded" not in worker.output():
        assert time.monotonic() < deadline, worker.output()
        await asyncio.sleep(0.05)
    assert f"'instance': '{instance.name}', 'ran': False" in worker.output()


async def cancelled_by_the_soft_time_limit(manager: TriggerManager, instance: TaskInstance) -> None:
    """Nothing to do: the worker's soft time limit of the "block" task cancels it."""


class TestCeleryRunnerConformance(RunnerConformance):
    @pytest.fixture
    async def runner_harness(self, worker: Worker, storage: SQLiteStorage) -> AsyncIterator[RunnerHarness]:
        with socket.socket() as sock:  # a port nothing listens on: the broker is down
            sock.bind(("127.0.0.1", 0))
            closed_port = sock.getsockname()[1]
        down = CeleryRunner(Celery("down", broker=f"redis://127.0.0.1:{closed_port}/0", set_as_current=False))
        yield RunnerHarness(
            wapp.runner,
            storage,
            unreachable=down,
            deliver_again=lambda manager, instance: deliver_again(worker, manager, instance),
            cancel=cancelled_by_the_soft_time_limit,
        )
        await down.aclose()
