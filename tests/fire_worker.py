"""Fires triggers into one session from a separate OS process (used by tests).

usage: python fire_worker.py DB_PATH UID COUNT RUNS_FILE
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from atriggers import TaskContext, TriggerManager, task
from atriggers.storage import SQLiteStorage


async def main(db_path: str, uid: str, count: int, runs_file: str) -> None:
    @task("worker.record")
    async def record(context: TaskContext) -> dict[str, Any]:
        with open(runs_file, "a") as out:  # noqa: ASYNC230 - a test helper
            out.write(f"{context.instance_name}\n")
        return {"pid": os.getpid()}

    async with SQLiteStorage(db_path) as storage:
        manager = TriggerManager(storage, uid)
        for n in range(count):
            await manager.fire("tick", {"pid": os.getpid(), "n": n})
        await manager.join()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
