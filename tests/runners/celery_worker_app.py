"""The Celery app of the runner tests: imported by the test process (sender)
and by the `celery worker` subprocesses (``celery -A celery_worker_app worker``).

The broker URL comes from ``ATRIGGERS_TEST_BROKER`` in workers; the test process
sets ``app.conf.broker_url`` itself.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from celery import Celery  # type: ignore[import-untyped]

from atriggers import TaskContext, TriggerManager, register_manager, with_context
from atriggers.runners import register_runner
from atriggers.runners.celery import CeleryRunner, celery_task, expose_tasks
from atriggers.testing.conformance.tasks import BLOCK, ECHO, RETRY

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` once (examples are scripts, not a package)."""
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


questionnaire = load_example("questionnaire")

app = Celery("atriggers-tests")
app.conf.update(
    broker_url=os.environ.get("ATRIGGERS_TEST_BROKER", "redis://127.0.0.1:1/0"),
    broker_connection_retry_on_startup=True,
    task_routes={
        "tests.parked": {"queue": "parked"},  # nobody consumes it: tests read the raw message
        "tests.block": {"queue": "doomed"},  # the worker that gets killed
        "tests.block_first": {"queue": "doomed"},
    },
    worker_hijack_root_logger=False,
)

runner = CeleryRunner(app)
register_runner(runner)


@register_manager
class CeleryManager(TriggerManager):
    """Runs every task on Celery unless its configuration says otherwise."""

    manager_name = "celery-tests"
    default_runner = "celery"


expose_tasks(
    app,
    "questionnaire.import_subject",
    "questionnaire.import_responses",
    "questionnaire.import_browser_metadata",
    "questionnaire.compute_score",
)


# The runner conformance suite's tasks. A soft time limit is how a Celery
# worker cancels a run: the suite's "block" task outlives it.
expose_tasks(app, ECHO, RETRY)
expose_tasks(app, BLOCK, soft_time_limit=1)


@celery_task(app, "tests.where")
async def where(context: TaskContext) -> dict[str, Any]:
    return {"pid": os.getpid(), "at": time.time()}


@celery_task(app, "tests.fail")
async def fail(context: TaskContext) -> None:
    raise with_context(ValueError("no such subject"), {"subject": "ada"})


@celery_task(app, "tests.parked")
async def parked(context: TaskContext) -> None:
    raise AssertionError("never consumed")


@celery_task(app, "tests.block")
async def block(context: TaskContext) -> dict[str, Any]:
    """Sleeps as long as told: long enough for a test to kill the worker."""
    await asyncio.sleep(context.trigger_kwargs["go"]["seconds"])
    return {"pid": os.getpid()}


@celery_task(app, "tests.block_first", max_retries=2)
async def block_first(context: TaskContext) -> dict[str, Any]:
    """A first run sleeps as long as told (a worker is killed meanwhile); a
    retry (a clone) returns at once."""
    if context.instance.depth == 0:
        await asyncio.sleep(context.trigger_kwargs["go"]["seconds"])
    return {"pid": os.getpid(), "depth": context.instance.depth}
