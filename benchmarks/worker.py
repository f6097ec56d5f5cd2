"""One OS process of the multi-process scenario.

``python -m benchmarks.worker STORE UID FIRES INDEX idle|pile|run``: opens the
store (an SQLite file's path, or a storage URL), prints "ready", waits for "go"
on stdin, fires FIRES times ("a" for idle, "tick" for the ``andEvery`` trigger
of pile and run), prints a JSON report.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from atriggers import TriggerManager
from atriggers.state import Change, SessionState
from atriggers.storage import SQLiteStorage, open_storage
from atriggers.storage.base import Reapply, Storage, VersionConflict

from . import _tasks  # noqa: F401 - registers bench.noop


class CountingSQLite(SQLiteStorage):
    """Counts compare-and-swap conflicts: resolved inside the write transaction
    (`reapply`) or handed back to the manager (`VersionConflict`, a retry)."""

    conflicts = 0

    async def store_or_reapply(
        self, uid: str, expected_version: int, change: Change, reapply: Reapply | None
    ) -> Change | None:
        counted = reapply
        if reapply is not None:

            def counted(current: SessionState) -> Change | None:
                self.conflicts += 1  # in aiosqlite's thread; only that thread counts
                return reapply(current)

        try:
            return await super().store_or_reapply(uid, expected_version, change, counted)
        except VersionConflict:
            self.conflicts += 1
            raise


def _conflicts(store: Storage) -> Callable[[], int]:
    """Counts the compare-and-swap conflicts of a storage that is not SQLite: each
    operation it re-applies itself (`reapply`) or hands back to the manager
    (`VersionConflict`, a retry)."""
    count = 0
    original = store.store_or_reapply

    async def counted(
        uid: str, expected_version: int, change: Change, reapply: Reapply | None
    ) -> Change | None:
        nonlocal count
        counting = reapply
        if reapply is not None:

            def counting(current: SessionState) -> Change | None:
                nonlocal count
                count += 1
                return reapply(current)

        try:
            return await original(uid, expected_version, change, counting)
        except VersionConflict:
            count += 1
            raise

    store.store_or_reapply = counted  # type: ignore[method-assign]
    return lambda: count


async def main(where: str, uid: str, fires: int, index: int, mode: str) -> dict[str, Any]:
    store = open_storage(where) if "://" in where else CountingSQLite(Path(where))
    conflicts: Callable[[], int]
    if isinstance(store, CountingSQLite):
        sqlite_store = store
        conflicts = lambda: sqlite_store.conflicts  # noqa: E731
    else:
        conflicts = _conflicts(store)
    async with store:
        manager = TriggerManager(store, uid)
        await manager.get_state()
        print("ready", flush=True)
        if (await asyncio.to_thread(sys.stdin.readline)).strip() != "go":
            raise SystemExit("the benchmark that started this worker went away")
        trigger = "a" if mode == "idle" else "tick"
        latencies = []
        scheduled = 0
        start = time.time()
        for i in range(fires):
            began = time.perf_counter()
            scheduled += len(await manager.fire(trigger, {"process": index, "i": i}))
            latencies.append(time.perf_counter() - began)
        await manager.join()
        end = time.time()
        return {
            "latencies": latencies,
            "start": start,
            "end": end,
            "scheduled": scheduled,
            "conflicts": conflicts(),
        }


if __name__ == "__main__":
    where, uid, count, index, mode = sys.argv[1:6]
    report = asyncio.run(main(where, uid, int(count), int(index), mode))
    print(json.dumps(report), flush=True)
