"""Dispatching to Celery without a worker: the raw message on a real redis
broker (routing, payload, no countdown), a broker that is down or never answers,
eager mode, and what must never be imported or accepted."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import celery_worker_app as wapp
import pytest
import redis
from celery import Celery  # type: ignore[import-untyped]
from celery_helpers import purge, queued_messages

from atriggers import InvalidInput, Status, TriggerManager
from atriggers.remote import RunRequest
from atriggers.runners import get_runner, register_runner
from atriggers.runners.celery import (
    CeleryDispatchError,
    CeleryRunner,
    EagerModeError,
    celery_task,
)
from atriggers.storage import SQLiteStorage

pytestmark = pytest.mark.celery

PARKED = {"t_parked": {"after": ["go"], "run": "tests.parked"}}


@pytest.fixture(scope="module")
def broker(redis_url: str) -> Iterator[str]:
    url = f"{redis_url}/1"
    wapp.app.conf.broker_url = url
    yield url
    wapp.runner.close()


@pytest.fixture(autouse=True)
def restore_runner() -> Iterator[None]:
    yield
    register_runner(wapp.runner)


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    async with SQLiteStorage(tmp_path / "state.db") as storage:
        yield storage


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def app_for(url: str) -> Celery:
    app = Celery("elsewhere", broker=url, set_as_current=False)
    app.conf.task_routes = wapp.app.conf.task_routes
    return app


async def test_message_is_routed_json_with_the_run_request(broker: str, storage: SQLiteStorage) -> None:
    purge(broker)
    manager = TriggerManager(storage, "routed", default_runner="celery")
    await manager.update_configuration(PARKED)
    [instance] = await manager.fire("go", {"x": 1})
    assert instance.status is Status.SCHEDULED
    [message] = queued_messages(broker, "parked")  # task_routes sent it to "parked"
    assert message["content_type"] == "application/json"
    assert message["headers"]["task"] == "tests.parked"
    assert message["headers"]["eta"] is None
    # The manager's own default runner travels along, so the worker's cascades go to Celery too.
    expected = RunRequest(storage.url, "routed", "t_parked#0", "default", runner="celery")
    assert message["args"] == [expected.to_dict()]
    assert message["args"][0] == {
        "storage": storage.url,
        "uid": "routed",
        "instance": "t_parked#0",
        "manager": "default",
        "runner": "celery",
    }
    state = await manager.get_state()
    assert state.instances["t_parked#0"].status is Status.SCHEDULED  # until a worker takes it


async def test_a_cooldown_is_not_a_countdown(broker: str, storage: SQLiteStorage) -> None:
    # A retry's cooldown waits in the due index (durable, whoever dies), and the
    # clone reaches the runner only once it is over: the message carries no ETA
    # for a worker to hold in memory.
    purge(broker)
    manager = TriggerManager(storage, "cooling")
    await manager.update_configuration(PARKED)
    [instance] = await manager.fire("go", {})  # asyncio would run it: "tests.parked" fails fast
    await manager.join()
    cooled = dataclasses.replace(instance, metadata={**instance.metadata, "cooldown": 30})
    await wapp.runner.run(manager, cooled)
    [message] = queued_messages(broker, "parked")
    assert message["headers"].get("eta") is None


async def test_send_options_choose_the_queue(broker: str, storage: SQLiteStorage) -> None:
    purge(broker)
    register_runner(CeleryRunner(wapp.app, queue="elsewhere"))
    manager = TriggerManager(storage, "queued", default_runner="celery")
    await manager.update_configuration({"t": {"after": ["go"], "run": "tests.where"}})
    await manager.fire("go", {})
    [message] = queued_messages(broker, "elsewhere")
    assert message["headers"]["task"] == "tests.where"


async def test_broker_down_fails_fast_naming_the_broker(storage: SQLiteStorage, closed_port: int) -> None:
    # That the instance is then failed and replayable is RunnerConformance's job.
    down = CeleryRunner(app_for(f"redis://127.0.0.1:{closed_port}/0"))
    register_runner(down)
    manager = TriggerManager(storage, "down", default_runner="celery")
    await manager.update_configuration(PARKED)
    started = time.monotonic()
    await manager.fire("go", {"x": 1})
    elapsed = time.monotonic() - started
    assert elapsed < 5, elapsed
    failed = await manager.get_instance("t_parked#0")
    assert failed.metadata["exceptionType"] == "atriggers.runners.celery.CeleryDispatchError"
    assert f"127.0.0.1:{closed_port}" in failed.metadata["exceptionInfo"]
    assert "Connection refused" in failed.metadata["exceptionInfo"]
    with pytest.raises(CeleryDispatchError, match=r"cannot send Celery task 'tests\.parked'"):
        await down.run(manager, failed)
    await down.aclose()


async def test_a_silent_broker_cannot_hang_dispatch(storage: SQLiteStorage, black_hole: int) -> None:
    silent = CeleryRunner(
        app_for(f"redis://127.0.0.1:{black_hole}/0"), dispatch_timeout=1.5, socket_timeout=0.3
    )
    register_runner(silent)
    manager = TriggerManager(storage, "silent", default_runner="celery")
    await manager.update_configuration(PARKED)
    started = time.monotonic()
    await manager.fire("go", {})
    elapsed = time.monotonic() - started
    assert elapsed < 2.5, elapsed
    failed = await manager.get_instance("t_parked#0")
    assert failed.status is Status.FAILED
    assert failed.metadata["exceptionType"] == "atriggers.runners.celery.CeleryDispatchError"
    silent.close()


async def test_eager_mode_is_refused(storage: SQLiteStorage, broker: str) -> None:
    eager = Celery("eager", broker=broker, set_as_current=False)
    eager.conf.task_always_eager = True
    with pytest.raises(EagerModeError, match="task_always_eager"):
        CeleryRunner(eager)
    # Switched to eager after the runner was made: the dispatch fails, clearly.
    late = Celery("late", broker=broker, set_as_current=False)
    runner = CeleryRunner(late)
    late.conf.task_always_eager = True
    register_runner(runner)
    manager = TriggerManager(storage, "eager", default_runner="celery")
    await manager.update_configuration(PARKED)
    await manager.fire("go", {})
    failed = await manager.get_instance("t_parked#0")
    assert failed.status is Status.FAILED
    assert "EagerModeError" in failed.metadata["exceptionType"]
    assert "task_always_eager" in failed.metadata["exceptionInfo"]


def test_trigger_tasks_refuse_to_run_eagerly(broker: str) -> None:
    payload = RunRequest("sqlite:////nonexistent.db", "u", "t#0").to_dict()
    with pytest.raises(EagerModeError, match="eagerly"):
        wapp.app.tasks["tests.where"].apply(args=[payload], throw=True)


async def test_aclose_closes_the_broker_connections_and_they_reopen(
    broker: str, storage: SQLiteStorage
) -> None:
    purge(broker)
    runner = register_runner(CeleryRunner(wapp.app))
    manager = TriggerManager(storage, "aclose", default_runner="celery")
    await manager.update_configuration({"t": {"after": ["go"], "andEvery": "go", "run": "tests.parked"}})
    watcher = redis.Redis.from_url(broker)
    try:
        # Compared by address: other tests' connections to this broker may come
        # and go meanwhile, so counting them is not enough.
        before = {client["addr"] for client in watcher.client_list()}
        await manager.fire("go", {})
        opened = {client["addr"] for client in watcher.client_list()} - before
        assert opened  # the runner's pooled connection
        await runner.aclose()
        assert not opened & {client["addr"] for client in watcher.client_list()}
        await runner.aclose()  # twice is fine
        [again] = await manager.fire("go", {})  # the pool reopens on use
        assert again.status is Status.SCHEDULED
        assert len(queued_messages(broker, "parked")) == 2
    finally:
        await runner.aclose()
        watcher.close()


def test_celery_retry_options_are_refused() -> None:
    with pytest.raises(InvalidInput, match="autoretry_for"):
        celery_task(wapp.app, "tests.nope", autoretry_for=(Exception,))


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="dispatch_timeout"):
        CeleryRunner(wapp.app, dispatch_timeout=0)


def test_core_never_imports_celery_and_the_entry_point_finds_the_runner() -> None:
    code = (
        "import sys, atriggers, atriggers.runners, atriggers.remote, atriggers.storage\n"
        "assert 'celery' not in sys.modules and 'kombu' not in sys.modules, 'imported'\n"
        "import celery\n"
        "app = celery.Celery('ep')\n"
        "from atriggers.runners import get_runner\n"
        "runner = get_runner('celery')\n"
        "print(type(runner).__name__, runner.app.main)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["CeleryRunner", "ep"]


def test_registered_runner_is_found_by_name(broker: str) -> None:
    assert get_runner("celery") is wapp.runner
