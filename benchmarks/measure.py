"""Timing, memory and baseline helpers shared by the scenarios."""

from __future__ import annotations

import asyncio
import os
import resource
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import aiosqlite

ROOT = Path(__file__).resolve().parent.parent

__all__ = [
    "ROOT",
    "CheckFailed",
    "child_env",
    "baseline_create_task",
    "baseline_select1",
    "baseline_write_txn",
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


async def baseline_write_txn(path: Path, n: int) -> list[float]:
    """One raw aiosqlite write transaction as an application writes it:
    ``await db.execute("INSERT ...")`` then ``await db.commit()`` (WAL,
    synchronous=NORMAL; two hand-offs)."""
    db = await _wal_connection(path, "")  # sqlite3's implicit BEGIN before the INSERT
    try:
        samples = []
        for i in range(n):
            start = time.perf_counter()
            await db.execute("INSERT INTO t (x) VALUES (?)", (i,))
            await db.commit()
            samples.append(time.perf_counter() - start)
        return samples
    finally:
        await db.close()


async def _noop() -> None:
    return None


async def baseline_create_task(n: int) -> list[float]:
    """``await asyncio.create_task(noop())``: the floor of anything the loop schedules."""
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await asyncio.create_task(_noop())
        samples.append(time.perf_counter() - start)
    return samples


def sqlite_version() -> str:
    return f"SQLite {sqlite3.sqlite_version}, aiosqlite {aiosqlite.__version__}"
