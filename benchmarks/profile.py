"""Where the time of one fire goes.

    python -m benchmarks.profile                 # phase breakdown of a steady fire
    python -m benchmarks.profile --pyinstrument  # plus a call tree (pip install pyinstrument)

The phase breakdown times a SQLite fire (task never runnable, one caller) by
wrapping the storage's call and its transaction, whether run at once on the
event loop (a lone write, the usual case) or handed to aiosqlite's thread; the
same fire on MemoryStorage gives the pure-Python cost.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import atriggers.storage.sqlite as sqlite_module
from atriggers import TriggerManager
from atriggers.storage import MemoryStorage, SQLiteStorage
from atriggers.storage.base import Storage
from atriggers.storage.sqlite_commit import GroupCommit

from . import _tasks  # noqa: F401 - registers bench.noop
from .measure import baseline_select1, percentile
from .scenarios import IDLE

_marks: dict[str, float] = {}


def _instrument() -> None:
    """Timestamps around the storage call (in the loop) and the transaction (on
    the loop, or in the thread after a hand-off)."""
    run_batch, run_alone = sqlite_module._run_batch, sqlite_module._run_alone
    submit = GroupCommit.submit

    def timed(run: Any, handed_off: int) -> Any:
        def transaction(db: Any, work: Any, same_file: Any) -> Any:
            _marks["tx_start"] = time.perf_counter()
            try:
                return run(db, work, same_file)
            finally:
                _marks["tx_end"] = time.perf_counter()
                _marks["handed off"] = handed_off

        return transaction

    async def timed_submit(self: GroupCommit, op: Any) -> Any:
        _marks["call"] = time.perf_counter()
        try:
            return await submit(self, op)
        finally:
            _marks["returned"] = time.perf_counter()

    sqlite_module._run_batch = timed(run_batch, 1)
    sqlite_module._run_alone = timed(run_alone, 0)
    GroupCommit.submit = timed_submit  # type: ignore[method-assign]


async def _fires(
    store: Storage, n: int, phases: list[dict[str, float]] | None, handed: list[int] | None = None
) -> list[float]:
    manager = TriggerManager(store, "s")
    await manager.update_configuration(IDLE)
    for i in range(200):
        await manager.fire("a", {"i": i})
    latencies = []
    for i in range(n):
        _marks.clear()
        start = time.perf_counter()
        await manager.fire("a", {"i": i})
        end = time.perf_counter()
        latencies.append(end - start)
        if phases is not None:
            m = _marks
            phases.append(
                {
                    "python before the storage call": m["call"] - start,
                    "to the transaction (hand-off if any)": m["tx_start"] - m["call"],
                    "SQLite transaction": m["tx_end"] - m["tx_start"],
                    "back to the caller": m["returned"] - m["tx_end"],
                    "python after the storage call": end - m["returned"],
                }
            )
            if handed is not None:
                handed.append(int(m.get("handed off", 0)))
    return latencies


async def breakdown(n: int) -> str:
    _instrument()
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        select1 = await baseline_select1(Path(tmp) / "rt.db", n)
        phases: list[dict[str, float]] = []
        handed: list[int] = []
        async with SQLiteStorage(Path(tmp) / "p.db") as store:
            sqlite_fires = await _fires(store, n, phases, handed)
        async with MemoryStorage() as memory:
            memory_fires = await _fires(memory, n, None)
    total = percentile(sqlite_fires, 0.5)
    lines.append(
        f"SQLite fire, p50 of {n}: {total * 1e6:.0f} us "
        f"(aiosqlite SELECT 1 round trip p50: {percentile(select1, 0.5) * 1e6:.0f} us); "
        f"{sum(handed)} of {n} written in aiosqlite's thread, the others on the loop"
    )
    for phase in phases[0]:
        p50 = percentile([p[phase] for p in phases], 0.5)
        lines.append(f"  {phase:<36} {p50 * 1e6:7.1f} us  ({p50 / total:5.1%})")
    lines.append(
        f"MemoryStorage fire, p50: {percentile(memory_fires, 0.5) * 1e6:.0f} us "
        "(manager + rules + JSON, no I/O)"
    )
    return "\n".join(lines)


async def call_tree(n: int) -> str:
    try:
        from pyinstrument import Profiler
    except ImportError:
        raise SystemExit("the call tree needs pyinstrument: pip install pyinstrument") from None
    with tempfile.TemporaryDirectory() as tmp:
        async with SQLiteStorage(Path(tmp) / "p.db") as store:
            profiler = Profiler(interval=0.0002, async_mode="disabled")
            profiler.start()
            await _fires(store, n, None)
            profiler.stop()
    text: str = profiler.output_text(unicode=False, color=False)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--fires", type=int, default=3000)
    parser.add_argument("--pyinstrument", action="store_true", help="also print a call tree")
    args = parser.parse_args()
    if args.pyinstrument:
        print(asyncio.run(call_tree(args.fires)))
    print(asyncio.run(breakdown(args.fires)))


if __name__ == "__main__":
    main()
