"""Recovery against real faults: an app process SIGKILLed mid-stream, on an
SQLite file, on a real redis-server and on a real PostgreSQL server. Another
process's sweeper (this test process) recovers every instance it held, by its
task's ``onLost`` policy, within lease + sweep interval, and performs its
durable timers on time."""

from __future__ import annotations

import asyncio
import signal
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

from atriggers import SessionState, Status, Sweeper, TriggerManager
from atriggers.clock import from_iso
from atriggers.storage import SQLiteStorage
from atriggers.storage.base import Storage
from atriggers.testing.postgres import PostgresCluster

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
    if kind == "postgres":
        from atriggers.storage.postgres import PostgresStorage

        cluster = request.getfixturevalue("postgres_cluster")
        schema = f"r{uuid.uuid4().hex[:8]}"
        return f"{cluster.url}?schema={schema}", PostgresStorage(cluster.url, schema=schema, lease=LEASE)
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


@pytest.mark.parametrize("kind", ["sqlite", "redis", "postgres"])
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
    # The cooldown clone is released by the sweeper (its app is dead); the two
    # retry clones' backoffs end too, released by the sweeper or by this
    # process's own timers, whichever comes first.
    assert counts.get("lost") == 4 and counts.get("delay") == 1, counts
    assert 1 <= counts.get("released", 0) <= 3, counts
    print(
        f"\n[{kind}] lost after kill: "
        + ", ".join(f"{n} {s:.2f}s" for n, s in lost_after.items())
        + f"; cooldown clone {cool_late:.2f}s after notBefore; delayed fire {delay_late:.2f}s after due;"
        f" sweeper counts {counts}"
    )


# -- timeout: a run that hangs is lost after its timeout; a zombie's outcome is refused ----


async def test_hanging_run_is_lost_after_its_timeout_and_its_late_end_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A sync task (in a worker thread, which cannot be cancelled) hangs past
    its ``timeout: 1``: the instance is lost after about 1 s, by this process
    itself; when the thread finally returns, nothing is stored, nothing cascades."""
    runs_db = tmp_path / "runs.sqlite3"
    recovery_tasks.create_runs_table(runs_db)
    monkeypatch.setenv(recovery_tasks.RUNS_DB, str(runs_db))
    recovery_tasks.register()
    recovery_tasks.released.clear()
    async with SQLiteStorage(tmp_path / "state.db", lease=LEASE) as storage:
        manager = TriggerManager(storage, "hang")
        await manager.update_configuration(
            {
                "t_hang": {"after": ["go"], "run": "rec.hang", "timeout": 1},
                "t_next": {"after": ["t_hang"], "run": "rec.quick"},
            }
        )
        try:
            await manager.fire("go", {})
            state = await wait_until(
                storage,
                "hang",
                lambda s: s.instances["t_hang#0"].status is Status.FAILED,
                5,
                "losing the hanging run",
            )
        finally:
            recovery_tasks.released.set()  # the thread returns, late
        lost = state.instances["t_hang#0"]
        assert lost.metadata["exceptionType"] == "atriggers.errors.InstanceLost"
        lost_after = stamp(state, "t_hang#0", "failed") - stamp(state, "t_hang#0", "running")
        assert 1.0 <= lost_after <= 1.0 + SLACK, lost_after
        # The thread ends (its run is recorded as ended), and nothing follows from it.
        deadline = time.monotonic() + 5
        while not recovery_tasks.runs(runs_db, "hang")[0]["ended"]:
            assert time.monotonic() < deadline, "the hanging thread did not return"
            await asyncio.sleep(0.02)
        await manager.join()
        await asyncio.sleep(0.2)
        after = await storage.load_all("hang")
        assert after.instances["t_hang#0"].status is Status.FAILED
        assert after.instances["t_hang#0"].metadata == lost.metadata
        assert "t_next#0" not in after.instances and "t_hang" not in after.latest_kwargs
    assert any("was lost (past its deadline)" in r.getMessage() for r in caplog.records)
    print(f"\n[hang] lost {lost_after:.2f}s after it started running (timeout 1 s)")


async def test_zombie_outcome_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process frozen (SIGSTOP) while it runs an instance with ``timeout: 1``:
    a sweeper elsewhere finds it lost after its deadline; the process wakes up
    with its body done and tries to store the outcome: refused, a warning is
    logged, nothing cascades."""
    runs_db = tmp_path / "runs.sqlite3"
    recovery_tasks.create_runs_table(runs_db)
    path = tmp_path / "state.db"
    zombie = Child(
        [str(HERE / "zombie_app.py"), str(path), "z"],
        {recovery_tasks.RUNS_DB: str(runs_db), "RECOVERY_NAP": "1.5"},
    )
    try:
        zombie.ready()
        zombie.process.send_signal(signal.SIGSTOP)
        async with SQLiteStorage(path, lease=LEASE) as storage, Sweeper(storage, interval=INTERVAL):
            state = await wait_until(
                storage, "z", lambda s: s.instances["t_nap#0"].status is Status.FAILED, 5, "losing the run"
            )
            lost_after = stamp(state, "t_nap#0", "failed") - stamp(state, "t_nap#0", "running")
            # Past the end of its body's 1.5 s nap: it wakes up with its outcome ready.
            started = recovery_tasks.runs(runs_db, "z")[0]["started"]
            await asyncio.sleep(max(0.0, started + 1.7 - time.time()))
            zombie.process.send_signal(signal.SIGCONT)
            out = await asyncio.to_thread(zombie.wait)
            after = await storage.load_all("z")
    finally:
        zombie.kill()
    assert zombie.process.returncode == 0, "".join(zombie.stderr)
    assert 1.0 <= lost_after <= 1.0 + INTERVAL + SLACK, lost_after
    lost = after.instances["t_nap#0"]
    assert lost.status is Status.FAILED
    assert lost.metadata["exceptionType"] == "atriggers.errors.InstanceLost"
    assert "deadline" in lost.metadata["exceptionInfo"]
    assert "result" not in lost.metadata
    assert "t_next#0" not in after.instances and "t_nap" not in after.latest_kwargs
    assert recovery_tasks.runs(runs_db, "z")[0]["ended"], "the zombie's body did not finish"
    log = "".join(zombie.stderr)
    assert '"t_nap#0": "failed"' in out, out
    assert "the outcome of run" in log and "was refused" in log, log
    print(f"\n[zombie] lost {lost_after:.2f}s after it started running (timeout 1 s); late outcome refused")


