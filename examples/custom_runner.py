"""A custom runner: every instance runs in a fresh Python process.

What it shows (docs/runners.md, "Writing a runner"):

- a runner is a `BaseRunner` with a `name` and an ``async def run(manager,
  instance)`` that hands the instance over and returns quickly;
- whatever executes the instance calls ``TriggerManager.run_instance``; a
  separate process does it through `atriggers.remote` (a `RunRequest` naming the
  session, `execute_request` rebuilding storage and manager), like Celery and
  Lambda workers;
- the in-process part is an asyncio task adopted with ``manager.track`` so
  ``manager.join()`` waits for it, and a process that dies is recorded with
  ``manager.record_failure`` (the instance is then ``failed``, replayable).

Run it:  python examples/custom_runner.py [path/to/state.db]
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from atriggers import (
    Status,
    TaskContext,
    TaskInstance,
    TriggerManager,
    register_manager,
    task,
)
from atriggers.remote import RunRequest, StoragePool, execute_request
from atriggers.runners import BaseRunner, register_runner
from atriggers.storage import SQLiteStorage

SCRIPT = Path(__file__).resolve()


class SubprocessRunner(BaseRunner):
    """Run each instance in its own Python process (`script` run with
    ``--run '<request JSON>'``), at most `max_processes` at a time.

    A task that crashes its process (segfault, ``os._exit``, out of memory)
    takes nothing else down: the instance is stored as failed with the exit
    status and the end of its stderr.
    """

    name = "subprocess"

    def __init__(self, script: Path = SCRIPT, max_processes: int = 4) -> None:
        self.script = script
        self.max_processes = max_processes
        self._slots: asyncio.Semaphore | None = None

    async def run(self, manager: TriggerManager, instance: TaskInstance) -> None:
        # Refuses a memory:// session (another process cannot see it); raising
        # here stores the instance as failed with the reason.
        request = RunRequest.for_instance(manager, instance)
        loop = asyncio.get_running_loop()
        manager.track(loop.create_task(self._execute(manager, request, instance.cooldown)))

    async def _execute(self, manager: TriggerManager, request: RunRequest, cooldown: float) -> None:
        try:
            returncode, stderr = await self._spawn(request, cooldown)
        except asyncio.CancelledError as exc:
            # A shutdown cancelled the run (in its cooldown, waiting for a slot,
            # or running): the instance never finished, so say so (failed,
            # replayable) rather than leave it scheduled or running.
            await manager.record_failure(request.instance, exc)
            raise
        if returncode != 0:
            tail = stderr.decode(errors="replace")[-2000:]
            # No-op unless the instance is still scheduled or running.
            await manager.record_failure(
                request.instance,
                RuntimeError(f"worker process exited with status {returncode}\n{tail}"),
            )

    async def _spawn(self, request: RunRequest, cooldown: float) -> tuple[int, bytes]:
        if cooldown > 0:
            await asyncio.sleep(cooldown)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_processes)
        async with self._slots:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(self.script),
                "--run",
                json.dumps(request.to_dict()),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                _, stderr = await process.communicate()
            except asyncio.CancelledError:
                process.kill()
                await process.wait()
                raise
        return await process.wait(), stderr  # already exited: its status at once


@register_manager
class IsolatedManager(TriggerManager):
    """Sessions whose tasks run in subprocesses; workers rebuild it by name."""

    manager_name = "isolated"
    default_runner = "subprocess"


register_runner(SubprocessRunner())


# -- the tasks (imported by the parent and by every worker process) ---------------------


@task("photos.resize")
async def resize(context: TaskContext) -> dict[str, Any]:
    upload = context.trigger_kwargs["uploaded"]
    return {"photo": upload["photo"], "sizes": [256, 1024], "pid": os.getpid()}


@task("photos.publish")
async def publish(context: TaskContext) -> dict[str, Any]:
    resized = context.trigger_kwargs["t_resize"]
    return {"url": f"https://photos.example/{resized['photo']}", "pid": os.getpid()}


@task("photos.scan")
async def scan(context: TaskContext) -> dict[str, Any]:
    if context.trigger_kwargs["uploaded"].get("corrupt"):
        os._exit(3)  # a native library crashing: only this process dies
    return {"clean": True}


CONFIGURATION: dict[str, dict[str, Any]] = {
    "t_resize": {"after": ["uploaded"], "run": "photos.resize"},
    "t_publish": {"after": ["t_resize"], "run": "photos.publish"},
    "t_scan": {"after": ["uploaded"], "run": "photos.scan"},
}


# -- the worker process ------------------------------------------------------------------


async def work(payload: str) -> None:
    pool = StoragePool()
    try:
        await execute_request(RunRequest.from_dict(json.loads(payload)), pool)
    finally:
        await pool.aclose()


async def main(path: Path) -> None:
    async with SQLiteStorage(path) as storage:
        manager = IsolatedManager(storage, "album-1")
        await manager.update_configuration(CONFIGURATION)
        await manager.fire("uploaded", {"photo": "cat.jpg", "corrupt": True})
        await manager.join()  # waits for the processes and their cascades
        state = await manager.get_state()
        for instance in sorted(state.instances.values(), key=lambda i: i.name):
            detail: object = instance.result or ""
            if instance.status is Status.FAILED:
                detail = next(
                    line
                    for line in instance.metadata["exceptionInfo"].splitlines()
                    if line.startswith(instance.metadata["exceptionType"].rsplit(".", 1)[-1])
                )
            print(f"{instance.name:<12} {instance.status.value:<9} {detail}")
        print(f"parent pid {os.getpid()}; state in {path}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--run":
        asyncio.run(work(sys.argv[2]))
    else:
        target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()) / "photos.db"
        asyncio.run(main(target))
