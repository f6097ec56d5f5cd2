"""The app process of the recovery tests, killed with SIGKILL mid-stream.

    python tests/recovery_app.py KIND WHERE UID

KIND is ``sqlite`` (WHERE: the database file) or ``redis`` (WHERE: a storage
URL). It opens the storage with a short owner lease (``RECOVERY_LEASE``
seconds), configures `recovery_tasks.CONFIGURATION` in session UID and fires
every trigger: two runs in progress, two waiting for a slot, a retry cooldown
and a delayed fire (``RECOVERY_DELAY`` seconds) pending. Once storage shows all
of it, it prints ``READY {json}`` and waits to be killed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import recovery_tasks

from atriggers import Status, TriggerManager
from atriggers.storage import SQLiteStorage
from atriggers.storage.base import Storage


def make_storage(kind: str, where: str, lease: float) -> Storage:
    if kind == "sqlite":
        return SQLiteStorage(where, lease=lease)
    if kind == "postgres":
        from atriggers.storage.postgres import PostgresStorage

        found = PostgresStorage.from_url(where)
        return PostgresStorage(found.postgres_url, schema=found.schema, lease=lease)
    from atriggers.storage.redis import RedisStorage

    storage = RedisStorage.from_url(where)
    return RedisStorage(storage.redis_url, prefix=storage.prefix, lease=lease)


async def main(kind: str, where: str, uid: str) -> None:
    recovery_tasks.register(concurrency=2)
    lease = float(os.environ.get("RECOVERY_LEASE", "1"))
    delay = float(os.environ.get("RECOVERY_DELAY", "3"))
    async with make_storage(kind, where, lease) as storage:
        manager = TriggerManager(storage, uid)
        await manager.update_configuration(recovery_tasks.CONFIGURATION)
        for trigger in "abcde":
            await manager.fire(trigger, {"n": trigger})
        fired_late = time.time()
        await manager.fire("late", {"n": "late"}, delay=delay)
        while True:
            state = await storage.load_all(uid)
            statuses = {name: i.status for name, i in state.instances.items()}
            if (
                statuses.get("t_run_fail#0") is Status.RUNNING
                and statuses.get("t_run_retry#0") is Status.RUNNING
                and statuses.get("t_cool#0") is Status.REPLAYED
                and len(state.instances) == 6
            ):
                break
            await asyncio.sleep(0.02)
        print(
            "READY "
            + json.dumps(
                {
                    "pid": os.getpid(),
                    "owner": storage.lease.owner,
                    "firedLate": fired_late,
                    "lateAt": fired_late + delay,
                    "statuses": {name: s.value for name, s in statuses.items()},
                }
            ),
            flush=True,
        )
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
