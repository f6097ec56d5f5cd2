"""What is particular to RedisStorage: URLs, key layout, TTL, and faults of a real
redis-server (stopped and restarted mid-session)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("redis", reason="the redis extra is not installed")

import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import RedisError

from atriggers import InvalidInput, StorageError, Sweeper, TriggerManager
from atriggers import _rules as rules
from atriggers.clock import FakeClock
from atriggers.instance import Status
from atriggers.state import Draft
from atriggers.storage import open_storage
from atriggers.storage.base import LOCK_AFTER_CONFLICTS
from atriggers.storage.redis import DEFAULT_PREFIX, SPILL_AT, RedisStorage

from .conftest import WAITING, RedisServer, free_port, manager

# -- URLs and construction ---------------------------------------------------------------


async def test_open_storage_understands_redis_urls(redis_server: RedisServer) -> None:
    url = f"{redis_server.url}?prefix=app:v1:&ttl=90&socket_timeout=2"
    async with open_storage(url) as storage:
        assert isinstance(storage, RedisStorage)
        assert (storage.prefix, storage.ttl) == ("app:v1:", 90.0)
        assert storage.redis_url == f"{redis_server.url}?socket_timeout=2"
        again = RedisStorage.from_url(storage.url)
        assert (again.redis_url, again.prefix, again.ttl) == (storage.redis_url, "app:v1:", 90.0)
    tls = open_storage("rediss://user:secret@redis.example:6380/2")
    assert isinstance(tls, RedisStorage) and tls.url == "rediss://user:secret@redis.example:6380/2"
    assert "secret" not in repr(tls)
    plain = RedisStorage.from_url(redis_server.url)
    assert (plain.url, plain.prefix, plain.ttl) == (redis_server.url, DEFAULT_PREFIX, None)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="braces"):
        RedisStorage("redis://localhost", prefix="app{x}:")
    with pytest.raises(ValueError, match="ttl"):
        RedisStorage("redis://localhost", ttl=0)
    with pytest.raises(ValueError, match="ttl"):
        RedisStorage.from_url("redis://localhost?ttl=soon")
    with pytest.raises(ValueError, match="redis://"):
        RedisStorage("http://localhost")


async def test_unopened_storage_says_so() -> None:
    storage = RedisStorage("redis://127.0.0.1:1/0")
    with pytest.raises(StorageError, match="not open"):
        await storage.load("s1")


async def test_unreachable_server_fails_clearly_at_open() -> None:
    port = free_port()
    storage = RedisStorage(f"redis://127.0.0.1:{port}/0", retries=0)
    expected = re.escape(f"Redis connect failed at redis://127.0.0.1:{port}/0")
    with pytest.raises(StorageError, match=expected) as caught:
        await storage.open()
    assert isinstance(caught.value.__cause__, RedisError)


async def test_password_never_shows_in_errors(redis_server: RedisServer) -> None:
    # The test server has no password: AUTH fails, and the message must not leak it.
    url = redis_server.url.replace("redis://", "redis://someone:hunter2@")
    with pytest.raises(StorageError) as caught:
        await RedisStorage(url, retries=0).open()
    assert "hunter2" not in str(caught.value) and "***" in str(caught.value)


def test_importing_storage_does_not_import_redis() -> None:
    code = (
        "import sys, atriggers, atriggers.storage, atriggers.remote\n"
        "assert 'redis' not in sys.modules, 'redis imported'\n"
        "from atriggers.storage import RedisStorage\n"
        "assert 'redis' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_missing_extra_names_it() -> None:
    code = (
        "import sys\n"
        "sys.modules['redis'] = None\n"
        "from atriggers.storage import open_storage\n"
        "try:\n"
        "    open_storage('redis://localhost')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=60, capture_output=True)
    assert "pip install 'atriggers[redis]'" in out.stdout.decode()


# -- key layout -----------------------------------------------------------------------------


async def test_documented_key_layout(storage: RedisStorage, raw: aioredis.Redis, redis_prefix: str) -> None:
    uid = "user:42{x}"
    m = manager(storage, uid)
    await m.update_configuration(WAITING)
    await m.fire("tick", {"n": 1})
    base = f"{redis_prefix}{{{uid}}}:"
    parts = ("session", "triggers", "instances", "unresolved")
    assert storage.keys(uid) == [base + part for part in parts]
    # The session's keys, and the session index (its summary; in flight: none).
    index = [redis_prefix + "index", redis_prefix + "index:all", redis_prefix + "index:waiting"]
    assert sorted(await raw.keys(redis_prefix + "*")) == sorted([*storage.keys(uid), *index])
    assert json.loads(await raw.hget(redis_prefix + "index", uid) or "{}")["c"]["unstarted"] == 1
    assert len({key_slot(k.encode()) for k in storage.keys(uid)}) == 1
    header = await raw.hgetall(base + "session")
    assert set(header) == {"version", "config", "counts", "recent", "updated"}
    assert header["version"] == "2" and json.loads(header["counts"]) == {"waiting": 1}
    assert json.loads(header["config"])["waiting"]["andEvery"] == "tick"
    assert await raw.hgetall(base + "triggers") == {"tick": '{"n":1}'}
    body = json.loads(await raw.hget(base + "instances", "waiting#0") or "null")
    assert body["status"] == "unstarted"
    assert await raw.smembers(base + "unresolved") == {"waiting#0"}
    assert await storage.list_sessions() == [uid]


async def test_prefixes_keep_applications_apart(
    redis_server: RedisServer, storage: RedisStorage, raw: aioredis.Redis
) -> None:
    await manager(storage).update_configuration(WAITING)
    other_prefix = f"other{uuid.uuid4().hex[:8]}:"
    async with RedisStorage(redis_server.url, prefix=other_prefix) as other:
        assert (await other.load("s1")).version == 0
        assert await other.list_sessions() == []
        await manager(other).update_configuration(WAITING)
        assert await other.list_sessions() == ["s1"]
    assert await storage.list_sessions() == ["s1"]
    await raw.delete(*RedisStorage("redis://x", prefix=other_prefix).keys("s1"))


async def test_retried_write_is_applied_once(storage: RedisStorage) -> None:
    # A client that lost the reply to a landed write and sends it again must not
    # be told "conflict" (the manager would apply the fire a second time).
    m = manager(storage)
    await m.update_configuration(WAITING)
    index = [f"{storage.prefix}index{part}" for part in ("", ":all", ":failed", ":stuck", ":waiting")]
    keys = [*storage.keys("s1"), f"{storage.prefix}due", f"{storage.prefix}due:data", *index]
    keys.append(storage.lock_key("s1"))
    owners = f"{storage.prefix}owner:"
    # uid, summary ('': none), summary flags, lock token ('': none), then the trigger.
    args: list[Any] = [1, 2, "token-1", 0, "0", "", "", 1, 0, owners, "s1", "", "000", "", "tick", "{}"]

    async def store(args: list[Any]) -> Any:
        return await storage._eval(storage._script(storage._store_script), None, args, "write", keys=keys)

    assert await store(args) == ["ok"]
    assert await store(args) == ["applied"]
    other = [1, 2, "token-2", 0, "0", "", "", 1, 0, owners, "s1", "", "000", "", "tick", "{}"]
    assert (await store(other))[0] == "conflict"
    assert (await storage.load("s1")).version == 2
    # Another writer lands in between: the resent write is still recognised.
    later = [2, 3, "token-3", 0, "0", "", "", 1, 0, owners, "s1", "", "000", "", "tock", "{}"]
    assert await store(later) == ["ok"]
    assert await store(args) == ["applied"]
    assert (await storage.load("s1")).version == 3


async def test_text_that_is_not_unicode_is_refused_and_harms_no_other_call(storage: RedisStorage) -> None:
    m = manager(storage)
    await m.update_configuration(WAITING)
    bad_kwargs = m.fire("tick", {"text": "\udc80"})
    bad_uid = storage.load_all("s\udc80")  # the storage API itself, bypassing managers
    good = [manager(storage).fire("tick", {"n": n}) for n in range(5)]
    results = await asyncio.gather(bad_kwargs, bad_uid, *good, return_exceptions=True)
    assert isinstance(results[0], InvalidInput) and "not valid Unicode" in str(results[0])
    assert isinstance(results[1], InvalidInput) and "not valid Unicode" in str(results[1])
    assert results[2:] == [[]] * 5
    assert len((await storage.load("s1")).instances) == 5


async def test_many_concurrent_sessions_share_a_bounded_pool(
    redis_server: RedisServer, redis_prefix: str, raw: aioredis.Redis
) -> None:
    # More concurrent operations than connections: they wait their turn instead
    # of failing (recent redis-py's default pool raises past its limit).
    async with RedisStorage(redis_server.url, prefix=redis_prefix, max_connections=4) as storage:

        async def session(n: int) -> int:
            m = TriggerManager(storage, f"many-{n}")
            await m.update_configuration(WAITING)
            return len(await m.fire("tick", {"n": n}))

        assert await asyncio.gather(*(session(n) for n in range(300))) == [0] * 300
        clients = await raw.client_list()
        assert len(clients) <= 4 + 1  # the pool's, and this test's own connection


# -- TTL ----------------------------------------------------------------------------------------


async def test_due_entries_of_expired_sessions_are_dropped(
    redis_server: RedisServer, redis_prefix: str, raw: aioredis.Redis
) -> None:
    # Sessions expire key by key with their TTL; their due-index entries are
    # shared keys that do not: a sweep drops them instead of writing an empty
    # session back.
    clock = FakeClock(time.time())
    async with RedisStorage(redis_server.url, prefix=redis_prefix, ttl=0.2, clock=clock) as storage:
        m = manager(storage)
        await m.update_configuration(WAITING)
        await m.fire("tick", {}, delay=10)
        assert await raw.zcard(f"{redis_prefix}due") == 1
        await asyncio.sleep(0.4)  # real time: Redis expires the session's keys
        assert not await raw.exists(*storage.keys("s1"))
        await clock.advance(10)  # the delayed fire is due (this process's timer too)
        assert await Sweeper(storage).run_once() == 0
        assert await raw.zcard(f"{redis_prefix}due") == 0
        assert await raw.hlen(f"{redis_prefix}due:data") == 0
        assert not await raw.exists(*storage.keys("s1"))


async def test_ttl_is_set_and_refreshed_by_each_write(
    redis_server: RedisServer, redis_prefix: str, raw: aioredis.Redis
) -> None:
    async with RedisStorage(redis_server.url, prefix=redis_prefix, ttl=60) as storage:
        m = manager(storage)
        await m.update_configuration(WAITING)
        await m.fire("tick", {})
        keys = storage.keys("s1")
        for key in keys:
            assert 55_000 < await raw.pttl(key) <= 60_000, key
            await raw.pexpire(key, 5_000)
        await m.fire("tick", {})
        for key in keys:
            assert 55_000 < await raw.pttl(key) <= 60_000, key


async def test_expired_session_starts_afresh(
    redis_server: RedisServer, redis_prefix: str, raw: aioredis.Redis
) -> None:
    async with RedisStorage(redis_server.url, prefix=redis_prefix, ttl=0.2) as storage:
        m = manager(storage)
        await m.update_configuration(WAITING)
        await m.fire("tick", {"n": 1})
        await asyncio.sleep(0.4)
        storage.forget("s1")
        assert (await storage.load_all("s1")).version == 0
        assert await storage.list_sessions() == []
        # A leftover part (as if one key outlived the others) is not resurrected.
        await raw.hset(storage.keys("s1")[2], "waiting#0", "{}")
        await m.update_configuration(WAITING)
        state = await m.get_state()
        assert state.version == 1 and not state.instances and not state.latest_kwargs


# -- faults ---------------------------------------------------------------------------------------


@pytest.fixture
def persistent_redis(tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    fsync: str = getattr(request, "param", "everysec")
    server = RedisServer(tmp_path, persistent=True, fsync=fsync)
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("persistent_redis", "sig"),
    [("everysec", signal.SIGTERM), ("always", signal.SIGKILL)],
    indirect=["persistent_redis"],
    ids=["sigterm", "sigkill-fsync-always"],
)
async def test_redis_restart_mid_session_loses_no_acknowledged_fire(
    persistent_redis: RedisServer, sig: int
) -> None:
    server = persistent_redis
    async with RedisStorage(server.url, prefix="fault:", retries=0, socket_timeout=2) as storage:
        m = manager(storage)
        await m.update_configuration(WAITING)
        acknowledged: list[int] = []
        failures: list[StorageError] = []
        going = asyncio.Event()

        async def keep_firing() -> None:
            for n in range(100_000):
                try:
                    await m.fire("tick", {"n": n})
                except StorageError as exc:
                    failures.append(exc)
                    return
                acknowledged.append(n)
                if len(acknowledged) == 50:
                    going.set()

        firing = asyncio.create_task(keep_firing())
        async with asyncio.timeout(10):
            await going.wait()
        # Stopped from a thread so that fires keep flowing while the server dies.
        await asyncio.to_thread(server.stop, sig)
        await asyncio.wait_for(firing, 10)
        assert len(failures) == 1
        error = failures[0]
        assert isinstance(error.__cause__, RedisError)
        assert f"at {server.url}" in str(error) and "Redis" in str(error)

        with pytest.raises(StorageError, match=r"Redis (read|write) failed"):
            await m.fire("tick", {"n": -1})
        with pytest.raises(StorageError):
            await m.get_state()

        await asyncio.to_thread(server.start)
        await m.fire("tick", {"n": "after restart"})
        state = await m.get_state()

    fired = [i.kwargs["tick"]["n"] for i in state.instances.values()]
    assert set(acknowledged) <= set(fired), "an acknowledged fire was lost"
    assert "after restart" in fired and -1 not in fired
    assert len(fired) == len(set(fired)), "a fire was applied twice"
    # Nothing half-written: one version per stored write, counts match instances.
    assert state.version == 1 + len(state.instances)
    assert state.instance_counts == {"waiting": len(state.instances)}
    assert sorted(state.instances) == sorted(f"waiting#{n}" for n in range(len(state.instances)))
    assert all(i.status is Status.UNSTARTED for i in state.instances.values())
    # At most the one fire in flight at the crash may have landed unacknowledged.
    assert len(fired) <= len(acknowledged) + 2


async def test_operations_continue_on_a_storage_opened_before_the_restart(
    persistent_redis: RedisServer,
) -> None:
    server = persistent_redis
    async with RedisStorage(server.url, prefix="fault:", retries=0) as storage:
        m = manager(storage)
        await m.update_configuration(WAITING)
        await m.fire("tick", {"n": 0})
        await asyncio.to_thread(server.stop)
        with pytest.raises(StorageError):
            await m.fire("tick", {"n": 1})
        await asyncio.to_thread(server.start)
        await m.fire("tick", {"n": 2})
        state = await m.get_state()
        assert sorted(i.kwargs["tick"]["n"] for i in state.instances.values()) == [0, 2]
        assert await storage.list_sessions() == ["s1"]


async def test_a_client_of_your_own(redis_server: RedisServer, redis_prefix: str) -> None:
    # Without decode_responses: the storage copes with bytes, and leaves the
    # client open for its owner.
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        async with RedisStorage(redis_server.url, prefix=redis_prefix, client=client) as storage:
            m = manager(storage)
            await m.update_configuration(WAITING)
            await m.fire("tick", {"text": "ünïcode"})
            storage.forget("s1")
            state = await storage.load("s1")
            assert state.instances["waiting#0"].kwargs == {"tick": {"text": "ünïcode"}}
            assert await storage.list_sessions() == ["s1"]
        assert await client.ping()
    finally:
        await client.aclose()


async def test_a_remote_worker_rebuilds_the_storage_from_its_url(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    from atriggers.instance import TaskInstance
    from atriggers.remote import RunRequest, StoragePool, execute_request
    from atriggers.runners import BaseRunner, register_runner
    from atriggers.tasks import registry

    queued: list[RunRequest] = []

    class Queue(BaseRunner):
        name = "test-redis-queue"

        async def run(self, manager: TriggerManager, instance: TaskInstance) -> None:
            queued.append(RunRequest.for_instance(manager, instance))

    async def work(context: Any) -> dict[str, Any]:
        return {"done": context.trigger_kwargs["go"]["n"]}

    register_runner(Queue())
    registry.register(work, "test_redis.work")
    pool = StoragePool()
    try:
        async with RedisStorage(redis_server.url, prefix=redis_prefix, ttl=600) as storage:
            m = TriggerManager(storage, "remote")
            await m.update_configuration(
                {"w": {"after": ["go"], "run": "test_redis.work", "using": "test-redis-queue"}}
            )
            await m.fire("go", {"n": 7})
            [request] = queued
            wire = json.loads(json.dumps(request.to_dict()))
            done = await execute_request(RunRequest.from_dict(wire), pool)
            assert done is not None and done.status is Status.FINISHED
            assert done.result == {"done": 7}
            storage.forget("remote")
            assert (await m.get_instance("w#0")).status is Status.FINISHED
            worker_storage = await pool.get(request.storage_url)
            assert isinstance(worker_storage, RedisStorage)
            assert (worker_storage.prefix, worker_storage.ttl) == (redis_prefix, 600)
    finally:
        await pool.aclose()


async def _scripts_run(raw: aioredis.Redis) -> int:
    """How many scripts the server has run (one per round trip of a fire)."""
    stats = await raw.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_what_a_fire_costs_in_round_trips(
    redis_server: RedisServer, redis_prefix: str, storage: RedisStorage, raw: aioredis.Redis
) -> None:
    m = manager(storage)
    before = await _scripts_run(raw)
    await m.update_configuration(WAITING)  # a new session: written at once, not read first
    await m.fire("tick", {"n": 0})  # cached: one write
    assert await _scripts_run(raw) - before == 2
    # Not cached: written as if new, then re-applied to the state the failed
    # write returned: two round trips, as a read and a write would be.
    storage.forget("s1")
    before = await _scripts_run(raw)
    await m.fire("tick", {"n": 1})
    assert await _scripts_run(raw) - before == 2
    # Another process wrote since: the same.
    async with RedisStorage(redis_server.url, prefix=redis_prefix) as other:
        await manager(other).fire("tick", {"n": "other"})
    before = await _scripts_run(raw)
    await m.fire("tick", {"n": 2})
    assert await _scripts_run(raw) - before == 2
    state = await storage.load_all("s1")
    made = sorted(state.instances.values(), key=lambda i: int(i.name.rpartition("#")[2]))
    assert [i.kwargs["tick"] for i in made] == [{"n": 0}, {"n": 1}, {"n": "other"}, {"n": 2}]
    assert state.version == 5


# -- sessions of many instances: bodies fetched outside the script ----------------------


async def _many(storage: RedisStorage, uid: str, n: int) -> None:
    m = manager(storage, uid)
    await m.update_configuration(WAITING)
    for i in range(n):
        await m.fire("tick", {"n": i})


async def _commands_run(raw: aioredis.Redis, name: str) -> int:
    stats = await raw.info("commandstats")
    return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))


async def test_a_session_of_many_instances_reads_whole(
    redis_server: RedisServer, redis_prefix: str, storage: RedisStorage, raw: aioredis.Redis
) -> None:
    n = SPILL_AT + 20
    await _many(storage, "big", n)
    async with RedisStorage(redis_server.url, prefix=redis_prefix) as cold:
        before = await _commands_run(raw, "hget")
        working = await cold.load("big", ["nobody#1"])
        whole = await cold.load_all("big")
        # The bodies came by plain commands, each followed by its version check.
        assert await _commands_run(raw, "hget") - before == 2
        assert working.version == whole.version == n + 1
        assert (
            sorted(working.instances) == sorted(whole.instances) == sorted(f"waiting#{i}" for i in range(n))
        )
        assert whole.instances["waiting#7"].kwargs == {"tick": {"n": 7}}
        assert working.instances["waiting#7"].kwargs == {"tick": {"n": 7}}
        # A cold process's first fire: its guessed write is refused with the state.
        await manager(cold, "big").fire("tick", {"n": "cold"})
    state = await storage.load_all("big")
    assert len(state.instances) == n + 1 and state.instance_counts == {"waiting": n + 1}


async def test_a_session_of_many_keys_reads_whole(
    redis_server: RedisServer, redis_prefix: str, storage: RedisStorage, raw: aioredis.Redis
) -> None:
    # Each idempotency key is a row of the triggers part: past SPILL_AT of them,
    # they too come by a plain command after the script (here with one instance).
    m = manager(storage, "keys")
    await m.update_configuration({"t": {"after": ["a", "never"], "run": "nothing"}})
    for n in range(SPILL_AT + 10):
        await m.fire("a", {"n": n}, key=f"req-{n}")
    async with RedisStorage(redis_server.url, prefix=redis_prefix) as cold:
        before = await _commands_run(raw, "hget")
        state = await cold.load("keys")
        assert await _commands_run(raw, "hget") - before == 1
        assert [r.key for r in state.fire_keys.records()] == [f"req-{n}" for n in range(SPILL_AT + 10)]
        assert state.latest_kwargs == {"a": {"n": SPILL_AT + 9}} and list(state.instances) == ["t#0"]
        whole = await cold.load_all("keys")
        assert len(whole.fire_keys.records()) == SPILL_AT + 10 and list(whole.instances) == ["t#0"]
        # A retry from a cold process finds its key: nothing is written.
        assert [i.name for i in await manager(cold, "keys").fire("a", {"n": 3}, key="req-3")] == []
    assert (await storage.load("keys")).version == SPILL_AT + 11


class WrittenBetween(RedisStorage):
    """A storage whose next fetch of spilled bodies is preceded by a rival's
    landed write to the session (a real fire through another storage)."""

    rival: TriggerManager | None = None

    async def _commands(self, commands: Any, what: str) -> list[Any]:
        rival, self.rival = self.rival, None
        if rival is not None:
            await rival.fire("tick", {"n": "rival"})
        return await super()._commands(commands, what)


async def test_a_write_between_a_read_and_its_spilled_bodies_is_noticed(
    redis_server: RedisServer, redis_prefix: str, storage: RedisStorage
) -> None:
    await _many(storage, "big", SPILL_AT + 5)
    async with WrittenBetween(redis_server.url, prefix=redis_prefix) as reader:
        reader.rival = manager(storage, "big")
        state = await reader.load("big")
        # Read again whole: the rival's instance, and the version that has it.
        assert state.version == SPILL_AT + 7
        assert state.instances[f"waiting#{SPILL_AT + 5}"].kwargs == {"tick": {"n": "rival"}}
        # The same race on a refused write's state: the fire re-reads, and lands.
        reader.rival = manager(storage, "big")
        await manager(reader, "big").fire("tick", {"n": "reader"})
        assert reader.rival is None  # (it wrote between the refusal and its bodies)
    state = await storage.load_all("big")
    kwargs = [i.kwargs["tick"]["n"] for i in state.instances.values()]
    assert kwargs.count("rival") == 2 and kwargs.count("reader") == 1
    assert len(state.instances) == SPILL_AT + 8


class LosesOneFetch(RedisStorage):
    """A storage whose first fetch of spilled bodies fails (the server went away
    for the time of that command and its retries)."""

    failed = False

    async def _commands(self, commands: Any, what: str) -> list[Any]:
        if not self.failed:
            self.failed = True
            raise StorageError("Redis read failed: the connection was lost")
        return await super()._commands(commands, what)


async def test_a_conflict_whose_state_cannot_be_fetched_is_still_a_conflict(
    redis_server: RedisServer, redis_prefix: str, storage: RedisStorage
) -> None:
    await _many(storage, "big", SPILL_AT + 5)
    async with LosesOneFetch(redis_server.url, prefix=redis_prefix) as cold:
        # Its guessed write is refused, and the refusal's state cannot be fetched:
        # nothing was written, so the fire tries again (no "may have landed").
        assert await manager(cold, "big").fire("tick", {"n": "cold"}) == []  # (unstarted)
        assert cold.failed
    state = await storage.load_all("big")
    assert state.instances[f"waiting#{SPILL_AT + 5}"].kwargs == {"tick": {"n": "cold"}}
    assert state.version == SPILL_AT + 7


# -- fairness lock: a writer that keeps losing cannot starve --------------------------------


class Outwritten(RedisStorage):
    """A storage whose every plain write is preceded by a rival's landed write to
    the same session (a real fire through another storage), so it loses each time.
    Writes under the fairness lock can block on `gate` (a slow holder)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rival: TriggerManager | None = None
        self.gate: asyncio.Event | None = None
        self.holding = asyncio.Event()
        self.tokens: list[str] = []
        self.landed: list[int] = []

    async def _store(self, uid: str, expected_version: int, change: Any, token: str) -> None:
        self.tokens.append(token)
        if not token and self.rival is not None:
            await self.rival.fire("tick", {"by": "rival"})
        if token and self.gate is not None:
            self.holding.set()
            await self.gate.wait()
        await super()._store(uid, expected_version, change, token)
        self.landed.append(expected_version)


