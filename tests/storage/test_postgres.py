"""What is particular to PostgresStorage: URLs, tables and migrations, round trips,
locking, and faults of a real PostgreSQL server (stopped and restarted mid-stream).

Every test runs on the private cluster of the `postgres_cluster` fixture (or on
one of its own for the restarts), in a PostgreSQL schema of its own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

pytest.importorskip("asyncpg", reason="the postgres extra is not installed")

import asyncpg  # type: ignore[import-untyped]

from atriggers import InvalidInput, StorageError, TriggerManager
from atriggers.due import Due
from atriggers.instance import Status
from atriggers.state import Draft
from atriggers.storage import open_storage
from atriggers.storage import postgres as postgres_module
from atriggers.storage.base import LOCK_AFTER_CONFLICTS
from atriggers.storage.postgres import DEFAULT_SCHEMA, SCHEMA_VERSION, PostgresStorage
from atriggers.testing.postgres import PASSWORD, PostgresCluster

from .conftest import WAITING, free_port, manager


def schema_of(url: str) -> str:
    return url.rsplit("schema=", 1)[1]


@pytest_asyncio.fixture
async def storage(postgres_url: str) -> AsyncIterator[PostgresStorage]:
    async with PostgresStorage.from_url(postgres_url) as storage:
        yield storage


@pytest_asyncio.fixture
async def raw(postgres_cluster: PostgresCluster) -> AsyncIterator[Any]:
    connection = await asyncpg.connect(postgres_cluster.url)
    yield connection
    await connection.close()


# -- URLs and construction ---------------------------------------------------------------


async def test_open_storage_understands_postgres_urls(postgres_cluster: PostgresCluster) -> None:
    base = postgres_cluster.url
    url = f"{base}?schema=app_v1&lease=12&max_connections=3&sslmode=disable"
    async with open_storage(url) as storage:
        assert isinstance(storage, PostgresStorage)
        assert (storage.schema, storage.max_connections, storage.lease.duration) == ("app_v1", 3, 12.0)
        assert storage.postgres_url == f"{base}?sslmode=disable"
        again = PostgresStorage.from_url(storage.url)
        assert (again.postgres_url, again.schema, again.lease.duration) == (
            storage.postgres_url,
            "app_v1",
            12.0,
        )
        await manager(storage).update_configuration(WAITING)
        assert await storage.list_sessions() == ["s1"]
    short = open_storage(base.replace("postgresql://", "postgres://"))
    assert isinstance(short, PostgresStorage) and short.schema == DEFAULT_SCHEMA
    assert short.url == base.replace("postgresql://", "postgres://")
    for shown in (repr(short), short.safe_url, repr(storage)):
        assert PASSWORD not in shown and "***" in shown


def test_bad_arguments_are_refused() -> None:
    for schema in ("my-app", "1st", 'x"; DROP TABLE y; --', "", "x" * 64):
        with pytest.raises(ValueError, match="schema must be"):
            PostgresStorage("postgresql://localhost/db", schema=schema)
    with pytest.raises(ValueError, match="max_connections"):
        PostgresStorage("postgresql://localhost/db", max_connections=0)
    with pytest.raises(ValueError, match="max_connections"):
        PostgresStorage.from_url("postgresql://localhost/db?max_connections=many")
    with pytest.raises(ValueError, match="lease") as caught:
        PostgresStorage.from_url("postgresql://me:hunter2@localhost/db?lease=-1")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ValueError, match="postgresql://") as caught:
        PostgresStorage("mysql://user:hunter2@localhost/db")
    assert "hunter2" not in str(caught.value)


async def test_unopened_storage_says_so() -> None:
    storage = PostgresStorage("postgresql://127.0.0.1:1/db")
    with pytest.raises(StorageError, match="not open"):
        await storage.load("s1")


async def test_unreachable_server_fails_clearly_at_open() -> None:
    port = free_port()
    storage = PostgresStorage(f"postgresql://me:hunter2@127.0.0.1:{port}/db", timeout=2)
    expected = re.escape(f"PostgreSQL connect failed at postgresql://me:***@127.0.0.1:{port}/db")
    with pytest.raises(StorageError, match=expected) as caught:
        await storage.open()
    assert isinstance(caught.value.__cause__, OSError)
    assert "hunter2" not in str(caught.value)
    with pytest.raises(StorageError, match="connect failed"):
        await storage.exists()


async def test_password_never_shows_in_errors(postgres_cluster: PostgresCluster) -> None:
    url = postgres_cluster.url.replace(PASSWORD, "hunter2")
    with pytest.raises(StorageError) as caught:
        await PostgresStorage(url).open()
    assert isinstance(caught.value.__cause__, asyncpg.InvalidPasswordError)
    assert "hunter2" not in str(caught.value) and "***" in str(caught.value)


def test_importing_storage_does_not_import_asyncpg() -> None:
    code = (
        "import sys, atriggers, atriggers.storage, atriggers.remote\n"
        "assert 'asyncpg' not in sys.modules, 'asyncpg imported'\n"
        "from atriggers.storage import PostgresStorage\n"
        "assert 'asyncpg' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_missing_extra_names_it() -> None:
    code = (
        "import sys\n"
        "sys.modules['asyncpg'] = None\n"
        "from atriggers.storage import open_storage\n"
        "try:\n"
        "    open_storage('postgresql://localhost/db')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=60, capture_output=True)
    assert "pip install 'atriggers[postgres]'" in out.stdout.decode()


# -- tables and migrations ---------------------------------------------------------------------


async def test_documented_tables(storage: PostgresStorage, raw: Any) -> None:
    m = manager(storage, "user:42")
    await m.update_configuration(WAITING)
    await m.fire("tick", {"n": 1})
    s = f'"{storage.schema}"'
    tables = await raw.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1", storage.schema
    )
    assert [t[0] for t in tables] == [
        "atriggers_due",
        "atriggers_instances",
        "atriggers_owners",
        "atriggers_schema",
        "atriggers_sessions",
        "atriggers_triggers",
    ]
    assert await raw.fetchval(f"SELECT version FROM {s}.atriggers_schema") == SCHEMA_VERSION
    header = await raw.fetchrow(
        f"SELECT version, config, counts FROM {s}.atriggers_sessions WHERE uid = $1", m.uid
    )
    assert header["version"] == 2 and json.loads(header["counts"]) == {"waiting": 1}
    assert json.loads(header["config"])["waiting"]["andEvery"] == "tick"
    assert await raw.fetch(f"SELECT name, kwargs FROM {s}.atriggers_triggers") == [("tick", '{"n":1}')]
    row = await raw.fetchrow(f"SELECT name, task, status, resolved, body FROM {s}.atriggers_instances")
    assert tuple(row)[:4] == ("waiting#0", "waiting", "unstarted", False)
    assert json.loads(row["body"])["status"] == "unstarted"
    assert await storage.exists()


async def test_schemas_keep_applications_apart(
    postgres_cluster: PostgresCluster, storage: PostgresStorage
) -> None:
    await manager(storage).update_configuration(WAITING)
    other = PostgresStorage(postgres_cluster.url, schema=f"other_{uuid.uuid4().hex[:8]}")
    assert not await other.exists()  # a mistyped schema is told apart from an empty one
    async with other:
        assert await other.exists()
        assert (await other.load("s1")).version == 0
        assert await other.list_sessions() == []
        await manager(other).update_configuration(WAITING)
        assert await other.list_sessions() == ["s1"]
    assert await storage.list_sessions() == ["s1"]


async def test_many_processes_set_up_one_schema_at_once(postgres_url: str) -> None:
    storages = [PostgresStorage.from_url(postgres_url) for _ in range(6)]
    await asyncio.gather(*(s.open() for s in storages))
    try:
        await asyncio.gather(*(manager(s, f"s{n}").fire("x") for n, s in enumerate(storages)))
        assert await storages[0].list_sessions() == [f"s{n}" for n in range(6)]
    finally:
        await asyncio.gather(*(s.aclose() for s in storages))


async def test_an_older_schema_is_migrated(
    postgres_url: str, raw: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with PostgresStorage.from_url(postgres_url) as storage:
        await manager(storage).fire("x", {"v": 1})
    s = f'"{schema_of(postgres_url)}"'
    migration = ["ALTER TABLE {s}.atriggers_sessions ADD COLUMN note text DEFAULT 'migrated'"]
    monkeypatch.setattr(postgres_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setattr(postgres_module, "_MIGRATIONS", {SCHEMA_VERSION: migration})
    async with PostgresStorage.from_url(postgres_url) as storage:
        assert (await storage.load("s1")).latest_kwargs == {"x": {"v": 1}}
    assert await raw.fetchval(f"SELECT version FROM {s}.atriggers_schema") == SCHEMA_VERSION + 1
    assert await raw.fetchval(f"SELECT note FROM {s}.atriggers_sessions") == "migrated"


async def test_unknown_or_newer_schemas_are_refused(postgres_url: str, raw: Any) -> None:
    name = schema_of(postgres_url)
    s = f'"{name}"'
    await raw.execute(f"CREATE SCHEMA {s}")
    await raw.execute(f"CREATE TABLE {s}.atriggers_sessions (uid text)")  # not made by atriggers
    with pytest.raises(StorageError, match="does not hold atriggers tables"):
        await PostgresStorage.from_url(postgres_url).open()
    await raw.execute(f"DROP TABLE {s}.atriggers_sessions")
    async with PostgresStorage.from_url(postgres_url):
        pass
    await raw.execute(f"UPDATE {s}.atriggers_schema SET version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StorageError, match="newer than this atriggers understands"):
        await PostgresStorage.from_url(postgres_url).open()


# -- what an operation costs ---------------------------------------------------------------------


class RoundTripCounter:
    """A TCP proxy in front of the server that counts the client's Sync and Query
    messages after the connection's startup: one per round trip."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.round_trips = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.port)

        async def upstream() -> None:
            started = False
            while True:
                if not started:  # untyped: SSLRequest, then StartupMessage
                    head = await client_r.readexactly(8)
                    size, code = struct.unpack("!ii", head)
                    body = await client_r.readexactly(size - 8)
                    server_w.write(head + body)
                    started = code != 80877103
                else:
                    head = await client_r.readexactly(5)
                    body = await client_r.readexactly(struct.unpack("!i", head[1:])[0] - 4)
                    server_w.write(head + body)
                    if head[:1] in (b"S", b"Q"):
                        self.round_trips += 1

        async def downstream() -> None:
            while data := await server_r.read(65536):
                client_w.write(data)
            client_w.close()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for writer in (server_w, client_w):
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()


