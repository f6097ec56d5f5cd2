"""`OwnerLease`: this process, as an owner known to storage.

A process that runs instances, or holds them scheduled for an in-process run,
registers itself as an owner and renews its lease with one write per interval,
however many instances it holds. An owner that stops renewing (killed, frozen,
cut off) lapses, and a sweeper anywhere then recovers what it held.

Leases are about processes being alive, so they run on real time (`time.time`),
not on the storage's clock: a test that moves a `FakeClock` forward by a day does
not make its own process look dead.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from typing import TYPE_CHECKING

from ..errors import TriggerError

if TYPE_CHECKING:
    from .base import Storage

__all__ = ["DEFAULT_LEASE", "OWNER_RETENTION", "OwnerLease", "lease_param"]

#: Seconds of an owner's lease unless configured.
DEFAULT_LEASE = 30.0
#: How long a backend remembers a lapsed owner once it holds nothing (so that a
#: zombie's late writes under its id are still recognised as lapsed).
OWNER_RETENTION = 86400.0

log = logging.getLogger("atriggers.storage")


class OwnerLease:
    """The lease of this process on one storage.

    `duration` seconds without a renewal and the owner is gone for good: what it
    held is lost and recovered by policy, and its later writes are refused (by
    the fencing tokens of its runs). Renewals happen every third of it.
    """

    def __init__(self, storage: Storage, duration: float = DEFAULT_LEASE) -> None:
        if not duration > 0:
            raise ValueError(f"a lease lasts a positive number of seconds, not {duration!r}")
        self.storage = storage
        self.duration = duration
        #: The owner id while registered (a new one after a lapse).
        self.owner: str | None = None
        self._expires = 0.0
        self._beating: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<OwnerLease {self.owner or '(none)'} of {self.storage!r}>"

    def current(self) -> str | None:
        """The owner id, if the lease is registered and, as far as this process
        knows, has not lapsed (a margin of a sixth of it is kept, so that nothing
        is written under an id a sweeper may be recovering)."""
        if self.owner is None:
            return None
        if time.time() >= self._expires - self.duration / 6:
            return None
        return self.owner

    async def acquire(self) -> str:
        """The owner id, registering a new owner first if needed (one write)."""
        owner = self.current()
        if owner is not None:
            return owner
        async with self._lock:
            owner = self.current()
            if owner is not None:
                return owner
            expires = time.time() + self.duration
            if self.owner is not None and await self.storage.renew_owner(self.owner, expires):
                # Renewals ran late (the process stalled) but the lease has not
                # lapsed: keep it, or what this owner holds would be lost while
                # this process still runs it.
                self._expires = expires
                return self.owner
            owner = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
            expires = time.time() + self.duration
            await self.storage.renew_owner(owner, expires, create=True)
            self.owner, self._expires = owner, expires
            if self._beating is None or self._beating.done():
                self._beating = asyncio.get_running_loop().create_task(
                    self._beat(), name=f"atriggers lease {owner}"
                )
            return owner

    async def _beat(self) -> None:
        while self.owner is not None:
            await asyncio.sleep(self.duration / 3)
            owner = self.owner
            if owner is None:
                return
            expires = time.time() + self.duration
            try:
                renewed = await self.storage.renew_owner(owner, expires)
            except TriggerError as exc:
                log.warning("could not renew the lease of owner %s: %s", owner, exc)
                continue
            if renewed:
                self._expires = expires
            else:
                log.warning(
                    "the lease of owner %s lapsed (the process stalled for longer than %gs): what it "
                    "held was recovered elsewhere and its late outcomes will be refused",
                    owner,
                    self.duration,
                )
                if self.owner == owner:
                    self.owner = None
                return

    async def release(self) -> None:
        """Stop renewing and tell storage the owner is gone, so that what it
        still holds is recovered at once rather than when the lease runs out."""
        beating, self._beating = self._beating, None
        if beating is not None:
            beating.cancel()
            await asyncio.gather(beating, return_exceptions=True)
        owner, self.owner = self.owner, None
        if owner is not None:
            try:
                await self.storage.release_owner(owner)
            except TriggerError as exc:
                log.warning("could not release owner %s (its lease will lapse): %s", owner, exc)


def lease_param(url: str, value: str) -> float:
    """The ``lease`` query parameter of a storage URL, checked."""
    try:
        lease = float(value)
    except ValueError:
        lease = float("nan")
    if not lease > 0 or lease == float("inf"):
        raise ValueError(f"lease in {url!r} must be a positive number of seconds, not {value!r}")
    return lease
