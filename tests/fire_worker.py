"""Fires triggers into one session from a separate OS process (used by tests).

usage: python fire_worker.py STORAGE UID COUNT RUNS_FILE [CONCURRENCY]

STORAGE is an SQLite file's path or any storage URL (``postgresql://...``).
With CONCURRENCY > 1, that many fires are in flight at once (as the requests of
a web server are); by default they go one after the other.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from atriggers import ConcurrencyError, TaskContext, TriggerManager, task
from atriggers.storage import SQLiteStorage, open_storage
from atriggers.storage.base import Storage


async def main(where: str, uid: str, count: int, runs_file: str, concurrency: int = 1) -> None:
    @task("worker.record")
    async def record(context: TaskContext) -> dict[str, Any]:
        with open(runs_file, "a") as out:  # noqa: ASYNC230 - a test helper
            out.write(f"{context.instance_name}\n")
        return {"pid": os.getpid()}

    storage: Storage = open_storage(where) if "://" in where else SQLiteStorage(where)
    async with storage:
        manager = TriggerManager(storage, uid)
        limit = asyncio.Semaphore(concurrency)

        async def fire(n: int) -> None:
            async with limit:
                for _ in range(20):
                    try:
                        await manager.fire("tick", {"pid": os.getpid(), "n": n})
                        return
                    except ConcurrencyError:
                        continue  # nothing was written: firing again is safe
                raise RuntimeError(f"fire {n} kept conflicting")

        await asyncio.gather(*(fire(n) for n in range(count)))
        await manager.join()


if __name__ == "__main__":
    concurrency = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], concurrency))
