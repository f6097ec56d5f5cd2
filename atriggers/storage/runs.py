"""`RunTracker`: the in-process runs of a storage, so that closing it drains them."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

__all__ = ["RunTracker"]

log = logging.getLogger("atriggers.storage")


class RunTracker:
    """Tasks to wait for before a storage closes: in-process runs (cancellable
    past a timeout) and short store-then-dispatch steps (never cancelled, so that
    nothing stored as scheduled is left undispatched); and timers, which are
    cancelled at once (what they wait for is durable: any sweeper acts on it)."""

    def __init__(self) -> None:
        #: Task -> whether it may be cancelled. (One mapping, so one done
        #: callback per task: each costs a turn through the event loop's queue.)
        self._tasks: dict[asyncio.Task[Any], bool] = {}
        self._timers: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def track(self, task: asyncio.Task[Any], *, cancellable: bool = True, timer: bool = False) -> None:
        """Keep `task` alive until done; `drain` waits for it (or, for a
        `timer`, cancels it)."""
        if timer:
            self._timers.add(task)
            task.add_done_callback(self._timers.discard)
            return
        self._tasks[task] = cancellable
        task.add_done_callback(self.forget)

    def track_step(self, task: asyncio.Task[Any]) -> None:
        """Track a store-then-dispatch step (never cancelled) that calls `forget`
        itself at its end: no done callback."""
        self._tasks[task] = False

    def forget(self, task: asyncio.Task[Any] | None) -> None:
        """Stop tracking `task`: it is done, or about to be (a task may call
        this at its very end, sooner than its done callback would)."""
        if task is not None:
            self._tasks.pop(task, None)

    async def drain(self, timeout: float | None = None, *, grace: float = 10.0, owner: object = None) -> None:
        """Wait for the tracked tasks (and those they start meanwhile) to finish.
        After `timeout` seconds, cancel the cancellable ones still going, and keep
        cancelling runs that start meanwhile (a cascade of a run that ended
        anyway), for at most `grace` more seconds."""
        for timer in list(self._timers):
            timer.cancel()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        cancelled: set[asyncio.Task[Any]] = set()
        while self._tasks:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                if remaining <= -grace:
                    log.error(
                        "%r closes with %d run(s) still going: they ignored cancellation",
                        owner,
                        len(self._tasks),
                    )
                    return
                for task, cancellable in list(self._tasks.items()):
                    if cancellable and task not in cancelled:
                        task.cancel()
                        cancelled.add(task)
                remaining = grace + remaining
            await asyncio.wait(set(self._tasks), timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
