"""A worker killed with SIGKILL in the middle of a task: the instance stays
``running`` (visible, never silently lost), and an operator recovers it by
failing it and replaying it (docs/runners.md, "When a worker dies")."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import celery_worker_app as wapp
import pytest
from celery_helpers import WorkerFactory, purge, wait_for_state

from atriggers import Status, TriggerManager
from atriggers.storage import SQLiteStorage

pytestmark = pytest.mark.celery


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    async with SQLiteStorage(tmp_path / "state.db") as storage:
        yield storage


async def test_killed_worker_leaves_running_and_operator_recovers(
    redis_url: str, start_worker: WorkerFactory, storage: SQLiteStorage
) -> None:
    broker = f"{redis_url}/2"
    purge(broker)
    wapp.app.conf.broker_url = broker
    try:
        # "tests.block" is routed to the "doomed" queue.
        doomed = start_worker("celery_worker_app", broker, queues=["doomed"])
        manager = TriggerManager(storage, "victim", default_runner="celery")
        await manager.update_configuration({"t_block": {"after": ["go"], "run": "tests.block"}})
        await manager.fire("go", {"seconds": 60})
        await wait_for_state(
            manager,
            lambda s: s.instances["t_block#0"].status is Status.RUNNING,
            explain=doomed.output,
        )

        os.kill(doomed.pid, signal.SIGKILL)
        doomed.process.wait(10)

        # Nobody will ever finish or fail it: it stays "running", and says since when.
        state = await manager.get_state()
        lost = state.instances["t_block#0"]
        assert lost.status is Status.RUNNING
        assert "running" in lost.timestamps
        assert [i.name for i in state.get_unresolved_instances()] == ["t_block#0"]

        # The operator's recovery: fail it with the reason, then replay it.
        await manager.update_instance_status(
            "t_block#0", "failed", {"reason": "worker killed (SIGKILL) while running"}
        )
        clone = await manager.replay_failed_instance("t_block#0", {"go": {"seconds": 0}})
        start_worker("celery_worker_app", broker, queues=["doomed"])
        state = await wait_for_state(manager, lambda s: s.instances[clone.name].status is Status.FINISHED)
        assert state.instances["t_block#0"].status is Status.REPLAYED
        assert state.instances["t_block#0"].metadata["reason"].startswith("worker killed")
        assert state.instances[clone.name].parent == "t_block#0"
        assert not state.get_unresolved_instances()
    finally:
        wapp.runner.close()