async def test_a_steady_fire_is_one_round_trip(postgres_cluster: PostgresCluster, postgres_url: str) -> None:
    counter = RoundTripCounter(postgres_cluster.port)
    async with counter as port:
        url = postgres_url.replace(f":{postgres_cluster.port}/", f":{port}/") + "&sslmode=disable"
        async with PostgresStorage.from_url(url) as storage:
            m = manager(storage)
            await m.update_configuration(WAITING)
            for n in range(3):  # statements prepared on the pool's connection
                await m.fire("tick", {"n": n})
            before = counter.round_trips
            for n in range(3, 23):
                await m.fire("tick", {"n": n})
            assert counter.round_trips - before == 20
            # A conflict (another process wrote) costs one more round trip: the
            # failed write returns the current state, the retry lands.
            async with PostgresStorage.from_url(postgres_url) as other:
                await manager(other).fire("tick", {"n": "other"})
            before = counter.round_trips
            await m.fire("tick", {"n": 23})
            assert counter.round_trips - before == 2
            # Not cached: written as if new, re-applied to what the failed write
            # returned: two round trips, as a read and a write would be.
            storage.forget("s1")
            before = counter.round_trips
            await m.fire("tick", {"n": 24})
            assert counter.round_trips - before == 2
            state = await storage.load_all("s1")
    assert len(state.instances) == 26