async def test_a_writer_that_keeps_losing_takes_the_lock_and_lands(
    redis_server: RedisServer, redis_prefix: str, storage: RedisStorage, raw: aioredis.Redis
) -> None:
    await manager(storage).update_configuration(WAITING)
    async with Outwritten(redis_server.url, prefix=redis_prefix) as loser:
        loser.rival = manager(storage)
        # Without the lock this fire would lose all its 48 attempts: ConcurrencyError.
        await manager(loser).fire("tick", {"by": "loser"})
        assert loser.tokens[:LOCK_AFTER_CONFLICTS] == [""] * LOCK_AFTER_CONFLICTS
        assert len(loser.tokens) == LOCK_AFTER_CONFLICTS + 1 and loser.tokens[-1] != ""
        assert loser._contended == {}
    assert not await raw.exists(storage.lock_key("s1"))
    state = await storage.load("s1")
    # The configuration, the rival's 8 fires, then the loser's.
    assert state.version == 2 + LOCK_AFTER_CONFLICTS
    assert state.latest_kwargs["tick"] == {"by": "loser"}
    # Back to normal: the next write is a plain one and lands at once.
    await manager(storage).fire("tick", {"by": "rival"})
    assert (await storage.load("s1")).version == 3 + LOCK_AFTER_CONFLICTS


