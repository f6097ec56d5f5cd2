"""Retries the same keyed fires into one session from a separate OS process
(used by tests/test_idempotency.py), as several web servers would when clients
and proxies retry.

usage: python keyed_fire_worker.py STORAGE_URL UID COUNT RUNS_FILE

Waits for a line on stdin (so every process starts together), then fires
``tick`` with ``{"n": n}`` and key ``order-<n>`` for n in 0..COUNT-1, eight at a
time, in an order of its own; prints one JSON line: key -> names returned.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from typing import Any

from atriggers import ConcurrencyError, TaskContext, TaskRegistry, TriggerManager
from atriggers.storage import open_storage


async def main(url: str, uid: str, count: int, runs_file: str) -> None:
    tasks = TaskRegistry(entry_point_group=None)

    async def record(context: TaskContext) -> dict[str, Any]:
        with open(runs_file, "a") as out:  # noqa: ASYNC230 - a test helper
            out.write(f"{context.instance_name}\n")
        return {"pid": os.getpid()}

    tasks.register(record, "keyed.record")
    returned: dict[str, list[str]] = {}
    order = list(range(count))
    random.shuffle(order)
    limit = asyncio.Semaphore(8)
    async with open_storage(url) as storage:
        manager = TriggerManager(storage, uid, tasks=tasks)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)

        async def fire(n: int) -> None:
            async with limit:
                for _ in range(20):
                    try:
                        scheduled = await manager.fire("tick", {"n": n}, key=f"order-{n}")
                    except ConcurrencyError:
                        continue  # nothing was written: retrying is safe
                    returned[f"order-{n}"] = [i.name for i in scheduled]
                    return

        await asyncio.gather(*(fire(n) for n in order))
        await manager.join()
    print(json.dumps(returned), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
