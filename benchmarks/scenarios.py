"""The scenarios of issue 7. Each one drives atriggers through its public API,
checks the final state and returns raw measurements.

A scenario is ``async def (kind, directory, quick) -> Outcome`` where `kind` is
``"sqlite"`` (a WAL file in `directory`), ``"memory"``, ``"redis"`` or
``"postgres"`` (a redis-server or a PostgreSQL cluster started for the scenario
by `serve`; only scenarios that list it, and only where the server and the
extra are installed).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atriggers import Status, Sweeper, TriggerManager
from atriggers import _rules as rules
from atriggers.clock import FakeClock
from atriggers.config import parse_configuration
from atriggers.state import Change, Draft, SessionState
from atriggers.storage import MemoryStorage, SessionFilter, SQLiteStorage
from atriggers.storage.base import Storage
from atriggers.testing.postgres import PostgresCluster, find_bindir

from . import _tasks  # noqa: F401 - registers bench.noop
from .measure import ROOT, baseline_select1, check, child_env, percentile, rss_mb

__all__ = ["SCENARIOS", "Outcome"]

#: Never runnable: "never" is never fired.
IDLE = {"t": {"after": ["a", "never"], "run": "bench.noop"}}
#: Every "tick" makes an instance that can never run.
EVERY_IDLE = {"t": {"after": ["never"], "andEvery": "tick", "run": "bench.noop"}}
#: Every "tick" makes an instance that runs at once.
EVERY_RUN = {"t": {"after": [], "andEvery": "tick", "run": "bench.noop"}}
#: Runs once both "a" and "b" have fired.
PAIR = {"t": {"after": ["a", "b"], "run": "bench.noop"}}


@dataclass
class Outcome:
    fires: int
    seconds: float
    #: Seconds per `fire` call, as the caller saw them.
    latencies: list[float]
    extra: dict[str, Any] = field(default_factory=dict)


#: Where the servers of the "redis" and "postgres" kinds listen (set by `serve`).
_SERVER_URLS: dict[str, str] = {}


def redis_available() -> bool:
    return shutil.which("redis-server") is not None and importlib.util.find_spec("redis") is not None


def postgres_available() -> bool:
    return find_bindir() is not None and importlib.util.find_spec("asyncpg") is not None


#: The kinds backed by a server this machine can start, for the scenarios that list them.
SERVED = tuple(
    kind for kind, available in (("redis", redis_available), ("postgres", postgres_available)) if available()
)


@contextlib.asynccontextmanager
async def serve(kind: str, directory: Path) -> AsyncIterator[None]:
    """The server a kind needs for one scenario (none for sqlite and memory)."""
    if kind == "redis":
        async with redis_server(directory):
            yield
    elif kind == "postgres":
        async with postgres_server():
            yield
    else:
        yield


@contextlib.asynccontextmanager
async def redis_server(directory: Path) -> AsyncIterator[str]:
    """A throw-away redis-server (no persistence) on a free local port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = await asyncio.create_subprocess_exec(
        *("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)),
        *("--save", "", "--appendonly", "no"),
        stdout=asyncio.subprocess.DEVNULL,
    )
    try:
        for _ in range(500):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.01)
            else:
                writer.close()
                await writer.wait_closed()
                break
        _SERVER_URLS["redis"] = f"redis://127.0.0.1:{port}/0"
        yield _SERVER_URLS["redis"]
    finally:
        _SERVER_URLS.pop("redis", None)
        server.terminate()
        await server.wait()


@contextlib.asynccontextmanager
async def postgres_server() -> AsyncIterator[str]:
    """A throw-away PostgreSQL cluster on a free local port (``fsync=off``: it
    survives its own crash, not the machine's, like SQLite's NORMAL mode)."""
    cluster = PostgresCluster.find()
    check(cluster is not None, "PostgreSQL is not installed")
    assert cluster is not None
    await asyncio.to_thread(cluster.start)
    try:
        _SERVER_URLS["postgres"] = cluster.url
        yield cluster.url
    finally:
        _SERVER_URLS.pop("postgres", None)
        await asyncio.to_thread(cluster.destroy)


def store_url(kind: str, directory: Path, name: str) -> str:
    """Where a store is, as a URL (or an SQLite path) other processes can open."""
    if kind == "sqlite":
        return str(directory / f"{name}.db")
    if kind == "redis" and "redis" in _SERVER_URLS:
        return f"{_SERVER_URLS['redis']}?prefix={name}:"
    if kind == "postgres" and "postgres" in _SERVER_URLS:
        return f"{_SERVER_URLS['postgres']}?schema={name}"
    raise ValueError(f"no shared store for kind {kind!r}")