async def test_writers_are_refused_while_the_lock_is_held_and_land_after(
    redis_server: RedisServer, redis_prefix: str, storage: RedisStorage, raw: aioredis.Redis
) -> None:
    await manager(storage).update_configuration(WAITING)
    before = (await storage.load("s1")).version
    async with (
        Outwritten(redis_server.url, prefix=redis_prefix, lock_ttl=5.0) as holder,
        RedisStorage(redis_server.url, prefix=redis_prefix) as other1,
        RedisStorage(redis_server.url, prefix=redis_prefix) as other2,
    ):
        holder.gate = asyncio.Event()
        holder._contended["s1"] = LOCK_AFTER_CONFLICTS  # as after 8 lost writes
        held = asyncio.create_task(manager(holder).fire("tick", {"by": "holder"}))
        await holder.holding.wait()
        assert 0 < await raw.pttl(holder.lock_key("s1")) <= 5000
        others = [
            asyncio.create_task(manager(s).fire("tick", {"by": f"other{n}"}))
            for n, s in enumerate((other1, other2, other1))
        ]
        await asyncio.sleep(0.3)
        # They kept trying, and every attempt was refused.
        assert (await storage.load("s1")).version == before
        assert not any(t.done() for t in others)
        holder.gate.set()
        await held
        await asyncio.gather(*others)
    # The holder's write landed on the version it expected, nothing in between.
    assert holder.landed == [before]
    assert (await storage.load("s1")).version == before + 4
    assert not await raw.exists(storage.lock_key("s1"))


