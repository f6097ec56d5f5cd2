"""A worker killed with SIGKILL in the middle of a task: the instance it ran is
recovered automatically, by its task's ``onLost`` policy, by a sweeper in
another process (here the test process), once the worker's owner lease lapses.
No operator is involved."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import celery_worker_app as wapp
import pytest
from celery_helpers import WorkerFactory, purge, wait_for_state

from atriggers import SessionState, Status, Sweeper, TriggerManager
from atriggers.clock import from_iso
from atriggers.storage import SQLiteStorage

pytestmark = pytest.mark.celery

#: The owner lease of every process on the storage (workers read it from the
#: storage URL the runner sends), and the sweep interval, in seconds.
LEASE = 1.0
INTERVAL = 0.2


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    async with SQLiteStorage(tmp_path / "state.db", lease=LEASE) as storage:
        yield storage


async def test_killed_worker_is_recovered_by_policy(
    redis_url: str, start_worker: WorkerFactory, storage: SQLiteStorage
) -> None:
    broker = f"{redis_url}/2"
    purge(broker)
    wapp.app.conf.broker_url = broker
    assert storage.url.endswith(f"?lease={LEASE:g}")  # what workers open
    try:
        # "tests.block_first" is routed to the "doomed" queue; two slots, so
        # that both instances run at once in the worker that gets killed.
        doomed = start_worker("celery_worker_app", broker, queues=["doomed"], pool="threads", concurrency=2)
        manager = TriggerManager(storage, "victim", default_runner="celery")
        await manager.update_configuration(
            {
                "t_fail": {"after": ["go"], "run": "tests.block_first", "onLost": "fail"},
                "t_retry": {"after": ["go"], "run": "tests.block_first", "onLost": "retry"},
            }
        )
        await manager.fire("go", {"seconds": 60})
        state = await wait_for_state(
            manager,
            lambda s: all(s.instances[n].status is Status.RUNNING for n in ("t_fail#0", "t_retry#0")),
            explain=doomed.output,
        )
        owners = {state.instances[n].owner for n in ("t_fail#0", "t_retry#0")}
        assert len(owners) == 1 and None not in owners, owners  # the worker's lease holds them

        os.kill(doomed.pid, signal.SIGKILL)
        killed = time.time()
        doomed.process.wait(10)
        # A fresh worker, for the retry's clone (the queue is the same).
        fresh = start_worker("celery_worker_app", broker, queues=["doomed"])

        def recovered(s: SessionState) -> bool:
            clones = [i for i in s.instances.values() if i.parent == "t_retry#0"]
            return (
                s.instances["t_fail#0"].status is Status.FAILED
                and s.instances["t_retry#0"].status is Status.REPLAYED
                and any(i.status is Status.FINISHED for i in clones)
            )

        async with Sweeper(storage, interval=INTERVAL) as sweeper:
            state = await wait_for_state(manager, recovered, explain=fresh.output)
        assert sweeper.counts.get("lost") == 2, sweeper.counts

        failed = state.instances["t_fail#0"]
        assert failed.metadata["exceptionType"] == "atriggers.errors.InstanceLost"
        assert failed.metadata["exceptionContext"]["ownerStopped"] is True
        clone = next(i for i in state.instances.values() if i.parent == "t_retry#0")
        assert clone.metadata["result"]["pid"] == fresh.pid
        assert state.instances["t_retry#0"].metadata["exceptionType"] == "atriggers.errors.InstanceLost"
        lost_after = {
            n: from_iso(state.instances[n].timestamps["failed"]) - killed for n in ("t_fail#0", "t_retry#0")
        }
        for name, seconds in lost_after.items():
            assert 0 < seconds <= LEASE + INTERVAL + 0.8, (name, seconds)
        print(
            "\n[celery] lost after SIGKILL: "
            + ", ".join(f"{n} {s:.2f}s" for n, s in lost_after.items())
            + f"; retry clone finished {from_iso(clone.timestamps['finished']) - killed:.2f}s after"
        )
    finally:
        wapp.runner.close()
