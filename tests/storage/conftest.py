"""Fixtures shared by the storage tests: real redis-server processes, and the
factories the conformance suite runs against (memory, SQLite, Redis,
PostgreSQL: its cluster is the `postgres_cluster` fixture of tests/conftest.py)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

pytest.register_assert_rewrite("atriggers.testing.conformance")

from atriggers import TriggerManager  # noqa: E402
from atriggers.storage import MemoryStorage, SQLiteStorage, Storage  # noqa: E402
from atriggers.tasks import TaskRegistry  # noqa: E402
from atriggers.testing.conformance import StorageFactory  # noqa: E402

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from atriggers.storage.redis import RedisStorage

# Fires create instances that wait for a trigger nobody fires: no task runs, so a
# fault can only meet the fire itself.
WAITING = {"waiting": {"after": ["tick", "never"], "andEvery": "tick", "run": "nothing"}}


def manager(storage: Storage, uid: str = "s1") -> TriggerManager:
    """A manager on `storage` that knows no tasks (none of the tests' run)."""
    return TriggerManager(storage, uid, tasks=TaskRegistry(entry_point_group=None))


REDIS_SERVER = shutil.which("redis-server") or (
    "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A redis-server child process on 127.0.0.1, stoppable and restartable on the
    same port and data directory."""

    def __init__(self, directory: Path, *, persistent: bool = False, fsync: str = "everysec") -> None:
        if REDIS_SERVER is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.directory = directory
        self.persistent = persistent
        self.fsync = fsync
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        assert REDIS_SERVER is not None and self.process is None
        args = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(self.directory / "redis.log"),
            "--appendonly",
            "yes" if self.persistent else "no",
            "--appendfsync",
            self.fsync,
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                self.process = None
                raise RuntimeError(f"redis-server exited at start on port {self.port}:\n{log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout}s")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
        if process.stderr is not None:
            process.stderr.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the whole test session (tests use their own prefixes)."""
    with tempfile.TemporaryDirectory(prefix="atriggers-redis-") as directory:
        server = RedisServer(Path(directory))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def redis_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}:"


# The Redis test modules' `raw` and `storage` (the PostgreSQL one has its own).


@pytest_asyncio.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain redis-py client of the test session's server."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest_asyncio.fixture
async def storage(redis_server: RedisServer, redis_prefix: str) -> AsyncIterator[RedisStorage]:
    """A `RedisStorage` on the test session's server, under a prefix of its own."""
    from atriggers.storage.redis import RedisStorage

    async with RedisStorage(redis_server.url, prefix=redis_prefix) as storage:
        yield storage


@pytest.fixture(params=["memory", "sqlite", "redis", "postgres"])
def storage_factory(request: pytest.FixtureRequest, tmp_path: Path) -> StorageFactory:
    """A new, empty store per test, on each backend."""
    if request.param == "memory":
        return StorageFactory(MemoryStorage, shared=False, cross_process=False)
    if request.param == "sqlite":
        path = tmp_path / "sessions.sqlite3"
        return StorageFactory(lambda: SQLiteStorage(path))
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        from atriggers.storage.postgres import PostgresStorage

        return StorageFactory(lambda: PostgresStorage.from_url(url))
    pytest.importorskip("redis", reason="the redis extra is not installed")
    server: RedisServer = request.getfixturevalue("redis_server")
    prefix: str = request.getfixturevalue("redis_prefix")
    from atriggers.storage.redis import RedisStorage

    return StorageFactory(lambda: RedisStorage(server.url, prefix=prefix))
