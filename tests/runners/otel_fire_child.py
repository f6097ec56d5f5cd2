"""Fires one trigger into a session from its own OS process, recording spans.

usage: python otel_fire_child.py STORAGE_URL UID TRIGGER SPANS_DIR RUNNER

RUNNER ``asyncio``: the task runs here if this fire completes it (and this
process waits for it); ``celery``: it is sent to the Celery app of
celery_otel_app (broker from ``ATRIGGERS_TEST_BROKER``).
"""

from __future__ import annotations

import asyncio
import os
import sys

from otel_spans import record_spans

from atriggers import TriggerManager
from atriggers.storage import open_storage


async def main(url: str, uid: str, trigger: str) -> None:
    async with open_storage(url) as storage:
        manager = TriggerManager(storage, uid)
        await manager.fire(trigger, {"pid": os.getpid()})
        await manager.join()


if __name__ == "__main__":
    url, uid, trigger, spans, runner = sys.argv[1:6]
    provider = record_spans(spans)
    import celery_otel_app  # noqa: F401 - registers the task (and the Celery runner)

    asyncio.run(main(url, uid, trigger))
    provider.shutdown()
