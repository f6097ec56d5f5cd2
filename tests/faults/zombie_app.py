"""A process whose run outlives its deadline while frozen (SIGSTOP), then
wakes up and tries to store its outcome: a zombie.

    python tests/faults/zombie_app.py DB_PATH UID

Configures ``t_nap`` (``timeout: 1``, its body sleeps 1.5 s) and ``t_next``
(after ``t_nap``), fires ``go``, prints ``READY {json}`` once ``t_nap#0`` is
running and its body has recorded the run, waits for the run to end and prints
``DONE {json}`` with the statuses it then reads. Warnings are logged to stderr.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import recovery_tasks

from atriggers import Status, TriggerManager
from atriggers.storage import SQLiteStorage

CONFIGURATION: dict[str, dict[str, Any]] = {
    "t_nap": {"after": ["go"], "run": "rec.nap", "timeout": 1},
    "t_next": {"after": ["t_nap"], "run": "rec.quick"},
}


async def main(path: str, uid: str) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    recovery_tasks.register()
    async with SQLiteStorage(path) as storage:
        manager = TriggerManager(storage, uid)
        await manager.update_configuration(CONFIGURATION)
        await manager.fire("go", {})
        # Ready once the body has recorded its run: stopped earlier, this process
        # could hold the runs database's write lock while the test reads it.
        runs_db = Path(os.environ[recovery_tasks.RUNS_DB])
        while True:
            if (await manager.get_instance("t_nap#0")).status is Status.RUNNING and recovery_tasks.runs(
                runs_db, uid
            ):
                break
            await asyncio.sleep(0.01)
        print("READY " + json.dumps({"pid": os.getpid()}), flush=True)
        await manager.join()
        state = await storage.load_all(uid)
        print("DONE " + json.dumps({n: i.status.value for n, i in state.instances.items()}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:3]))
