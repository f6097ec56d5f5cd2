"""The Celery runner end to end: a real redis-server broker, a real prefork
`celery worker`, session state in a SQLite file shared with the worker."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import celery_worker_app as wapp
import pytest
from celery_helpers import Worker, WorkerFactory, all_resolved, purge, wait_for_state

from atriggers import Status, TriggerManager
from atriggers.remote import RunRequest
from atriggers.storage import MemoryStorage, SQLiteStorage

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


def _ts(instance: Any, status: str) -> float:
    return datetime.fromisoformat(instance.timestamps[status]).timestamp()


async def test_retry_goes_through_atriggers_and_cooldown_is_a_countdown(
    worker: Worker, storage: SQLiteStorage
) -> None:
    manager = wapp.CeleryManager(storage, "flaky")
    await manager.update_configuration({"t_flaky": {"after": ["go"], "run": "tests.flaky"}})
    await manager.fire("go", {"failures": 1, "cooldown": 1.5})
    state = await wait_for_state(
        manager,
        lambda s: "t_flaky#1" in s.instances and s.instances["t_flaky#1"].status is Status.FINISHED,
        explain=worker.output,
    )
    first, second = state.instances["t_flaky#0"], state.instances["t_flaky#1"]
    assert first.status is Status.REPLAYED
    assert first.metadata["exceptionType"] == "builtins.ConnectionError"
    assert second.parent == "t_flaky#0" and second.depth == 1
    assert second.cooldown == 1.5
    # The clone was sent from the worker with countdown=1.5: it ran no sooner.
    waited = _ts(second, "running") - _ts(first, "replayed")
    assert 1.5 - 0.05 <= waited < 10, waited
    assert second.result is not None and second.result["depth"] == 1


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


async def test_soft_time_limit_fails_the_instance_with_the_reason(
    worker: Worker, storage: SQLiteStorage
) -> None:
    manager = wapp.CeleryManager(storage, "sleepy")
    await manager.update_configuration({"t_sleepy": {"after": ["go"], "run": "tests.sleepy"}})
    await manager.fire("go", {})
    state = await wait_for_state(
        manager, lambda s: s.instances["t_sleepy#0"].status is Status.FAILED, explain=worker.output
    )
    info = state.instances["t_sleepy#0"].metadata["exceptionInfo"]
    assert "interrupted by SoftTimeLimitExceeded" in info
    assert state.instances["t_sleepy#0"].metadata["exceptionType"].endswith("CancelledError")


async def test_a_duplicate_delivery_does_not_run_again(worker: Worker, storage: SQLiteStorage) -> None:
    manager = wapp.CeleryManager(storage, "twice")
    await manager.update_configuration({"t_where": {"after": ["go"], "run": "tests.where"}})
    await manager.fire("go", {})
    state = await wait_for_state(manager, all_resolved, explain=worker.output)
    first = state.instances["t_where#0"]
    # The same message again, as a redelivery would bring it.
    payload = RunRequest.for_instance(manager, first).to_dict()
    result = wapp.app.send_task("tests.where", args=[payload], ignore_result=True)
    deadline = time.monotonic() + 20
    while f"{result.id}] succeeded" not in worker.output():
        assert time.monotonic() < deadline, worker.output()
        await asyncio.sleep(0.05)
    assert "'instance': 't_where#0', 'ran': False" in worker.output()
    again = await manager.get_state()
    assert again.instances["t_where#0"] == first  # untouched
    assert again.version == state.version


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
