"""One OS process of the multi-process scenario.

``python -m benchmarks.worker DB UID FIRES INDEX idle|run``: opens the file, prints
"ready", waits for "go" on stdin, fires FIRES times, prints a JSON report.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from atriggers import TriggerManager
from atriggers.state import Change, SessionState
from atriggers.storage import SQLiteStorage
from atriggers.storage.base import Reapply, VersionConflict

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


async def main(path: Path, uid: str, fires: int, index: int, run: bool) -> dict[str, Any]:
    async with CountingSQLite(path) as store:
        manager = TriggerManager(store, uid)
        await manager.get_state()
        print("ready", flush=True)
        if (await asyncio.to_thread(sys.stdin.readline)).strip() != "go":
            raise SystemExit("the benchmark that started this worker went away")
        trigger = "tick" if run else "a"
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
            "conflicts": store.conflicts,
        }


if __name__ == "__main__":
    db, uid, count, index, mode = sys.argv[1:6]
    report = asyncio.run(main(Path(db), uid, int(count), int(index), mode == "run"))
    print(json.dumps(report), flush=True)
