"""`Sweeper`: acts on what is due, in any process, so that nothing in flight
depends on one process staying alive.

A sweep claims due-index entries (atomically: each entry goes to one sweeper
however many run on the storage) and hands each to a manager of its session:
delayed fires are applied, expired ``within`` windows abandon their instances,
ended cooldowns dispatch their clones, and instances whose run overran its
deadline or whose owner stopped are lost and get their task's ``onLost`` policy.
A sweep reads only what is due: its cost does not grow with the sessions stored.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Self

from .due import DueEntry
from .errors import TriggerError
from .manager import TriggerManager
from .runners import RunnerRegistry
from .runners import runners as default_runners
from .storage.base import Storage
from .tasks import TaskRegistry

__all__ = ["Sweeper"]

log = logging.getLogger("atriggers.sweeper")


class Sweeper:
    """Recovery for one storage, in the background of this process::

        async with Sweeper(storage):
            ...  # serve requests, run workers

    or one pass at a time: ``handled = await sweeper.run_once()``.

    Every `interval` seconds (of the storage's clock) it claims up to `limit`
    due entries and acts on them, at most `concurrency` sessions at once; when a
    pass was full it goes on at once. Managers are built as `manager_class`
    with `tasks`, `runners` and `default_runner` (for clones and released
    cooldowns that run in this process). With `close_runners`, leaving closes
    the runners too (a process whose only job is sweeping). Any number of sweepers on one storage
    is safe: each due entry is handled once.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        interval: float = 1.0,
        limit: int = 100,
        concurrency: int = 16,
        manager_class: type[TriggerManager] = TriggerManager,
        tasks: TaskRegistry | None = None,
        runners: RunnerRegistry | None = None,
        default_runner: str | None = None,
        close_runners: bool = False,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be a positive number of seconds, not {interval!r}")
        if limit < 1 or concurrency < 1:
            raise ValueError("limit and concurrency must be >= 1")
        self.storage = storage
        self.interval = interval
        self.limit = limit
        self.concurrency = concurrency
        self.manager_class = manager_class
        self.tasks = tasks
        self.runners = runners if runners is not None else default_runners
        self.default_runner = default_runner
        #: Whether `aclose` also closes the runners (`BaseRunner.aclose`): for a
        #: process whose only job is sweeping; an app closes its runners itself.
        self.close_runners = close_runners
        #: Entries handled since this sweeper was made, by what they were.
        self.counts: dict[str, int] = {}
        self._loop: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Sweeper of {self.storage!r} every {self.interval:g}s>"

    async def run_once(self) -> int:
        """One pass: claim what is due now and act on it. Returns how many due
        entries were handled. An entry whose handling fails (storage down) stays
        claimed for a while, then is due again."""
        clock = self.storage.clock
        now = clock.time()
        entries = await self.storage.claim_due(now, now + self.manager_class.claim_for, self.limit)
        if not entries:
            return 0
        limit = asyncio.Semaphore(self.concurrency)

        async def handle(entry: DueEntry) -> bool:
            async with limit:
                manager = self.manager_class(
                    self.storage,
                    entry.uid,
                    default_runner=self.default_runner,
                    tasks=self.tasks,
                    runners=self.runners,
                )
                try:
                    verdict = await manager.handle_due(entry)
                except TriggerError as exc:
                    log.warning(
                        "%s/%s: acting on a due entry failed (it is due again later): %s",
                        entry.uid,
                        entry.key,
                        exc,
                        extra={"uid": entry.uid, "instance": entry.key},
                    )
                    return False
                self.counts[verdict] = self.counts.get(verdict, 0) + 1
                return True

        done = await asyncio.gather(*(handle(entry) for entry in entries))
        return sum(done)

    async def _run(self) -> None:
        clock = self.storage.clock
        while True:
            try:
                handled = await self.run_once()
            except TriggerError as exc:
                log.warning("sweep of %r failed (retrying): %s", self.storage, exc)
                handled = 0
            if handled < self.limit:
                await clock.sleep(self.interval)

    def start(self) -> None:
        """Start sweeping in the background (``async with`` does it)."""
        if self._loop is None or self._loop.done():
            self._loop = asyncio.get_running_loop().create_task(self._run(), name=f"atriggers {self!r}")

    async def aclose(self) -> None:
        """Stop sweeping (idempotent); with `close_runners`, close the runners."""
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)
        if self.close_runners:
            await self.runners.aclose_all()

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
