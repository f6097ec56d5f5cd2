"""The runner conformance suite: what every `BaseRunner` must guarantee.

The asyncio, Celery and Lambda runners and ``examples/custom_runner.py`` all pass
it; a third-party runner runs the same tests by subclassing `RunnerConformance`
and providing a ``runner_harness`` fixture that says how to drive the runner::

    import pytest
    from atriggers.storage import SQLiteStorage
    from atriggers.testing.conformance import RunnerConformance, RunnerHarness

    class TestMyRunner(RunnerConformance):
        @pytest.fixture
        async def runner_harness(self, tmp_path, my_workers):
            async with SQLiteStorage(tmp_path / "state.db") as storage:
                yield RunnerHarness(MyRunner(...), storage, unreachable=MyRunner(url_of_nothing))

The suite's tasks live in `atriggers.testing.conformance.tasks`: the runner's
workers must import that module (and register the runner under the same name,
for the cascades they dispatch). It checks that an instance and its cascade run
and are stored; that a duplicate delivery runs nothing again; that a failed
dispatch leaves the instance ``failed`` and replayable; that a retry's cooldown
is honoured; that a cancelled run is stored ``failed``, never left ``running``;
and that a session in a storage the workers cannot reach is refused.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
import pytest_asyncio

from ...instance import Status, TaskInstance
from ...manager import TriggerManager
from ...runners.base import BaseRunner, register_runner, runners
from ...storage.base import Storage
from ...storage.memory import MemoryStorage
from ...sweeper import Sweeper
from .tasks import BLOCK, ECHO, RETRY

__all__ = ["Redeliver", "RunnerConformance", "RunnerHarness"]

#: ``await redeliver(manager, instance)``: see `RunnerHarness.deliver_again`.
Redeliver = Callable[[TriggerManager, TaskInstance], Awaitable[None]]


@dataclass
class RunnerHarness:
    """How the suite drives one runner.

    `runner` is registered under `name` (default ``runner.name``) for each test,
    and every task of the suite is configured with ``using: name``. `storage` is
    open and reachable wherever the runner executes instances.

    `in_process`: instances run in the dispatching process, so any storage works
    (the memory-storage refusal is skipped). `unreachable`: a runner of the same
    kind whose dispatch fails (its broker or endpoint is down); None skips that
    test. `deliver_again`: hand an instance over once more, as a redelivered
    message would, and return once that delivery has been handled (default:
    ``runner.run`` again, then ``manager.join()``, enough for runners whose work
    in this process is tracked). `cancel`: make the runner's host cancel a
    running instance of the ``block`` task (default: cancel this process's runs,
    as a shutdown does; a no-op when the host cancels by itself, through a time
    limit). `directives`: extra configuration for the suite's tasks, keyed by
    task name (`tasks.ECHO`, ...). `within`: seconds to wait for an outcome.
    """

    runner: BaseRunner
    storage: Storage
    name: str = ""
    in_process: bool = False
    unreachable: BaseRunner | None = None
    deliver_again: Redeliver | None = None
    cancel: Redeliver | None = None
    directives: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    within: float = 30.0

    def __post_init__(self) -> None:
        self.name = self.name or self.runner.name


def _timestamp(instance: TaskInstance, status: str) -> float:
    return datetime.fromisoformat(instance.timestamps[status]).timestamp()


class RunnerConformance:
    """Subclass it (as ``Test...``) and provide a ``runner_harness`` fixture
    returning a `RunnerHarness`. Every test is a coroutine run by pytest-asyncio."""

    pytestmark = pytest.mark.asyncio

    #: The cooldown of the retry test, seconds.
    cooldown: float = 1.0

    @pytest_asyncio.fixture(autouse=True)
    async def _registered(self, runner_harness: RunnerHarness) -> AsyncIterator[None]:
        """Register the runner for the test; the registry is restored after it."""
        with runners.scoped():
            register_runner(runner_harness.runner, runner_harness.name)
            yield

    # -- helpers ---------------------------------------------------------------------

    @staticmethod
    async def _session(
        harness: RunnerHarness,
        tasks: Mapping[str, Mapping[str, Any]],
        storage: Storage | None = None,
    ) -> TriggerManager:
        manager = TriggerManager(storage or harness.storage, f"runner-{uuid.uuid4().hex[:12]}")
        await manager.update_configuration(
            {
                name: {**body, "using": harness.name, **harness.directives.get(body["run"], {})}
                for name, body in tasks.items()
            }
        )
        return manager

    @staticmethod
    async def _wait(
        harness: RunnerHarness,
        manager: TriggerManager,
        name: str,
        statuses: Collection[Status] = (Status.FINISHED, Status.FAILED),
    ) -> TaskInstance:
        """Poll storage (another process may be writing) until `name` reaches
        one of `statuses`; sleeping lets in-process runs progress meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + harness.within
        while True:
            state = await manager.storage.load_all(manager.uid)
            instance = state.instances.get(name)
            if instance is not None and instance.status in statuses:
                return instance
            if loop.time() > deadline:
                raise AssertionError(
                    f"{manager.uid}/{name} did not reach {[s.value for s in statuses]} "
                    f"within {harness.within}s:\n{state.debug_repr()}"
                )
            await asyncio.sleep(0.02)

    # -- the contract ----------------------------------------------------------------

    async def test_instance_and_cascade_run(self, runner_harness: RunnerHarness) -> None:
        manager = await self._session(
            runner_harness,
            {
                "first": {"after": ["go"], "run": ECHO},
                "second": {"after": ["first"], "run": ECHO},
            },
        )
        [scheduled] = await manager.fire("go", {"n": 1})
        assert scheduled.name == "first#0" and scheduled.status is Status.SCHEDULED
        # The cascade is dispatched by whoever ran "first", through the runner
        # registered under the same name there.
        second = await self._wait(runner_harness, manager, "second#0")
        first = await manager.get_instance("first#0")
        assert first.status is Status.FINISHED, first.metadata
        assert second.status is Status.FINISHED, second.metadata
        assert first.result is not None and first.result["instance"] == "first#0"
        assert second.kwargs["first"] == first.result
        assert {"scheduled", "running", "finished"} <= second.timestamps.keys()

    async def test_duplicate_delivery_runs_once(self, runner_harness: RunnerHarness) -> None:
        manager = await self._session(runner_harness, {"once": {"after": ["go"], "run": ECHO}})
        await manager.fire("go")
        done = await self._wait(runner_harness, manager, "once#0")
        assert done.status is Status.FINISHED, done.metadata
        before = await manager.storage.load_all(manager.uid)
        if runner_harness.deliver_again is None:
            await runner_harness.runner.run(manager, done)
            await manager.join()
        else:
            await runner_harness.deliver_again(manager, done)
        after = await manager.storage.load_all(manager.uid)
        # Only a scheduled instance runs: the duplicate wrote nothing.
        assert after.version == before.version
        assert after.instances == before.instances

    async def test_failed_dispatch_is_stored_and_replayable(self, runner_harness: RunnerHarness) -> None:
        if runner_harness.unreachable is None:
            pytest.skip("this runner has no dispatch that can fail")
        manager = await self._session(runner_harness, {"lost": {"after": ["go"], "run": ECHO}})
        register_runner(runner_harness.unreachable, runner_harness.name)
        try:
            scheduled = await manager.fire("go", {"n": 1})  # does not raise
        finally:
            register_runner(runner_harness.runner, runner_harness.name)
        assert [i.name for i in scheduled] == ["lost#0"]
        failed = await self._wait(runner_harness, manager, "lost#0")
        assert failed.status is Status.FAILED
        assert failed.metadata["exceptionType"] and failed.metadata["exceptionInfo"]
        clone = await manager.replay_failed_instance("lost#0")
        done = await self._wait(runner_harness, manager, clone.name)
        assert done.status is Status.FINISHED, done.metadata
        assert done.parent == "lost#0" and done.kwargs == failed.kwargs
        assert (await manager.get_instance("lost#0")).status is Status.REPLAYED

    async def test_retry_cooldown_is_honoured(self, runner_harness: RunnerHarness) -> None:
        manager = await self._session(runner_harness, {"flaky": {"after": ["go"], "run": RETRY}})
        # The clone waits in the due index; a sweeper here (as an application runs
        # one) dispatches it when the cooldown is over, wherever the retry happened.
        async with Sweeper(manager.storage, interval=0.05):
            await manager.fire("go", {"cooldown": self.cooldown})
            clone = await self._wait(runner_harness, manager, "flaky#1")
        assert clone.status is Status.FINISHED, clone.metadata
        first = await manager.get_instance("flaky#0")
        assert first.status is Status.REPLAYED
        assert clone.parent == "flaky#0" and clone.cooldown == self.cooldown
        waited = _timestamp(clone, "running") - _timestamp(first, "replayed")
        # A little slack for the clocks of timestamps written by two processes.
        assert waited >= self.cooldown - 0.05, waited

    async def test_cancelled_run_is_stored_failed(self, runner_harness: RunnerHarness) -> None:
        manager = await self._session(runner_harness, {"long": {"after": ["go"], "run": BLOCK}})
        await manager.fire("go", {"seconds": 60})
        running = await self._wait(runner_harness, manager, "long#0", (Status.RUNNING, Status.FAILED))
        if runner_harness.cancel is None:
            await manager.storage.drain(0)
        else:
            await runner_harness.cancel(manager, running)
        failed = await self._wait(runner_harness, manager, "long#0", (Status.FAILED, Status.FINISHED))
        assert failed.status is Status.FAILED, failed.metadata
        assert failed.metadata["exceptionType"] and failed.metadata["exceptionInfo"]
        assert failed.can_replay

    async def test_memory_storage_is_refused(self, runner_harness: RunnerHarness) -> None:
        if runner_harness.in_process:
            pytest.skip("this runner runs instances in this process: memory storage is fine")
        async with MemoryStorage() as memory:
            manager = await self._session(runner_harness, {"far": {"after": ["go"], "run": ECHO}}, memory)
            await manager.fire("go")  # does not raise
            failed = await self._wait(runner_harness, manager, "far#0")
        assert failed.status is Status.FAILED
        assert memory.url in failed.metadata["exceptionInfo"]
        assert failed.result is None