def open_store(kind: str, directory: Path, name: str, **options: Any) -> Storage:
    if kind == "sqlite":
        return SQLiteStorage(directory / f"{name}.db", **options)
    if kind == "memory":
        return MemoryStorage(**options)
    if kind == "redis" and "redis" in _SERVER_URLS:
        from atriggers.storage.redis import RedisStorage

        return RedisStorage(_SERVER_URLS["redis"], prefix=f"{name}:", **options)
    if kind == "postgres" and "postgres" in _SERVER_URLS:
        from atriggers.storage.postgres import PostgresStorage

        return PostgresStorage(_SERVER_URLS["postgres"], schema=name, **options)
    raise ValueError(f"unknown storage kind {kind!r}")


async def timed_fire(
    manager: TriggerManager, trigger: str, kwargs: dict[str, Any], latencies: list[float]
) -> int:
    start = time.perf_counter()
    ready = await manager.fire(trigger, kwargs)
    latencies.append(time.perf_counter() - start)
    return len(ready)


def statuses(instances: Any) -> dict[str, int]:
    found: dict[str, int] = {}
    for instance in instances:
        found[instance.status.value] = found.get(instance.status.value, 0) + 1
    return found


# -- 1. fires into one session, never runnable ---------------------------------------------


async def fire_idle(kind: str, directory: Path, quick: bool) -> Outcome:
    n = 300 if quick else 1000
    rounds = 1000 if not quick else 300
    extra: dict[str, Any] = {}
    async with open_store(kind, directory, "fire_idle") as store:
        manager = TriggerManager(store, "s")
        await manager.update_configuration(IDLE)
        base = (await manager.get_state()).version
        for i in range(50):  # warm-up (not counted), same session
            await manager.fire("a", {"i": -1 - i})
        base += 50
        if kind == "sqlite":
            # The round-trip baseline, measured in this process just before and
            # after, so the ratio is not skewed by what the machine does meanwhile.
            before = await baseline_select1(directory / "rt.db", rounds)
        latencies: list[float] = []
        start = time.perf_counter()
        for i in range(n):
            check(await timed_fire(manager, "a", {"i": i}, latencies) == 0, "a fire scheduled a task")
        seconds = time.perf_counter() - start
        if kind == "sqlite":
            after = await baseline_select1(directory / "rt.db", rounds)
            extra["select1_p50_ms"] = percentile(before + after, 0.5) * 1e3
        state = await manager.get_state()
    check(list(state.instances) == ["t#0"], f"expected only t#0, got {list(state.instances)}")
    check(state.instances["t#0"].status is Status.UNSTARTED, "t#0 should stay unstarted")
    check(state.version == base + n, f"version {state.version}, expected {base + n}: a fire was lost")
    check(state.latest_kwargs["a"] == {"i": n - 1}, "latest kwargs of 'a' are wrong")
    return Outcome(n, seconds, latencies, extra)


# -- 2. andEvery fires, instances accumulate, never runnable ------------------------------