async def test_a_lock_left_by_a_crashed_holder_expires(storage: RedisStorage, raw: aioredis.Redis) -> None:
    await manager(storage).update_configuration(WAITING)
    before = (await storage.load("s1")).version
    # What a holder sets, left behind by a process that died holding it.
    await raw.set(storage.lock_key("s1"), "crashed-holder", nx=True, px=400)
    fire = asyncio.create_task(manager(storage).fire("tick", {"n": 1}))
    await asyncio.sleep(0.1)
    assert not fire.done() and (await storage.load("s1")).version == before
    await asyncio.wait_for(fire, 10)
    assert (await storage.load("s1")).version == before + 1
    assert not await raw.exists(storage.lock_key("s1"))


async def test_a_failing_reapplication_releases_the_lock(storage: RedisStorage, raw: aioredis.Redis) -> None:
    await manager(storage).update_configuration(WAITING)
    state = await storage.load("s1")
    await manager(storage).fire("tick", {"n": 1})  # `state` is now stale
    storage._contended["s1"] = LOCK_AFTER_CONFLICTS

    def reapply(current: Any) -> Any:
        raise InvalidInput("refused on re-application")

    draft = Draft(state, at=time.time())
    rules.fire(draft, "tick", {"n": 2})
    with pytest.raises(InvalidInput, match="on re-application"):
        await storage.store_or_reapply("s1", state.version, draft.changes(), reapply)
    assert not await raw.exists(storage.lock_key("s1"))


def test_lock_ttl_must_be_positive() -> None:
    with pytest.raises(ValueError, match="lock_ttl"):
        RedisStorage("redis://x", lock_ttl=0)
