"""Timing, memory and baseline helpers shared by the scenarios."""

from __future__ import annotations

import asyncio
import os
import resource
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import aiosqlite

ROOT = Path(__file__).resolve().parent.parent

__all__ = [
    "ROOT",
    "CheckFailed",
    "Floor",
    "PostgresFloor",
    "RedisFloor",
    "SQLiteFloor",
    "child_env",
    "baseline_select1",
    "check",
    "percentile",
    "rss_mb",
    "peak_rss_mb",
    "summary",
]


class CheckFailed(AssertionError):
    """A scenario ended in the wrong state: the numbers it produced are void."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def child_env() -> dict[str, str]:
    """Environment for the interpreters the suite starts: they import `benchmarks`."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of `samples`."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def summary(samples: Sequence[float]) -> dict[str, float]:
    """p50 and p99 of latencies given in seconds, as milliseconds."""
    return {"p50_ms": percentile(samples, 0.5) * 1e3, "p99_ms": percentile(samples, 0.99) * 1e3}


def rss_mb() -> float:
    """Current resident set size of this process (Linux: /proc; else peak)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mb()


def peak_rss_mb() -> float:
    """Highest resident set size this process reached (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _wal_connection(path: Path, isolation_level: str | None) -> aiosqlite.Connection:
    db = await aiosqlite.connect(path, isolation_level=isolation_level)
    await db.execute("PRAGMA journal_mode = WAL")
    await db.execute("PRAGMA synchronous = NORMAL")
    await db.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
    if db.in_transaction:
        await db.commit()
    return db


async def baseline_select1(path: Path, n: int) -> list[float]:
    """One aiosqlite round trip: ``await db.execute_fetchall("SELECT 1")`` (one
    hand-off to aiosqlite's thread and back)."""
    db = await _wal_connection(path, None)
    try:
        for _ in range(min(n, 100)):  # warm-up
            await db.execute_fetchall("SELECT 1")
        samples = []
        for _ in range(n):
            start = time.perf_counter()
            await db.execute_fetchall("SELECT 1")
            samples.append(time.perf_counter() - start)
        return samples
    finally:
        await db.close()


async def _noop() -> None:
    return None


def sqlite_version() -> str:
    return f"SQLite {sqlite3.sqlite_version}, aiosqlite {aiosqlite.__version__}"


# -- floors: what the same work costs without atriggers, measured in the same process ---------


class Floor:
    """Round trips an application makes itself on the storage a scenario uses,
    measured in the scenario's own process, in blocks interleaved with the
    scenario's own work, so that both see the same machine load.

    ``primary`` names the sample the targets compare with: the application's
    own write (aiosqlite INSERT + COMMIT, a Redis EVALSHA of a trivial script,
    a PostgreSQL write transaction); ``None`` where there is no I/O to compare
    with (memory)."""

    primary: str | None = None

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}

    async def __aenter__(self) -> Floor:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def sample(self, n: int) -> None:
        """Measure each of this floor's operations `n` times more."""
        for name, operation in self.operations().items():
            found = self.samples.setdefault(name, [])
            for _ in range(n):
                start = time.perf_counter()
                await operation()
                found.append(time.perf_counter() - start)

    def operations(self) -> dict[str, Callable[[], Awaitable[object]]]:
        return {"asyncio create_task+await": _create_task}

    def p50_ms(self) -> dict[str, float]:
        return {name: percentile(s, 0.5) * 1e3 for name, s in self.samples.items()}


async def _create_task() -> None:
    await asyncio.create_task(_noop())


class SQLiteFloor(Floor):
    primary = "aiosqlite INSERT+COMMIT"

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = directory

    async def open(self) -> None:
        self.read = await _wal_connection(self.directory / "floor-read.db", None)
        self.write = await _wal_connection(self.directory / "floor-write.db", "")
        self.i = 0

    async def close(self) -> None:
        await self.read.close()
        await self.write.close()

    async def _select1(self) -> None:
        await self.read.execute_fetchall("SELECT 1")

    async def _insert_commit(self) -> None:
        self.i += 1
        await self.write.execute("INSERT INTO t (x) VALUES (?)", (self.i,))
        await self.write.commit()

    def operations(self) -> dict[str, Callable[[], Awaitable[object]]]:
        return {"aiosqlite SELECT 1": self._select1, self.primary or "": self._insert_commit}


class RedisFloor(Floor):
    """redis-py's asyncio client with its defaults (one connection in turn)."""

    primary = "redis-py EVALSHA (trivial script)"

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    async def open(self) -> None:
        import redis.asyncio as aioredis

        self.client = aioredis.Redis.from_url(self.url)
        self.sha = await self.client.script_load("return 1")

    async def close(self) -> None:
        await self.client.aclose()

    async def _ping(self) -> None:
        await self.client.ping()

    async def _evalsha(self) -> None:
        await self.client.evalsha(self.sha, 1, "floor:key")

    def operations(self) -> dict[str, Callable[[], Awaitable[object]]]:
        return {"redis-py PING": self._ping, self.primary or "": self._evalsha}


class PostgresFloor(Floor):
    """asyncpg, one connection: a round trip and a write transaction as an
    application writes it (BEGIN, INSERT, COMMIT: three round trips)."""

    primary = "asyncpg write transaction"

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    async def open(self) -> None:
        import asyncpg  # type: ignore[import-untyped]

        self.conn = await asyncpg.connect(self.url)
        await self.conn.execute("CREATE TABLE IF NOT EXISTS floor_t (x BIGINT)")
        self.i = 0

    async def close(self) -> None:
        await self.conn.close()

    async def _select1(self) -> None:
        await self.conn.fetchval("SELECT 1")

    async def _write(self) -> None:
        self.i += 1
        async with self.conn.transaction():
            await self.conn.execute("INSERT INTO floor_t (x) VALUES ($1)", self.i)

    def operations(self) -> dict[str, Callable[[], Awaitable[object]]]:
        return {"asyncpg SELECT 1": self._select1, self.primary or "": self._write}
