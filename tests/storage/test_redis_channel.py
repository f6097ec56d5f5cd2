"""RedisStorage's own connection: operations of many sessions share one pipelined
connection and its round trips, yet each keeps its own reply and its own error;
a server that stops answering is noticed without a timeout per command; the
reply parser works without hiredis."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("redis", reason="the redis extra is not installed")

import redis.asyncio as aioredis
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from atriggers import InvalidInput, StorageError
from atriggers.storage._redis_wire import PyReader, make_reader, pack
from atriggers.storage.redis import RedisStorage

from .conftest import WAITING, RedisServer, manager


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    if server.process is not None:
        os.kill(server.process.pid, signal.SIGCONT)
    server.stop()


class WriteCounter:
    """Counts the writes to the storage's socket (one per batch of commands)."""

    def __init__(self, storage: RedisStorage) -> None:
        link = storage._channel._link  # type: ignore[union-attr]
        assert link is not None
        self.writes = 0
        transport = link._transport
        write = transport.write

        def counted(data: Any) -> None:
            self.writes += 1
            write(data)

        transport.write = counted  # type: ignore[method-assign]


async def test_operations_of_many_sessions_share_round_trips(
    storage: RedisStorage, raw: aioredis.Redis
) -> None:
    managers = [manager(storage, f"s{n}") for n in range(200)]
    await asyncio.gather(*(m.update_configuration(WAITING) for m in managers))
    counter = WriteCounter(storage)
    await asyncio.gather(*(m.fire("tick", {"n": n}) for n, m in enumerate(managers)))
    # 200 writes, sent in a handful of batches: the first alone, the others
    # gathered while replies were awaited.
    assert counter.writes <= 20, counter.writes
    states = await asyncio.gather(*(storage.load(f"s{n}") for n in range(200)))
    assert [s.latest_kwargs["tick"] for s in states] == [{"n": n} for n in range(200)]
    # All of it over one connection (and the test's own).
    assert len(await raw.client_list()) <= 2


async def test_one_operations_error_is_its_own(
    storage: RedisStorage, raw: aioredis.Redis, redis_prefix: str
) -> None:
    managers = [manager(storage, f"s{n}") for n in range(20)]
    await asyncio.gather(*(m.update_configuration(WAITING) for m in managers))
    # A session whose key has the wrong type: its script fails in Redis.
    await raw.set(storage.keys("broken")[0], "not a hash")
    # The read script in the server's cache (new sessions were written, not
    # read): a first run of a script sends it whole, in a write of its own.
    await storage.load("s0")
    counter = WriteCounter(storage)
    first = storage.load("s0")  # sent alone: the others are batched behind it
    results = await asyncio.gather(
        first,
        storage.load("broken"),
        *(m.fire("tick", {"n": n}) for n, m in enumerate(managers)),
        storage.load("s\udc80"),  # not Unicode: refused before it is sent
        return_exceptions=True,
    )
    assert counter.writes <= 3
    assert isinstance(results[1], StorageError) and "WRONGTYPE" in str(results[1])
    assert isinstance(results[1].__cause__, ResponseError)
    assert isinstance(results[-1], InvalidInput) and "not valid Unicode" in str(results[-1])
    assert results[2:-1] == [[]] * 20
    for n in range(20):
        assert (await storage.load(f"s{n}")).latest_kwargs["tick"] == {"n": n}


async def test_a_cancelled_operation_leaves_the_others_their_replies(storage: RedisStorage) -> None:
    m = manager(storage, "s1")
    await m.update_configuration(WAITING)
    await m.fire("tick", {"n": 1})
    storage.forget("s1")
    doomed = asyncio.ensure_future(storage.load_all("s1"))
    others = [asyncio.ensure_future(storage.load("s1")) for _ in range(5)]
    await asyncio.sleep(0)  # sent
    doomed.cancel()
    states = await asyncio.gather(*others)
    assert all(s.version == 2 for s in states)
    assert await storage.list_sessions() == ["s1"]
    assert (await storage.count_sessions()).sessions == 1


async def test_commands_sent_together_are_sent_again_together_on_a_lost_connection(
    storage: RedisStorage, raw: aioredis.Redis, recwarn: pytest.WarningsRecorder
) -> None:
    m = manager(storage, "s1")
    await m.update_configuration(WAITING)
    key = storage.keys("s1")[0]
    channel = storage._channel
    assert channel is not None
    opened = channel._attempts
    await raw.client_kill_filter(_type="normal", skipme=True)  # the storage's connection
    replies = await storage._commands([("HGET", key, "version"), ("HEXISTS", key, "config")], "read")
    assert replies == ["1", 1]
    assert channel._attempts == opened + 1  # lost, then both sent on a new connection
    await asyncio.sleep(0)
    assert not [w for w in recwarn if "never retrieved" in str(w.message)]