async def test_a_writer_that_keeps_losing_takes_the_row_lock(postgres_url: str) -> None:
    """Another process out-writes this one on every optimistic attempt: after
    LOCK_AFTER_CONFLICTS lost operations the write is re-applied under the
    session's row lock and lands, instead of starving until ConcurrencyError."""
    from atriggers.state import Change

    async with PostgresStorage.from_url(postgres_url) as rival_storage:
        rival = manager(rival_storage)
        await rival.update_configuration(WAITING)
        rival_fires = 0

        class Outwritten(PostgresStorage):
            async def store(self, uid: str, expected_version: int, change: Change) -> None:
                nonlocal rival_fires
                rival_fires += 1
                await rival.fire("other", {"n": rival_fires})  # lands first, every time
                await super().store(uid, expected_version, change)

        storage = Outwritten.from_url(postgres_url)
        assert isinstance(storage, Outwritten)
        async with storage:
            m = manager(storage)
            await m.get_state()  # cached: its first write is stale at once
            assert await m.fire("tick", {"n": 1}) == []
        assert rival_fires == 2 * LOCK_AFTER_CONFLICTS
        rival_storage.forget("s1")
        state = await rival_storage.load_all("s1")
    assert state.latest_kwargs["tick"] == {"n": 1}
    assert state.latest_kwargs["other"] == {"n": rival_fires}
    assert [i.kwargs["tick"] for i in state.instances.values()] == [{"n": 1}]
    assert state.version == 1 + rival_fires + 1  # configuration, rivals, this fire


