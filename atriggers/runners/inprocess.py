"""`AsyncioRunner`: runs instances as asyncio tasks in this process (the default)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import weakref
from typing import TYPE_CHECKING, Any

from ..errors import TriggerError
from .base import BaseRunner

if TYPE_CHECKING:
    from ..instance import TaskInstance
    from ..manager import TriggerManager, _PlacedRun

__all__ = ["AsyncioRunner"]

log = logging.getLogger("atriggers.runners")


class _Slots:
    """The run slots of one event loop: taken at once from any thread (a write
    that starts an instance as it places it may be re-applied in storage's
    thread), waited for in turn on the loop, given back on the loop."""

    __slots__ = ("_free", "_lock", "_waiters")

    def __init__(self, size: int) -> None:
        self._free = size
        self._lock = threading.Lock()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def take_now(self) -> bool:
        """Take a free slot if one is free and nobody waits for one."""
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return True
            return False

    async def take(self) -> None:
        if self.take_now():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give_back()  # handed over as it was cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):  # (`give_back` passed over it already)
                    self._waiters.remove(waiter)
            raise

    def give_back(self) -> None:
        """On the loop: hand the slot to the first waiter, else free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        with self._lock:
            self._free += 1


class AsyncioRunner(BaseRunner):
    """Each instance runs as an asyncio task of the loop that dispatched it.

    At most `max_concurrency` instances run at once per event loop. With a slot
    free, an instance starts in the very write that schedules it: it is stored
    ``running`` at once (one write fewer per run). The others wait their turn in
    ``scheduled``, held by this process's lease (if it dies, they are lost and
    recovered elsewhere by their task's ``onLost`` policy).
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
        # One set of slots per loop: a runner registered once serves every loop.
        self._limits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Slots] = (
            weakref.WeakKeyDictionary()
        )
        self._limits_lock = threading.Lock()

    def slots(self, loop: asyncio.AbstractEventLoop) -> _Slots:
        """The run slots of `loop` (callable from any thread)."""
        limit = self._limits.get(loop)
        if limit is None:
            with self._limits_lock:
                limit = self._limits.get(loop)
                if limit is None:
                    limit = self._limits[loop] = _Slots(self.max_concurrency)
        return limit

    async def run(self, manager: TriggerManager, instance: TaskInstance) -> None:
        loop = asyncio.get_running_loop()
        started = manager._take_placed(instance.name)
        task = loop.create_task(
            self._execute(manager, instance.name)
            if started is None
            else self._execute_started(manager, started, loop),
            name=f"atriggers {manager.uid} {instance.name}",
        )
        if started is not None:
            # Its slot comes back even if the task is cancelled before its first
            # step (its body never entered): the instance is then recovered as
            # lost like any held by this process, but the slot is not lost.
            task.add_done_callback(lambda _: started.release())
        manager.track(task)

    async def _execute(self, manager: TriggerManager, name: str) -> Any:
        slots = self.slots(asyncio.get_running_loop())
        try:
            await slots.take()
            try:
                return await manager.run_instance(name)
            finally:
                slots.give_back()
        except TriggerError:
            _unrecorded(manager, name)
            return None
        except asyncio.CancelledError as exc:
            # Still scheduled (waiting for a slot): record why it never ran. A
            # cancelled *running* instance is recorded by run_instance.
            await manager.record_failure(name, exc)
            raise

    async def _execute_started(
        self, manager: TriggerManager, started: _PlacedRun, loop: asyncio.AbstractEventLoop
    ) -> Any:
        """Run an instance stored ``running`` by the write that placed it, in
        the slot that write took (or, if it had none, in the next one free)."""
        name = started.running.name
        try:
            if started.slots is None:
                slots = self.slots(loop)
                await slots.take()
                started.slots = slots
        except asyncio.CancelledError as exc:
            await manager.record_failure(name, exc)
            raise
        try:
            return await manager._run_placed(started)
        except TriggerError:
            _unrecorded(manager, name)
            return None
        finally:
            started.release()


def _unrecorded(manager: TriggerManager, name: str) -> None:
    # Storage failed while recording the run (server down, endless conflicts):
    # nobody awaits this task, so say so where operators look.
    log.exception(
        "%s/%s: its run could not be recorded; it stays scheduled or running "
        "until a sweeper recovers it (its owner or deadline lapses)",
        manager.uid,
        name,
        extra={"uid": manager.uid, "instance": name},
    )