# -- a Redis outage while a run stores its outcome -------------------------------------


OUTAGES = pytest.mark.parametrize(
    ("case", "lease", "outage", "directives"),
    [
        # Longer than the lease: the owner lapsed meanwhile, recovered by the lease.
        ("lease", LEASE, 2.0, {}),
        # Shorter than the lease, with a timeout: recovered by the deadline at the latest.
        ("deadline", 4.0, 1.5, {"timeout": 2}),
        # Shorter than the lease, no timeout: the process is alive and renews its lease.
        ("short", 4.0, 1.5, {}),
    ],
)


@OUTAGES
async def test_redis_outage_during_the_outcome_write(
    case: str,
    lease: float,
    outage: float,
    directives: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis stops while a run stores its outcome (longer than the client's
    retries ride over) and comes back with its data: the run's instance does
    not stay ``running``. The process retries storing the outcome while it
    holds the run; if its lease lapsed or the deadline passed meanwhile, a
    sweeper recovers the instance as lost instead (and the retry is refused)."""
    pytest.importorskip("redis")
    from atriggers.storage.redis import RedisStorage

    server = RedisProcess(tmp_path, persistent=True)
    server.start()
    try:
        storage = RedisStorage(server.url, lease=lease, socket_timeout=0.5)
        await outage_during_the_outcome_write(
            "Redis", server, storage, case, lease, outage, directives, tmp_path, monkeypatch, caplog
        )
    finally:
        server.stop()


@pytest.fixture(scope="module")
def postgres_of_this_module() -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster to stop and start without disturbing other tests."""
    cluster = PostgresCluster.find()
    if cluster is None:
        pytest.skip("PostgreSQL is not installed")
    pytest.importorskip("asyncpg")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@OUTAGES
async def test_postgres_outage_during_the_outcome_write(
    case: str,
    lease: float,
    outage: float,
    directives: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    postgres_of_this_module: PostgresCluster,
) -> None:
    """The same with PostgreSQL (fast shutdown: it keeps every committed write)."""
    from atriggers.storage.postgres import PostgresStorage

    server = postgres_of_this_module
    if server.process is None:
        server.start()
    storage = PostgresStorage(server.url, schema=f"o{uuid.uuid4().hex[:8]}", lease=lease, timeout=0.5)
    try:
        await outage_during_the_outcome_write(
            "PostgreSQL", server, storage, case, lease, outage, directives, tmp_path, monkeypatch, caplog
        )
    finally:
        if server.process is None:
            server.start()


async def outage_during_the_outcome_write(
    name: str,
    server: RedisProcess | PostgresCluster,
    storage: Storage,
    case: str,
    lease: float,
    outage: float,
    directives: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs_db = tmp_path / "runs.sqlite3"
    recovery_tasks.create_runs_table(runs_db)
    monkeypatch.setenv(recovery_tasks.RUNS_DB, str(runs_db))
    recovery_tasks.register()
    recovery_tasks.released.clear()
    async with storage:
        manager = TriggerManager(storage, "outage")
        await manager.update_configuration(
            {
                "t_gate": {"after": ["go"], "run": "rec.gate", **directives},
                "t_next": {"after": ["t_gate"], "run": "rec.quick"},
            }
        )
        await manager.fire("go", {})
        await wait_until(
            storage, "outage", lambda s: s.instances["t_gate#0"].status is Status.RUNNING, 5, "running"
        )
        server.stop()  # the append-only file (Redis), the WAL (PostgreSQL) keep what was written
        recovery_tasks.released.set()  # the body returns: its outcome write fails
        await asyncio.sleep(outage)
        server.start()
        back = time.time()
        async with Sweeper(storage, interval=INTERVAL):
            state = await wait_until(
                storage,
                "outage",
                lambda s: s.instances["t_gate#0"].status not in (Status.RUNNING, Status.SCHEDULED),
                lease + 2 + INTERVAL + SLACK,
                "recovering the run",
            )
            await manager.join()
            await asyncio.sleep(0.3)
            state = await storage.load_all("outage")
    # The outcome write did fail (the outage outlasted the client's retries).
    assert any("storing the outcome of run" in r.getMessage() for r in caplog.records), caplog.text
    run = state.instances["t_gate#0"]
    resolved = stamp(state, "t_gate#0", run.status.value) - back
    print(f"\n[{name} outage, {case}] t_gate#0 {run.status.value} {resolved:.2f}s after {name} returned")
    if case == "short":
        # Before the fix it stayed running for good: the live process kept its lease.
        assert run.status is Status.FINISHED
    if run.status is Status.FINISHED:
        # The outcome was stored once the server returned: its cascade ran.
        assert state.instances["t_next#0"].status is Status.FINISHED
    else:
        assert run.status is Status.FAILED
        assert run.metadata["exceptionType"] == "atriggers.errors.InstanceLost"
        assert "t_next#0" not in state.instances
    assert resolved <= min(lease, 2) + INTERVAL + SLACK