async def test_commands_sent_together_whose_caller_left_leave_no_unheard_error(
    storage: RedisStorage,
) -> None:
    loop = asyncio.get_running_loop()
    unheard: list[str] = []
    loop.set_exception_handler(lambda _loop, context: unheard.append(context["message"]))
    try:
        key = storage.keys("nobody")[3]
        # The first command blocks on the server: cancel the caller while it waits,
        # then lose the connection under the second command's reply.
        waiting = asyncio.ensure_future(storage._commands([("BLPOP", key, "0.3"), ("PING",)], "read"))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        channel = storage._channel
        assert channel is not None and channel._link is not None
        channel._link._transport.abort()
        await asyncio.sleep(0.05)
        gc.collect()
        await asyncio.sleep(0)
        assert unheard == []
        assert (await storage.load("nobody")).version == 0  # a new connection serves on
    finally:
        loop.set_exception_handler(None)


async def test_scripts_flushed_from_the_server_are_sent_again(
    storage: RedisStorage, raw: aioredis.Redis
) -> None:
    m = manager(storage, "s1")
    await m.update_configuration(WAITING)
    await raw.script_flush()
    await m.fire("tick", {"n": 1})  # EVALSHA refused (NOSCRIPT): EVAL, then cached again
    storage.forget("s1")
    assert (await storage.load("s1")).version == 2
    assert await raw.script_exists(storage._store_script.sha) == [True]


async def test_a_server_that_stops_answering_times_out_and_the_storage_recovers(
    own_server: RedisServer,
) -> None:
    assert own_server.process is not None
    async with RedisStorage(own_server.url, prefix="hang:", socket_timeout=0.5, retries=0) as storage:
        m = manager(storage, "s1")
        await m.update_configuration(WAITING)
        os.kill(own_server.process.pid, signal.SIGSTOP)  # alive, connected, silent
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            results = await asyncio.gather(
                m.fire("tick", {"n": 1}), storage.load("s2"), return_exceptions=True
            )
            waited = loop.time() - started
        finally:
            os.kill(own_server.process.pid, signal.SIGCONT)
        for result in results:
            assert isinstance(result, StorageError) and isinstance(result.__cause__, RedisTimeoutError)
        assert 0.4 <= waited < 5
        # A new connection: the fire that timed out may have landed, once at most.
        state = await storage.load("s1")
        assert state.version in (1, 2)
        await m.fire("tick", {"n": 2})
        assert (await storage.load("s1")).version == state.version + 1


async def test_a_quiet_connection_is_not_timed_out(own_server: RedisServer) -> None:
    # The timer runs only while a reply is awaited: idle time is not a timeout.
    async with RedisStorage(own_server.url, prefix="idle:", socket_timeout=0.2, retries=0) as storage:
        m = manager(storage, "s1")
        await m.update_configuration(WAITING)
        await asyncio.sleep(0.5)
        await m.fire("tick", {"n": 1})
        assert (await storage.load("s1")).version == 2


# -- the wire ----------------------------------------------------------------------------------


def test_commands_are_packed_as_resp() -> None:
    assert pack(["SET", "k", 12]) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n"
    assert pack(["é", b"\xff", 0.5]) == b"*3\r\n$2\r\n\xc3\xa9\r\n$1\r\n\xff\r\n$3\r\n0.5\r\n"
    with pytest.raises(UnicodeEncodeError):
        pack(["SET", "k", "\udc80"])


REPLIES = (
    b"+OK\r\n:42\r\n$-1\r\n*-1\r\n$4\r\nh\xc3\xa9y\r\n-ERR wrong\r\n"
    b"*3\r\n$1\r\na\r\n*2\r\n:1\r\n$0\r\n\r\n$2\r\n\xff\xfe\r\n"
)
EXPECTED: list[Any] = ["OK", 42, None, None, "héy", "ERR wrong", ["a", [1, ""], "\udcff\udcfe"]]


@pytest.mark.parametrize("chunk", [1, 3, 7, len(REPLIES)])
@pytest.mark.parametrize("kind", ["python", "default"])
def test_replies_parse_the_same_whatever_the_chunks(kind: str, chunk: int) -> None:
    reader = PyReader() if kind == "python" else make_reader()
    got: list[Any] = []
    for start in range(0, len(REPLIES), chunk):
        reader.feed(REPLIES[start : start + chunk])
        while (reply := reader.gets()) is not False:
            got.append(reply)
    assert isinstance(got[5], ResponseError)
    got[5] = str(got[5])
    assert got == EXPECTED


def test_without_hiredis_the_storage_works(redis_server: RedisServer, redis_prefix: str) -> None:
    code = (
        "import asyncio, sys\n"
        "sys.modules['hiredis'] = None\n"
        "from atriggers import TriggerManager\n"
        "from atriggers.storage._redis_wire import PyReader, make_reader\n"
        "from atriggers.storage.redis import RedisStorage\n"
        "from atriggers.tasks import TaskRegistry\n"
        "assert isinstance(make_reader(), PyReader)\n"
        "async def main():\n"
        f"    async with RedisStorage({redis_server.url!r}, prefix={redis_prefix!r}) as s:\n"
        "        m = TriggerManager(s, 'x', tasks=TaskRegistry(entry_point_group=None))\n"
        f"        await m.update_configuration({WAITING!r})\n"
        "        await asyncio.gather(*(m.fire('tick', {'n': n}) for n in range(50)))\n"
        "        s.forget('x')\n"
        "        print(len((await s.load('x')).instances))\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=60, capture_output=True)
    assert out.stdout.decode().strip() == "50"
