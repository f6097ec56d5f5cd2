"""Time, as atriggers reads it: a `Clock` per storage.

Deadlines (``timeout``, ``within``), cooldowns, delayed fires and owners' leases
are all read from the storage's clock, so that a test can replace it with a
`FakeClock` and move time forward by hand: a ``within`` of an hour or a cooldown
of a day is tested without waiting.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "FakeClock", "SystemClock", "from_iso", "iso", "sleep_until"]


@runtime_checkable
class Clock(Protocol):
    """What atriggers needs of a clock."""

    def time(self) -> float:
        """Seconds since the epoch (UTC), like `time.time`."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time."""
        ...


class SystemClock:
    """The real time: `time.time` and `asyncio.sleep`."""

    #: Time passes by itself (`TriggerManager.join` may wait for a timer to come due).
    flows = True

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "<SystemClock>"


class FakeClock:
    """A clock that moves only when told to (``await clock.advance(3600)``).

    Sleepers wake when the clock passes their deadline; `advance` then lets what
    they start (a run, a delayed fire, a sweep) get going before it returns.
    Time never passes by itself, so `TriggerManager.join` does not wait for a
    timer still to come.
    """

    flows = False

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self._now = float(start)
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def __repr__(self) -> str:
        return f"<FakeClock at {iso(self._now)}>"

    def time(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), future))
        await future

    async def advance(self, seconds: float, *, settle: float = 0.005) -> None:
        """Move the clock `seconds` forward and wake whoever slept until then.

        Before and after, the loop runs for `settle` seconds of real time, so
        that work already under way (a run starting, a write in a database's
        thread) happens at the time it belongs to, and what the wake-up starts
        is under way when this returns; ``await manager.join()`` then waits for
        it to finish.
        """
        if seconds < 0:
            raise ValueError(f"a clock does not go back: advance({seconds})")
        await asyncio.sleep(settle)
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)
        await asyncio.sleep(settle)


async def sleep_until(clock: Clock, when: float) -> None:
    """Sleep on `clock` until its time is `when` (at once if it already is)."""
    await clock.sleep(when - clock.time())


def iso(when: float) -> str:
    """Epoch seconds as stored in instance metadata: ISO 8601, UTC, microseconds."""
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="microseconds")


def from_iso(text: str) -> float:
    """The inverse of `iso` (any ISO 8601 text with a time zone)."""
    return datetime.fromisoformat(text).timestamp()
