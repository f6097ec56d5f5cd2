"""The due index: what must happen later, and who must stay alive meanwhile.

Every instance whose future depends on time or on a process has one entry,
keyed by its name and derived from its state by `due_of` (a pure function):

- ``unstarted`` with ``within``: due when its window closes (it expires);
- ``scheduled`` with ``notBefore`` (a cooldown, a retry's backoff): due then, to
  be dispatched by any live process;
- ``scheduled`` and held by an owner (waiting in-process for a free slot): due
  only if that owner stops renewing its lease (it is then lost); handed to a
  runner elsewhere with a ``start_within``: due when it should have started;
- ``running``: due at its ``deadline`` (``timeout``, a Lambda invocation's end)
  or when its owner's lease lapses (it is then lost).

Delayed fires are entries too (keys without ``#``), carrying the fire as payload.
Entries are written in the same atomic write as the state they belong to, so the
index never disagrees with the sessions; `atriggers.Sweeper` claims what is due.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from .clock import from_iso
from .instance import Meta, Status, TaskInstance

__all__ = ["DELAY_PREFIX", "Due", "DueEntry", "due_of", "due_of_cached", "is_delay_key"]

#: Keys of delayed fires start with this; instance names always hold a ``#``.
DELAY_PREFIX = "fire@"


class Due(NamedTuple):
    """One entry as written: when it is due (`at`, epoch seconds; None: only
    when `owner` lapses), who holds it, and a payload (delayed fires' JSON).
    (A named tuple: built and compared on every change of an instance in flight.)"""

    at: float | None
    owner: str | None = None
    payload: str | None = None


@dataclass(frozen=True, slots=True)
class DueEntry:
    """An entry as `Storage.claim_due` hands it out."""

    uid: str
    key: str
    #: When it was due before the claim moved it on (None: owner-bound only).
    at: float | None
    owner: str | None = None
    payload: str | None = None
    #: True when it was claimed because its owner's lease lapsed.
    lapsed: bool = False


def is_delay_key(key: str) -> bool:
    return "#" not in key


def due_of(instance: TaskInstance) -> Due | None:
    """The entry `instance` needs in the due index, given its state (None: none)."""
    status = instance.status
    meta = instance.metadata
    if status is Status.UNSTARTED:
        within = instance.config.within if instance.config is not None else None
        if within is None:
            return None
        timestamps = meta.get(Meta.TIMESTAMPS)
        created = timestamps.get(Meta.CREATED) if isinstance(timestamps, dict) else None
        return Due(from_iso(created) + within) if isinstance(created, str) else None
    if status is Status.SCHEDULED:
        not_before = meta.get(Meta.NOT_BEFORE)
        if isinstance(not_before, str):
            return Due(from_iso(not_before))
    if status in (Status.SCHEDULED, Status.RUNNING):
        deadline = meta.get(Meta.DEADLINE)
        owner = meta.get(Meta.OWNER)
        at = from_iso(deadline) if isinstance(deadline, str) else None
        owner = owner if isinstance(owner, str) else None
        return Due(at, owner) if at is not None or owner is not None else None
    return None


def due_of_cached(instance: TaskInstance) -> Due | None:
    """`due_of`, remembered on the instance (keyed by its status, as a guard)."""
    memo = instance._due_memo
    if memo is not None and memo[0] is instance.status:
        due: Due | None = memo[1]
        return due
    due = due_of(instance)
    instance._due_memo = (instance.status, due)
    return due