async def test_a_claimed_row_is_skipped_not_waited_for(storage: PostgresStorage, raw: Any) -> None:
    """Sweepers never block each other: rows another transaction holds (a sweeper
    mid-claim, a write in flight) are left for later, the rest are claimed."""
    t0 = 1_000_000.0
    state = await storage.load("s1")
    draft = Draft(state, at=t0)
    for n in range(5):
        draft.set_due(f"fire@{n}", Due(t0 + n, None, str(n)))
    await storage.store("s1", 0, draft.changes())
    s = f'"{storage.schema}"'
    async with raw.transaction():
        await raw.execute(f"SELECT 1 FROM {s}.atriggers_due WHERE key = 'fire@0' FOR UPDATE")
        started = time.monotonic()
        claimed = await asyncio.wait_for(storage.claim_due(t0 + 10, t0 + 100), 5)
        assert time.monotonic() - started < 2
        assert [e.key for e in claimed] == [f"fire@{n}" for n in range(1, 5)]
    assert [e.key for e in await storage.claim_due(t0 + 10, t0 + 100)] == ["fire@0"]


async def test_text_postgres_cannot_hold_is_refused_and_harms_no_other_call(storage: PostgresStorage) -> None:
    m = manager(storage)
    await m.update_configuration(WAITING)
    nul_trigger = m.fire("ti\x00ck", {})  # valid Unicode, but PostgreSQL text has no NUL
    bad_uid = storage.load_all("s\udc80")  # the storage API itself, bypassing managers
    good = [manager(storage).fire("tick", {"n": n, "nul": "a\x00b"}) for n in range(5)]
    results = await asyncio.gather(nul_trigger, bad_uid, *good, return_exceptions=True)
    assert isinstance(results[0], InvalidInput) and "PostgreSQL cannot store" in str(results[0])
    assert isinstance(results[1], InvalidInput) and "not valid Unicode" in str(results[1])
    assert results[2:] == [[]] * 5
    storage.forget("s1")
    state = await storage.load_all("s1")
    assert len(state.instances) == 5 and "ti\x00ck" not in state.latest_kwargs
    assert state.latest_kwargs["tick"]["nul"] == "a\x00b"  # inside JSON it is escaped


async def test_many_concurrent_sessions_share_a_bounded_pool(postgres_url: str, raw: Any) -> None:
    async with PostgresStorage.from_url(postgres_url + "&max_connections=4") as storage:

        async def session(n: int) -> int:
            m = TriggerManager(storage, f"many-{n}")
            await m.update_configuration(WAITING)
            return len(await m.fire("tick", {"n": n}))

        assert await asyncio.gather(*(session(n) for n in range(300))) == [0] * 300
        assert len(await storage.list_sessions()) == 300
        assert 1 <= len(storage._require()._holders) <= 4


# -- faults ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[PostgresCluster]:
    """A cluster of this module's own, to stop and start without disturbing others."""
    cluster = PostgresCluster.find()
    if cluster is None:
        pytest.skip("PostgreSQL is not installed")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def running(own_cluster: PostgresCluster) -> Iterator[PostgresCluster]:
    if own_cluster.process is None:
        own_cluster.start()
    yield own_cluster
    if own_cluster.process is None:
        own_cluster.start()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGQUIT], ids=["fast-shutdown", "crash"])
