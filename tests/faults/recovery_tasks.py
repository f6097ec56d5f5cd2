"""Tasks of the recovery tests, registered both in the app process that gets
killed (`recovery_app.py`) and in the test process whose sweeper recovers its
work. Every run is recorded in a side table (an SQLite file: instance, pid,
start and end times), so a test can tell what ran where, when, and how often.

In a process started with ``RECOVERY_BLOCK=1`` the "blocking" tasks block for
an hour (they are killed before); anywhere else they return at once.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from atriggers import TaskContext
from atriggers.runners import AsyncioRunner, register_runner
from atriggers.tasks import registry

#: Set in the environment to where the side table is.
RUNS_DB = "RECOVERY_RUNS_DB"
#: Seconds a "once" task's first run asks to wait before its retry.
COOLDOWN = float(os.environ.get("RECOVERY_COOLDOWN", "3"))
#: Set by tests: what a "late" sync task reports when it finally returns.
released = threading.Event()


def _connect(path: Path | str) -> closing[sqlite3.Connection]:
    # `with sqlite3.connect(...)` commits but never closes: Python 3.13 warns.
    return closing(sqlite3.connect(path, timeout=10))


def create_runs_table(path: Path) -> None:
    with _connect(path) as db, db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS runs (uid TEXT, instance TEXT, pid INTEGER, started REAL, ended REAL)"
        )


def runs(path: Path, uid: str | None = None) -> list[dict[str, Any]]:
    """Every run recorded (of session `uid`), in start order."""
    with _connect(path) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM runs ORDER BY started").fetchall()
    return [dict(row) for row in rows if uid is None or row["uid"] == uid]


def _record(context: TaskContext) -> int:
    with _connect(os.environ[RUNS_DB]) as db, db:
        cursor = db.execute(
            "INSERT INTO runs (uid, instance, pid, started) VALUES (?, ?, ?, ?)",
            (context.uid, context.instance_name, os.getpid(), time.time()),
        )
        return int(cursor.lastrowid or 0)


def _ended(row: int) -> None:
    with _connect(os.environ[RUNS_DB]) as db, db:
        db.execute("UPDATE runs SET ended = ? WHERE rowid = ?", (time.time(), row))


async def block(context: TaskContext) -> dict[str, Any]:
    row = _record(context)
    if os.environ.get("RECOVERY_BLOCK") == "1":
        await asyncio.sleep(3600)
    _ended(row)
    return {"pid": os.getpid()}


async def once(context: TaskContext) -> dict[str, Any]:
    """Asks for a retry after `COOLDOWN` seconds on its first run."""
    row = _record(context)
    _ended(row)
    if context.instance.depth == 0:
        raise context.retry(cooldown=COOLDOWN)
    return {"pid": os.getpid()}


async def quick(context: TaskContext) -> dict[str, Any]:
    _ended(_record(context))
    return {"pid": os.getpid()}


def hang(context: TaskContext) -> dict[str, Any]:
    """A sync task (it runs in a worker thread): hangs until `released` is set,
    then returns as if nothing happened."""
    row = _record(context)
    released.wait(30)
    _ended(row)
    return {"late": True}


async def nap(context: TaskContext) -> dict[str, Any]:
    """Sleeps `NAP` seconds (longer than its task's timeout), then returns."""
    row = _record(context)
    await asyncio.sleep(float(os.environ.get("RECOVERY_NAP", "1.5")))
    _ended(row)
    return {"late": True}


async def gate(context: TaskContext) -> dict[str, Any]:
    """Waits for `released`, then returns (its outcome is then stored)."""
    row = _record(context)
    while True:  # a threading.Event: the test sets it from wherever
        if released.is_set():
            break
        await asyncio.sleep(0.01)
    _ended(row)
    return {"gated": True}


def register(concurrency: int = 2) -> None:
    """The tasks, a "fast" runner (its own slots), and an "asyncio" runner with
    `concurrency` slots: more runs than that wait their turn, held by the lease."""
    registry.register(block, "rec.block", max_retries=2)
    registry.register(once, "rec.once", max_retries=1)
    registry.register(quick, "rec.quick")
    registry.register(hang, "rec.hang")
    registry.register(nap, "rec.nap")
    registry.register(gate, "rec.gate")
    register_runner(AsyncioRunner(max_concurrency=concurrency))
    register_runner(AsyncioRunner(), "fast")


#: The session every recovery test configures (by trigger: one task each).
CONFIGURATION: dict[str, dict[str, Any]] = {
    # Running when the app dies (two slots), one per onLost policy.
    "t_run_fail": {"after": ["a"], "run": "rec.block", "onLost": "fail"},
    "t_run_retry": {"after": ["b"], "run": "rec.block", "onLost": "retry"},
    # Waiting for a slot when the app dies.
    "t_wait_fail": {"after": ["c"], "run": "rec.block", "onLost": "fail"},
    "t_wait_retry": {"after": ["d"], "run": "rec.block", "onLost": "retry"},
    # Its first run asks for a retry after a cooldown: the clone waits in the due index.
    "t_cool": {"after": ["e"], "run": "rec.once", "using": "fast"},
    # Fired with a delay: the fire waits in the due index.
    "t_late": {"after": ["late"], "run": "rec.quick", "using": "fast"},
}
