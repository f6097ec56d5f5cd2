"""Recovery against real faults: an app process SIGKILLed mid-stream, on an
SQLite file and on a real redis-server. Another process's sweeper (this test
process) recovers every instance it held, by its task's ``onLost`` policy,
within lease + sweep interval, and performs its durable timers on time."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "faults"))
import recovery_tasks
from fault_helpers import HERE, Child, RedisProcess

from atriggers import SessionState, Status, Sweeper
from atriggers.clock import from_iso
from atriggers.storage import SQLiteStorage
from atriggers.storage.base import Storage

pytestmark = pytest.mark.slow

#: The app's owner lease, the sweep interval, and what a pass may take on a
#: loaded machine (seconds).
LEASE = 1.0
INTERVAL = 0.2
SLACK = 0.8
#: The cooldown of the retry and the delay of the delayed fire.
WAIT = 3.0


@pytest.fixture(scope="module")
def redis_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def open_storage(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[str, Storage]:
    """Where the app's storage is (as `recovery_app.py` takes it) and this
    process's own storage on it."""
    if kind == "sqlite":
        path = tmp_path / "state.db"
        return str(path), SQLiteStorage(path, lease=LEASE)
    pytest.importorskip("redis")
    from atriggers.storage.redis import RedisStorage

    server: RedisProcess = request.getfixturevalue("redis_process")
    prefix = f"r{uuid.uuid4().hex[:8]}:"
    return f"{server.url}?prefix={prefix}", RedisStorage(server.url, prefix=prefix, lease=LEASE)


async def wait_until(storage: Storage, uid: str, done: Any, within: float, what: str) -> SessionState:
    deadline = time.monotonic() + within
    while True:
        state = await storage.load_all(uid)
        if done(state):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {within}s:\n{state.debug_repr()}")
        await asyncio.sleep(0.05)


def stamp(state: SessionState, name: str, status: str) -> float:
    return from_iso(state.instances[name].timestamps[status])


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_killed_app_is_recovered_by_policy(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs_db = tmp_path / "runs.sqlite3"
    recovery_tasks.create_runs_table(runs_db)
    monkeypatch.setenv(recovery_tasks.RUNS_DB, str(runs_db))
    monkeypatch.delenv("RECOVERY_BLOCK", raising=False)
    where, storage = open_storage(kind, tmp_path, request)
    uid = "app"
    app = Child(
        [str(HERE / "recovery_app.py"), kind, where, uid],
        {
            recovery_tasks.RUNS_DB: str(runs_db),
            "RECOVERY_BLOCK": "1",
            "RECOVERY_LEASE": str(LEASE),
            "RECOVERY_DELAY": str(WAIT),
            "RECOVERY_COOLDOWN": str(WAIT),
        },
    )
    try:
        info = app.ready()
    finally:
        killed = app.kill()
    # This process plays "another machine": the same tasks and runners.
    recovery_tasks.register()
    async with storage:
        before = await storage.load_all(uid)
        owner = info["owner"]
        # What the app held when it died: two runs, two waiting for a slot (held
        # by its lease), a cooldown clone and a delayed fire in the due index.
        for name in ("t_run_fail#0", "t_run_retry#0"):
            assert before.instances[name].status is Status.RUNNING
            assert before.instances[name].owner == owner
        for name in ("t_wait_fail#0", "t_wait_retry#0"):
            assert before.instances[name].status is Status.SCHEDULED
            assert before.instances[name].owner == owner
        assert before.instances["t_cool#1"].status is Status.SCHEDULED
        not_before = from_iso(before.instances["t_cool#1"].metadata["notBefore"])
        # The timers must still be pending when the app dies, or this proves nothing.
        assert not_before > killed and info["lateAt"] > killed, (not_before, info["lateAt"], killed)

        def done(state: SessionState) -> bool:
            late = state.instances.get("t_late#0")
            pending = (Status.UNSTARTED, Status.SCHEDULED, Status.RUNNING)
            return (
                late is not None
                and late.status is Status.FINISHED
                and not any(i.status in pending for i in state.instances.values())
            )

        async with Sweeper(storage, interval=INTERVAL) as sweeper:
            state = await wait_until(storage, uid, done, LEASE + WAIT + 10, "recovery")
        counts = dict(sweeper.counts)

    instances = state.instances
    # onLost "fail": failed with InstanceLost, whether running or waiting for a slot.
    for name in ("t_run_fail#0", "t_wait_fail#0"):
        assert instances[name].status is Status.FAILED, instances[name]
        assert instances[name].metadata["exceptionType"] == "atriggers.errors.InstanceLost"
    # onLost "retry": replayed, and the clone ran to finished here.
    clones = {i.parent: i for i in instances.values() if i.parent}
    for name in ("t_run_retry#0", "t_wait_retry#0"):
        assert instances[name].status is Status.REPLAYED, instances[name]
        assert clones[name].status is Status.FINISHED, clones[name]
    assert instances["t_cool#1"].status is Status.FINISHED
    assert instances["t_late#0"].status is Status.FINISHED

    # Every lost instance was recovered after the app died, within lease + interval.
    lost_after = {
        name: stamp(state, name, "failed") - killed
        for name in ("t_run_fail#0", "t_run_retry#0", "t_wait_fail#0", "t_wait_retry#0")
    }
    for name, seconds in lost_after.items():
        assert 0 < seconds <= LEASE + INTERVAL + SLACK, (name, seconds)

    # What ran where: the app ran the two blocking runs and the cooldown's first
    # run; everything else ran here, once, after the app was dead.
    runs = recovery_tasks.runs(runs_db, uid)
    names = [run["instance"] for run in runs]
    assert len(names) == len(set(names)), f"an instance ran twice: {runs}"
    in_app = {run["instance"] for run in runs if run["pid"] == info["pid"]}
    assert in_app == {"t_run_fail#0", "t_run_retry#0", "t_cool#0"}
    started = {run["instance"]: run["started"] for run in runs}
    for run in runs:
        if run["pid"] != info["pid"]:
            assert run["started"] > killed, run
    assert "t_wait_fail#0" not in started and "t_wait_retry#0" not in started
    # The durable timers happened on time (not before, and within the interval).
    cool_late = started["t_cool#1"] - not_before
    delay_late = started["t_late#0"] - info["lateAt"]
    assert 0 <= cool_late <= INTERVAL + SLACK, cool_late
    assert 0 <= delay_late <= INTERVAL + SLACK, delay_late
    assert counts.get("lost") == 4 and counts.get("released") == 1 and counts.get("delay") == 1, counts
    print(
        f"\n[{kind}] lost after kill: "
        + ", ".join(f"{n} {s:.2f}s" for n, s in lost_after.items())
        + f"; cooldown clone {cool_late:.2f}s after notBefore; delayed fire {delay_late:.2f}s after due;"
        f" sweeper counts {counts}"
    )