async def test_postgres_restart_mid_stream_loses_no_acknowledged_fire(
    running: PostgresCluster, sig: int
) -> None:
    """SIGINT: PostgreSQL's fast shutdown; SIGQUIT: its immediate shutdown, which
    is a crash (no checkpoint; the next start recovers from the WAL)."""
    cluster = running
    url = f"{cluster.url}?schema=f{uuid.uuid4().hex[:8]}"
    async with PostgresStorage.from_url(url) as storage:
        m = manager(storage)
        await m.update_configuration(WAITING)
        acknowledged: list[int] = []
        failures: list[StorageError] = []
        going = asyncio.Event()

        async def keep_firing(lane: int) -> None:
            for n in range(lane, 10**6, 4):
                try:
                    await manager(storage).fire("tick", {"n": n})
                except StorageError as exc:
                    failures.append(exc)
                    return
                acknowledged.append(n)
                if len(acknowledged) >= 100:
                    going.set()

        # Four callers at once (on one session: they queue on its lock).
        firing = [asyncio.create_task(keep_firing(lane)) for lane in range(4)]
        async with asyncio.timeout(20):
            await going.wait()
        # Stopped from a thread so that fires keep flowing while the server dies.
        await asyncio.to_thread(cluster.stop, sig)
        await asyncio.wait_for(asyncio.gather(*firing), 20)
        assert len(failures) == 4  # each caller caught in it got a StorageError
        for error in failures:
            assert isinstance(
                error.__cause__,
                asyncpg.PostgresError | asyncpg.InterfaceError | asyncpg.InternalClientError | OSError,
            )
            assert "PostgreSQL" in str(error) and PASSWORD not in str(error)

        with pytest.raises(StorageError, match=r"PostgreSQL (read|write) failed"):
            await manager(storage).fire("tick", {"n": -1})
        with pytest.raises(StorageError):
            await m.get_state()

        await asyncio.to_thread(cluster.start)
        await m.fire("tick", {"n": "after restart"})
        storage.forget("s1")
        state = await storage.load_all("s1")

    fired = [i.kwargs["tick"]["n"] for i in state.instances.values()]
    assert set(acknowledged) <= set(fired), "an acknowledged fire was lost"
    assert "after restart" in fired and -1 not in fired
    assert len(fired) == len(set(fired)), "a fire was applied twice"
    # Nothing half-written: one version per stored write, counts match instances.
    assert state.version == 1 + len(state.instances)
    assert state.instance_counts == {"waiting": len(state.instances)}
    assert sorted(state.instances) == sorted(f"waiting#{n}" for n in range(len(state.instances)))
    assert all(i.status is Status.UNSTARTED for i in state.instances.values())
    # At most the fires in flight at the crash (one per caller) landed unacknowledged.
    assert len(fired) <= len(acknowledged) + 4 + 1


async def test_operations_continue_on_a_storage_opened_before_the_restart(running: PostgresCluster) -> None:
    cluster = running
    url = f"{cluster.url}?schema=f{uuid.uuid4().hex[:8]}"
    async with PostgresStorage.from_url(url) as storage:
        m = manager(storage)
        await m.update_configuration(WAITING)
        await m.fire("tick", {"n": 0})
        await asyncio.to_thread(cluster.stop)
        with pytest.raises(StorageError):
            await m.fire("tick", {"n": 1})
        await asyncio.to_thread(cluster.start)
        await m.fire("tick", {"n": 2})
        state = await m.get_state()
        assert sorted(i.kwargs["tick"]["n"] for i in state.instances.values()) == [0, 2]
        assert await storage.list_sessions() == ["s1"]


# -- tools ------------------------------------------------------------------------------------------


async def test_command_line_tools_open_postgres_urls(
    postgres_url: str, postgres_cluster: PostgresCluster
) -> None:
    async with open_storage(postgres_url) as storage:
        await manager(storage, "u1").update_configuration(WAITING)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "atriggers.cli", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    listed, shown = await asyncio.gather(
        asyncio.to_thread(cli, "sessions", postgres_url), asyncio.to_thread(cli, "show", postgres_url, "u1")
    )
    assert listed.returncode == 0 and "u1" in listed.stdout, listed.stderr
    assert shown.returncode == 0 and "waiting" in shown.stdout, shown.stderr
    missing = await asyncio.to_thread(cli, "sessions", f"{postgres_cluster.url}?schema=nowhere")
    assert missing.returncode != 0 and "no storage at" in missing.stderr
    for done in (listed, shown, missing):
        assert PASSWORD not in done.stdout + done.stderr
