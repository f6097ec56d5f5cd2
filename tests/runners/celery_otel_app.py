"""The Celery app of the telemetry tests, imported by the fire processes and by
the `celery worker` that runs the join. A worker given ``ATRIGGERS_TEST_SPANS``
records its spans there (otel_spans)."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery  # type: ignore[import-untyped]

from atriggers import TaskContext
from atriggers.runners import register_runner
from atriggers.runners.celery import CeleryRunner, celery_task

if os.environ.get("ATRIGGERS_TEST_SPANS"):
    from otel_spans import record_spans

    record_spans(os.environ["ATRIGGERS_TEST_SPANS"])

app = Celery("atriggers-otel-tests")
app.conf.update(
    broker_url=os.environ.get("ATRIGGERS_TEST_BROKER", "redis://127.0.0.1:1/0"),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
register_runner(CeleryRunner(app))


@celery_task(app, "otel.join")
async def join(context: TaskContext) -> dict[str, Any]:
    return {"pids": sorted(kwargs["pid"] for kwargs in context.trigger_kwargs.values()), "ran": os.getpid()}