async def every_idle(kind: str, directory: Path, quick: bool) -> Outcome:
    n = 300 if quick else 1000
    async with open_store(kind, directory, "every_idle") as store:
        manager = TriggerManager(store, "s")
        await manager.update_configuration(EVERY_IDLE)
        latencies: list[float] = []
        start = time.perf_counter()
        for i in range(n):
            check(await timed_fire(manager, "tick", {"i": i}, latencies) == 0, "a tick scheduled a task")
        seconds = time.perf_counter() - start
        state = await manager.get_state()
    check(len(state.instances) == n, f"expected {n} instances, got {len(state.instances)}")
    check(statuses(state.instances.values()) == {"unstarted": n}, "every instance should be unstarted")
    check(state.instances[f"t#{n - 1}"].kwargs == {"tick": {"i": n - 1}}, "last instance's kwargs")
    first, last = latencies[: n // 10], latencies[-(n // 10) :]
    return Outcome(
        n,
        seconds,
        latencies,
        {
            "first_10pct_p50_ms": percentile(first, 0.5) * 1e3,
            "last_10pct_p50_ms": percentile(last, 0.5) * 1e3,
        },
    )


# -- 3. andEvery fires whose tasks run ------------------------------------------------------


async def every_run(kind: str, directory: Path, quick: bool) -> Outcome:
    n = 300 if quick else 1000
    async with open_store(kind, directory, "every_run") as store:
        manager = TriggerManager(store, "s")
        await manager.update_configuration(EVERY_RUN)
        latencies: list[float] = []
        start = time.perf_counter()
        for i in range(n):
            check(await timed_fire(manager, "tick", {"i": i}, latencies) == 1, "a tick must schedule one run")
        await manager.join()
        seconds = time.perf_counter() - start
        state = await manager.get_state()
    check(len(state.instances) == n, f"expected {n} instances, got {len(state.instances)}")
    found = statuses(state.instances.values())
    check(found == {"finished": n}, f"not all finished: {found}")
    return Outcome(n, seconds, latencies)


# -- 4. many sessions driven concurrently -----------------------------------------------------


async def sessions(kind: str, directory: Path, quick: bool) -> Outcome:
    n = 200 if quick else 1000
    latencies: list[float] = []

    async def one(store: Storage, uid: str) -> None:
        manager = TriggerManager(store, uid)
        await manager.update_configuration(PAIR)
        check(await timed_fire(manager, "a", {"uid": uid}, latencies) == 0, f"{uid}: 'a' alone ran t")
        check(await timed_fire(manager, "b", {}, latencies) == 1, f"{uid}: 'b' did not schedule t")
        await manager.join()

    async with open_store(kind, directory, "sessions") as store:
        start = time.perf_counter()
        await asyncio.gather(*(one(store, f"s{i}") for i in range(n)))
        seconds = time.perf_counter() - start
        states = await asyncio.gather(*(TriggerManager(store, f"s{i}").get_state() for i in range(n)))
    for state in states:
        check(list(state.instances) == ["t#0"], f"{state.uid}: instances {list(state.instances)}")
        check(state.instances["t#0"].status is Status.FINISHED, f"{state.uid}: t#0 not finished")
        check(state.instances["t#0"].kwargs == {"a": {"uid": state.uid}, "b": {}}, f"{state.uid}: kwargs")
    return Outcome(2 * n, seconds, latencies, {"sessions": n})


# -- 5. growth: resolved instances do not slow a fire ----------------------------------------


GROWTH = {
    "t": {"after": ["a", "never"], "run": "bench.noop"},
    "h": {"after": [], "andEvery": "tick", "run": "bench.noop"},
}


async def growth(kind: str, directory: Path, quick: bool) -> Outcome:
    """Two sessions: "small" keeps 10 resolved instances, "big" grows to N. At each
    checkpoint, fires into both alternate so that the ratio compares like with
    like; "cold" fires first drop the cached snapshot, so they include the read."""
    checkpoints = [10, 1000] if quick else [10, 1000, 5000, 10000]
    probes = 200 if quick else 400
    per_n: dict[int, dict[str, float]] = {}
    last: list[float] = []
    fires = 0
    start = time.perf_counter()
    async with open_store(kind, directory, "growth") as store:
        small, big = TriggerManager(store, "small"), TriggerManager(store, "big")
        for manager in (small, big):
            await manager.update_configuration(GROWTH)
        resolved = {"small": 0, "big": 0}

        async def grow(manager: TriggerManager, to: int) -> None:
            # Bounded bursts: concurrent runs share transactions, as in production.
            while resolved[manager.uid] < to:
                burst = min(100, to - resolved[manager.uid])
                for _ in range(burst):
                    check(len(await manager.fire("tick", {})) == 1, "a tick must run h")
                await manager.join()
                resolved[manager.uid] += burst

        await grow(small, 10)
        for target in checkpoints:
            await grow(big, target)
            warm: dict[str, list[float]] = {"small": [], "big": []}
            cold: dict[str, list[float]] = {"small": [], "big": []}
            for i in range(probes):
                for manager in (small, big):
                    await timed_fire(manager, "a", {"i": i}, warm[manager.uid])
            for i in range(probes // 4):
                for manager in (small, big):
                    store.forget(manager.uid)
                    await timed_fire(manager, "a", {"i": i}, cold[manager.uid])
            fires += 2 * (probes + probes // 4)
            per_n[target] = {
                "warm_ms": percentile(warm["big"], 0.5) * 1e3,
                "warm_ratio": percentile(warm["big"], 0.5) / percentile(warm["small"], 0.5),
                "cold_ms": percentile(cold["big"], 0.5) * 1e3,
                "cold_ratio": percentile(cold["big"], 0.5) / percentile(cold["small"], 0.5),
            }
            last = warm["big"]
        seconds = time.perf_counter() - start
        big_state = await big.get_state()
        small_state = await small.get_state()
    top = checkpoints[-1]
    for state, count in ((big_state, top), (small_state, 10)):
        found = statuses(i for i in state.instances.values() if i.task_name == "h")
        check(found == {"finished": count}, f"{state.uid}: h instances {found}, expected {count} finished")
        check(state.instances["t#0"].status is Status.UNSTARTED, f"{state.uid}: t#0 must stay unstarted")
    # Throughput here is that of the probe fires into the big session at the last
    # checkpoint (building the history is not what is measured).
    return Outcome(
        len(last),
        sum(last),
        last,
        {
            "by_resolved": per_n,
            "max_resolved": top,
            "probe_fires": fires,
            "seconds_total": seconds,
        },
    )


# -- 6. several OS processes firing into one session -------------------------------------------


def _spawn_workers(where: str, uid: str, processes: int, fires: int, run: bool) -> list[dict[str, Any]]:
    env = child_env()
    command = [sys.executable, "-m", "benchmarks.worker", where, uid, str(fires)]
    workers = [
        subprocess.Popen(
            [*command, str(p), "run" if run else "idle"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        for p in range(processes)
    ]
    try:
        for worker in workers:  # every process is imported and connected: start together
            assert worker.stdout is not None
            line = worker.stdout.readline()
            check(line.strip() == "ready", f"worker did not start: {line!r}")
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        reports = []
        for worker in workers:
            out, _ = worker.communicate(timeout=300)
            check(worker.returncode == 0, f"worker exited with {worker.returncode}")
            reports.append(json.loads(out.strip().splitlines()[-1]))
        return reports
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


async def _processes(kind: str, directory: Path, quick: bool, run: bool) -> Outcome:
    check(kind != "memory", "the multi-process scenario needs a shared store")
    processes, per = (4, 100) if quick else (4, 250)
    name = "procs_run" if run else "procs"
    async with open_store(kind, directory, name) as store:
        manager = TriggerManager(store, "shared")
        await manager.update_configuration(EVERY_RUN if run else IDLE)
        base = (await manager.get_state()).version
    # The workers block this loop while they run: nothing else is on it.
    where = store_url(kind, directory, name)
    reports = await asyncio.to_thread(_spawn_workers, where, "shared", processes, per, run)
    latencies = [x for report in reports for x in report["latencies"]]
    seconds = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    total = processes * per
    async with open_store(kind, directory, name) as store:
        state = await TriggerManager(store, "shared").get_state()
    check(len(latencies) == total, f"{len(latencies)} fires reported, expected {total}")
    if run:
        count = len(state.instances)
        check(count == total, f"{count} instances, expected {total}: fires lost")
        found = statuses(state.instances.values())
        check(found == {"finished": total}, f"statuses {found}")
        check(sum(r["scheduled"] for r in reports) == total, "each fire must schedule exactly one run")
    else:
        check(state.version == base + total, f"version {state.version}, expected {base + total}: fires lost")
        check(list(state.instances) == ["t#0"], f"instances {list(state.instances)}")
    return Outcome(
        total,
        seconds,
        latencies,
        {
            "processes": processes,
            "conflicts": sum(r["conflicts"] for r in reports),
            "lost": 0,
        },
    )


async def procs(kind: str, directory: Path, quick: bool) -> Outcome:
    return await _processes(kind, directory, quick, run=False)


async def procs_run(kind: str, directory: Path, quick: bool) -> Outcome:
    return await _processes(kind, directory, quick, run=True)


# -- 7. scale: many distinct sessions in one process --------------------------------------------


async def scale(kind: str, directory: Path, quick: bool) -> Outcome:
    """Configure and fire into N distinct uids, 500 at a time, then compare RSS with
    what it was after a warm-up wave: the locks and snapshot caches must not grow."""
    n = 5000 if quick else 100_000
    wave = 500
    latencies: list[float] = []

    async def one(store: Storage, uid: str, sample: list[float]) -> None:
        manager = TriggerManager(store, uid)
        await manager.update_configuration(IDLE)
        await timed_fire(manager, "a", {"uid": uid}, sample)

    async with open_store(kind, directory, "scale") as store:
        for i in range(0, 2 * wave, wave):  # warm-up: the cache fills, arenas settle
            await asyncio.gather(*(one(store, f"w{j}", []) for j in range(i, i + wave)))
        gc.collect()
        before = rss_mb()
        start = time.perf_counter()
        for i in range(0, n, wave):
            await asyncio.gather(*(one(store, f"s{j}", latencies) for j in range(i, min(n, i + wave))))
        seconds = time.perf_counter() - start
        gc.collect()
        after = rss_mb()
        # Private, but exactly the leak this scenario looks for.
        locks = len(store.locks)
        cached = len(store.cache)
        uids = await store.list_sessions()
        samples = await asyncio.gather(
            *(TriggerManager(store, f"s{j}").get_state() for j in range(0, n, max(1, n // 100)))
        )
    check(len(uids) == n + 2 * wave, f"{len(uids)} sessions stored, expected {n + 2 * wave}")
    check(locks == 0, f"{locks} session locks left behind")
    check(cached <= store.cache.size, f"{cached} cached snapshots, cache_size is {store.cache.size}")
    for state in samples:
        check(
            list(state.instances) == ["t#0"] and state.instances["t#0"].kwargs == {"a": {"uid": state.uid}},
            f"{state.uid}: wrong state",
        )
    return Outcome(
        n,
        seconds,
        latencies,
        {
            "sessions": n,
            "rss_before_mb": before,
            "rss_after_mb": after,
            "rss_delta_mb": after - before,
            "cached_snapshots": cached,
            "locks_left": locks,
        },
    )


# -- 8. sweep: its cost depends on what is due, not on the sessions stored ------------------------


#: Every session's instance waits in the due index for a window that does not close
#: during the scenario: the index is as large as the store.
SWEEP_IDLE = {"t": {"after": ["a", "never"], "within": 10**8, "run": "bench.noop"}}
#: Every "a" makes an instance whose window closes a minute later (then it expires).
SWEEP_HOT = {"w": {"after": ["never"], "andEvery": "a", "within": 60, "run": "bench.noop"}}
SWEEP_DUE = 10


async def sweep(kind: str, directory: Path, quick: bool) -> Outcome:
    """Two stores, one of 100 sessions and one of 100,000 (quick: 2,000), each
    session with an entry in the due index; 10 sessions of each get an instance
    whose ``within`` window closes. Sweeps alternate between the stores: one
    with nothing due, then (the clock moved past the windows) one that must
    expire exactly those 10. The p50s are compared, big store against small."""
    sizes = {"small": 100, "big": 2000 if quick else 100_000}
    rounds = 20 if quick else 100
    # redis-py's pool refuses more than 100 connections at once (so does the storage).
    wave = 100 if kind == "redis" else 500
    clock = FakeClock(time.time())
    timings: dict[str, dict[str, list[float]]] = {size: {"due": [], "idle": []} for size in sizes}
    handled = 0
    async with contextlib.AsyncExitStack() as stack:
        stores: dict[str, Storage] = {}
        for size, n in sizes.items():
            store = stores[size] = await stack.enter_async_context(
                open_store(kind, directory, f"sweep{size}")
            )
            store.clock = clock

            async def idle(store: Storage, uid: str) -> None:
                manager = TriggerManager(store, uid)
                await manager.update_configuration(SWEEP_IDLE)
                await manager.fire("a", {})

            async def hot(store: Storage, uid: str) -> None:
                await TriggerManager(store, uid).update_configuration(SWEEP_HOT)

            for i in range(0, n - SWEEP_DUE, wave):
                await asyncio.gather(*(idle(store, f"s{j}") for j in range(i, min(n - SWEEP_DUE, i + wave))))
            await asyncio.gather(*(hot(store, f"hot{j}") for j in range(SWEEP_DUE)))
            store.cache.clear()
        sweepers = {size: Sweeper(store, limit=100) for size, store in stores.items()}
        for r in range(rounds + 2):  # the first two rounds warm up
            for size in sizes if r % 2 else reversed(sizes):
                store, sweeper = stores[size], sweepers[size]
                start = time.perf_counter()
                nothing = await sweeper.run_once()
                idle_s = time.perf_counter() - start
                check(nothing == 0, f"{kind}/{size}: a sweep found {nothing} entries due too early")
                await asyncio.gather(
                    *(TriggerManager(store, f"hot{j}").fire("a", {}) for j in range(SWEEP_DUE))
                )
                await clock.advance(61, settle=0)
                start = time.perf_counter()
                done = await sweeper.run_once()
                due_s = time.perf_counter() - start
                check(done == SWEEP_DUE, f"{kind}/{size}: a sweep handled {done} of {SWEEP_DUE} due entries")
                if r >= 2:
                    timings[size]["idle"].append(idle_s)
                    timings[size]["due"].append(due_s)
                    handled += done
                await clock.advance(1, settle=0)
        counts = {size: dict(sweepers[size].counts) for size in sizes}
        sessions = {size: len(await stores[size].list_sessions()) for size in sizes}
        sample = await TriggerManager(stores["big"], "hot0").get_state()
    expected = {"expired": SWEEP_DUE * (rounds + 2)}
    check(counts == {"small": expected, "big": expected}, f"sweepers handled {counts}, expected {expected}")
    check(sessions == sizes, f"stored sessions {sessions}, expected {sizes}")
    found = statuses(sample.instances.values())
    check(found == {"abandoned": rounds + 2}, f"hot0 ended with {found}")
    p50 = {size: {what: percentile(t, 0.5) for what, t in timings[size].items()} for size in sizes}
    return Outcome(
        handled // 2,
        sum(timings["big"]["due"]),
        timings["big"]["due"],
        {
            "sessions": sizes,
            "due": SWEEP_DUE,
            "due_p50_ms": {size: p50[size]["due"] * 1e3 for size in sizes},
            "idle_p50_ms": {size: p50[size]["idle"] * 1e3 for size in sizes},
            "due_ratio": p50["big"]["due"] / p50["small"]["due"],
            "idle_ratio": p50["big"]["idle"] / p50["small"]["idle"],
        },
    )


# -- listing sessions through the session index ------------------------------------------------

LISTED = {"t": {"after": ["go"], "run": "bench.noop"}}
LISTED_FAILED = 10


async def listing(kind: str, directory: Path, quick: bool) -> Outcome:
    """Two stores, one of 100 sessions and one of 100,000 (quick: 2,000), 10 of
    them failed in each, spread over the uid range. Listing the failed sessions
    (`list_summaries` filtered to failed) alternates between the stores; the
    p50s are compared, big store against small."""
    return await _listing(kind, directory, quick)


def _session_change(uid: str, failed: bool) -> Change:
    """One write that configures a session, fires it, and ends its instance
    failed or finished (how the store got there does not matter to a listing)."""
    draft = Draft(SessionState(uid=uid))
    rules.configure(draft, parse_configuration(LISTED))
    rules.fire(draft, "go", {"n": uid})
    draft.set_status(draft.edit("t#0"), Status.FAILED if failed else Status.FINISHED)
    return draft.changes()


async def _listing(kind: str, directory: Path, quick: bool) -> Outcome:
    sizes = {"small": 100, "big": 2000 if quick else 100_000}
    rounds = 50 if quick else 300
    wave = 100 if kind == "redis" else 500
    timings: dict[str, list[float]] = {size: [] for size in sizes}
    async with contextlib.AsyncExitStack() as stack:
        stores: dict[str, Storage] = {}
        for size, n in sizes.items():
            store = stores[size] = await stack.enter_async_context(open_store(kind, directory, f"list{size}"))
            failed = {round(k * n / LISTED_FAILED) for k in range(LISTED_FAILED)}

            async def write(store: Storage, i: int, failed: set[int] = failed) -> None:
                uid = f"s{i:07d}"
                await store.store(uid, 0, _session_change(uid, i in failed))

            for i in range(0, n, wave):
                await asyncio.gather(*(write(store, j) for j in range(i, min(n, i + wave))))
        wanted = SessionFilter(failed=True)
        for r in range(rounds + 5):  # the first five rounds warm up
            for size in sizes if r % 2 else reversed(sizes):
                start = time.perf_counter()
                page = await stores[size].list_summaries(wanted, limit=50)
                took = time.perf_counter() - start
                found = [s.uid for s in page.summaries]
                check(
                    len(found) == LISTED_FAILED
                    and page.next is None
                    and all(s.failed for s in page.summaries),
                    f"{kind}/{size}: listed {len(found)} failed sessions, expected {LISTED_FAILED}",
                )
                if r >= 5:
                    timings[size].append(took)
        counts = {size: await stores[size].count_sessions() for size in sizes}
    for size, n in sizes.items():
        check(
            (counts[size].sessions, counts[size].failed) == (n, LISTED_FAILED),
            f"{kind}/{size}: the index counts {counts[size]}",
        )
    p50 = {size: percentile(t, 0.5) for size, t in timings.items()}
    return Outcome(
        len(timings["big"]),
        sum(timings["big"]),
        timings["big"],
        {
            "sessions": sizes,
            "failed": LISTED_FAILED,
            "p50_ms": {size: p50[size] * 1e3 for size in sizes},
            "ratio": p50["big"] / p50["small"],
        },
    )


# -- 9. fires with an idempotency key against fires without ------------------------------------


async def fire_key(kind: str, directory: Path, quick: bool) -> Outcome:
    """Fires into two sessions alternate, one caller awaiting each: one session's
    fires carry an idempotency key (a new one each, as distinct requests do),
    the other's none. The p50s are compared (keyed against plain), measured in
    the same run; the keys outnumber what a session keeps (1,000), so the
    oldest are being replaced throughout."""
    return await _fire_key(kind, directory, quick)


async def _fire_key(kind: str, directory: Path, quick: bool) -> Outcome:
    n = 1200 if quick else 4000
    latencies: dict[str, list[float]] = {"plain": [], "keyed": []}
    async with open_store(kind, directory, "fire_key") as store:
        managers = {name: TriggerManager(store, name) for name in latencies}
        for manager in managers.values():
            await manager.update_configuration(IDLE)
        for i in range(100):  # warm-up (not counted)
            await managers["plain"].fire("a", {"i": -1 - i})
            await managers["keyed"].fire("a", {"i": -1 - i}, key=f"warm-{i}")
        start = time.perf_counter()
        for i in range(n):
            for name in ("plain", "keyed") if i % 2 else ("keyed", "plain"):
                began = time.perf_counter()
                if name == "plain":
                    await managers[name].fire("a", {"i": i})
                else:
                    await managers[name].fire("a", {"i": i}, key=f"req-{i}")
                latencies[name].append(time.perf_counter() - began)
        seconds = time.perf_counter() - start
        version = (await managers["keyed"].get_state()).version
        # A retry of a held key applies nothing.
        await managers["keyed"].fire("a", {"i": n - 1}, key=f"req-{n - 1}")
        store.forget("keyed")
        keyed = await managers["keyed"].get_state()
        plain = await managers["plain"].get_state()
    check(keyed.version == version, "a retried keyed fire was stored again")
    check(
        plain.version == keyed.version,
        f"versions differ: {plain.version} != {keyed.version}: a fire was lost",
    )
    held = [r.key for r in keyed.fire_keys.records()]
    expected = [f"req-{i}" for i in range(n - TriggerManager.max_keys, n)]
    check(held == expected, f"the session holds {len(held)} keys, not the last {TriggerManager.max_keys}")
    check(keyed.latest_kwargs["a"] == {"i": n - 1}, "latest kwargs of 'a' are wrong")
    p50 = {name: percentile(samples, 0.5) for name, samples in latencies.items()}
    return Outcome(
        n,
        seconds / 2,
        latencies["keyed"],
        {
            "plain_p50_ms": p50["plain"] * 1e3,
            "keyed_p50_ms": p50["keyed"] * 1e3,
            "key_ratio": p50["keyed"] / p50["plain"],
        },
    )


Scenario = Callable[[str, Path, bool], Coroutine[Any, Any, Outcome]]

#: name -> (function, storage kinds it runs on)
SCENARIOS: dict[str, tuple[Scenario, tuple[str, ...]]] = {
    "fire_idle": (fire_idle, ("sqlite", "memory", *SERVED)),
    "every_idle": (every_idle, ("sqlite", "memory")),
    "every_run": (every_run, ("sqlite", "memory", *SERVED)),
    "sessions": (sessions, ("sqlite", "memory", *SERVED)),
    "growth": (growth, ("sqlite", "memory", *SERVED)),
    "procs": (procs, ("sqlite", *SERVED)),
    "procs_run": (procs_run, ("sqlite", *SERVED)),
    "scale": (scale, ("sqlite", "memory")),
    "sweep": (sweep, ("sqlite", "memory", *SERVED)),
    "listing": (listing, ("sqlite", *SERVED)),
    "fire_key": (fire_key, ("sqlite", "memory", *SERVED)),
}
