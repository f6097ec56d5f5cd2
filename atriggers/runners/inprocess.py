"""`AsyncioRunner`: runs instances as asyncio tasks in this process (the default)."""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import TYPE_CHECKING, Any

from ..errors import TriggerError
from .base import BaseRunner

if TYPE_CHECKING:
    from ..instance import TaskInstance
    from ..manager import TriggerManager

__all__ = ["AsyncioRunner"]

log = logging.getLogger("atriggers.runners")


class AsyncioRunner(BaseRunner):
    """Each instance runs as an asyncio task of the loop that dispatched it.

    At most `max_concurrency` instances run at once per event loop; the others
    wait their turn in ``scheduled``, held by this process's lease (if it dies,
    they are lost and recovered elsewhere by their task's ``onLost`` policy).
    ``await manager.join()`` waits for a manager's runs, cascades included; closing
    the storage waits for all of them (then cancels stragglers, which are stored
    as failed and can be replayed).
    """

    name = "asyncio"
    in_process = True

    def __init__(self, max_concurrency: int = 100) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, not {max_concurrency}")
        self.max_concurrency = max_concurrency
        # One semaphore per loop: a runner registered once serves every loop.
        self._limits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )

    async def run(self, manager: TriggerManager, instance: TaskInstance) -> None:
        loop = asyncio.get_running_loop()
        task = loop.create_task(
            self._execute(manager, instance.name),
            name=f"atriggers {manager.uid} {instance.name}",
        )
        manager.track(task)

    async def _execute(self, manager: TriggerManager, name: str) -> Any:
        try:
            async with self._limit():
                return await manager.run_instance(name)
        except TriggerError:
            # Storage failed while recording the run (server down, endless
            # conflicts): nobody awaits this task, so say so where operators look.
            log.exception(
                "%s/%s: its run could not be recorded; it stays scheduled or running "
                "until a sweeper recovers it (its owner or deadline lapses)",
                manager.uid,
                name,
                extra={"uid": manager.uid, "instance": name},
            )
            return None
        except asyncio.CancelledError as exc:
            # Still scheduled (waiting for a slot): record why it never ran. A
            # cancelled *running* instance is recorded by run_instance.
            await manager.record_failure(name, exc)
            raise

    def _limit(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        limit = self._limits.get(loop)
        if limit is None:
            limit = self._limits[loop] = asyncio.Semaphore(self.max_concurrency)
        return limit
