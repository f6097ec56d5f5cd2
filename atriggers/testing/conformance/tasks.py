"""The tasks `RunnerConformance` runs. Import this module wherever the runner
under test executes instances (its worker processes, its functions), so they are
registered there; a Celery worker also needs Celery tasks for them::

    import atriggers.testing.conformance.tasks  # noqa: F401
    expose_tasks(app, *RUNNER_TASKS)
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from ...context import TaskContext
from ...tasks import task

__all__ = ["BLOCK", "ECHO", "RETRY", "RUNNER_TASKS"]

#: Returns where and when it ran.
ECHO = "atriggers.conformance.echo"
#: Its first run asks for a retry after ``go["cooldown"]`` seconds; the clone finishes.
RETRY = "atriggers.conformance.retry"
#: Sleeps ``go["seconds"]``: long enough for the suite to cancel it.
BLOCK = "atriggers.conformance.block"
RUNNER_TASKS = (ECHO, RETRY, BLOCK)


@task(ECHO)
async def _echo(context: TaskContext) -> dict[str, Any]:
    return {"instance": context.instance_name, "pid": os.getpid(), "at": time.time()}


@task(RETRY, max_retries=1)
async def _retry_once(context: TaskContext) -> dict[str, Any]:
    if context.instance.depth == 0:
        cooldown = float(context.trigger_kwargs["go"]["cooldown"])
        raise context.retry(RuntimeError("the first run fails on purpose"), cooldown=cooldown)
    return {"depth": context.instance.depth, "at": time.time()}


@task(BLOCK)
async def _block(context: TaskContext) -> dict[str, Any]:
    await asyncio.sleep(float(context.trigger_kwargs["go"]["seconds"]))
    return {"slept": True}
