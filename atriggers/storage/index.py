"""The session index: one small summary per session, for listing and filtering
sessions without reading them.

A backend that keeps summaries stores `reindexed(change)` with the writes that
change it, in the same atomic step as the change itself (None when the change
leaves it as it was: most fires only record kwargs), and answers
`Storage.list_summaries` from what it stored, paged by uid with a cursor and
filtered by `SessionFilter`, completed with the version and time of last write
its session header holds. The summary is computed from the snapshot after the
change, which holds every unresolved instance (the working view does too), so no
backend reads anything to maintain it.

A SQL backend needs no summaries: its instances table, indexed by (status, uid),
already says which sessions hold failed, in-flight or waiting instances
(`FLAG_STATUSES`), in uid order; it counts the listed page's instances when
listing, and writes nothing more per change.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .._json import dumps_checked
from ..errors import InvalidInput
from ..instance import Meta, Status, TaskInstance
from ..state import Change, SessionState

if TYPE_CHECKING:
    from .base import Storage

__all__ = [
    "COUNTED",
    "FLAGS",
    "FLAG_STATUSES",
    "SessionCounts",
    "SessionFilter",
    "SessionPage",
    "SessionSummary",
    "build_summary",
    "check_page",
    "each_summary",
    "latest_stamp",
    "reindexed",
    "summarize",
    "summarize_state",
]

#: The keys of `SessionSummary.counts`: each unresolved status, and every
#: resolved instance (finished, skipped, replayed, abandoned) as ``resolved``.
COUNTED: tuple[str, ...] = (
    Status.UNSTARTED.value,
    Status.SCHEDULED.value,
    Status.RUNNING.value,
    Status.FAILED.value,
    "resolved",
)
# As plain strings: an enum member's ``.value`` is a descriptor call, and every
# write's summary asks for these.
_UNSTARTED, _SCHEDULED, _RUNNING, _FAILED = COUNTED[:4]

#: The instance statuses behind each flag of `SessionFilter` (and of
#: `SessionSummary`): a session has the flag while it holds such an instance.
#: SQL backends answer the flags from their instances' (status, uid) index.
FLAG_STATUSES: dict[str, tuple[str, ...]] = {
    "failed": (Status.FAILED.value,),
    "stuck": (Status.SCHEDULED.value, Status.RUNNING.value),
    "waiting": (Status.UNSTARTED.value,),
}
#: The flags, in that order (a backend keeps one index per flag).
FLAGS = tuple(FLAG_STATUSES)

#: Largest number of summaries one `list_summaries` call returns.
MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """What the index holds about one session."""

    uid: str
    #: The session's version (as listed: its current one).
    version: int
    #: Instances by status (see `COUNTED`).
    counts: Mapping[str, int]
    #: When the session was last written (epoch seconds; as listed: the time the
    #: backend stored with the write, in real time), None when unknown.
    last_activity: float | None
    #: The configured task names, sorted.
    tasks: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        """Some instance failed and was neither replayed nor skipped."""
        return self.counts.get(_FAILED, 0) > 0

    @property
    def stuck(self) -> bool:
        """Some instance is in flight (scheduled or running): stuck or lost if that
        lasts longer than it should."""
        return self.counts.get(_SCHEDULED, 0) + self.counts.get(_RUNNING, 0) > 0

    @property
    def waiting(self) -> bool:
        """Some instance waits for its triggers (unstarted)."""
        return self.counts.get(_UNSTARTED, 0) > 0

    @property
    def instances(self) -> int:
        return sum(self.counts.values())

    def to_json(self) -> str:
        """The stored form: counts and tasks (the version and last activity are
        the session header's, which every write updates anyway)."""
        return dumps_checked({"c": self.counts, "t": self.tasks})

    @classmethod
    def from_json(cls, uid: str, text: str, version: int, last_activity: float | None) -> SessionSummary:
        """The summary stored as `text`, with the session header's `version` and
        time of last write."""
        data: dict[str, Any] = json.loads(text)
        tasks = data.get("t", [])
        if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
            raise ValueError("tasks must be a list of names")
        return cls(
            uid=uid,
            version=int(version),
            counts={str(k): int(v) for k, v in data["c"].items()},
            last_activity=None if last_activity is None else float(last_activity),
            tasks=tuple(tasks),
        )


def summarize_state(state: SessionState, at: float | None) -> SessionSummary:
    """The summary of `state` (a working view is enough: it holds every
    unresolved instance, and ``instance_counts`` says how many there are in all),
    last active at `at`."""
    return build_summary(
        state.uid, state.version, state.by_status(), sum(state.instance_counts.values()), state.tasks, at
    )


def build_summary(
    uid: str,
    version: int,
    unresolved: Mapping[str, int],
    total: int,
    tasks: Iterable[str],
    at: float | None,
) -> SessionSummary:
    """The summary of a session with `unresolved` instances by status out of
    `total` instances ever created."""
    counts = dict.fromkeys(COUNTED, 0)
    for status, n in unresolved.items():
        counts[status] = counts.get(status, 0) + n
    counts["resolved"] = max(0, total - sum(unresolved.values()))
    tasks = tuple(sorted(tasks))
    return SessionSummary(uid=uid, version=version, counts=counts, last_activity=at, tasks=tasks)


def reindexed(change: Change) -> SessionSummary | None:
    """The summary a backend that stores summaries writes with `change`, in the
    same atomic step; None when the change leaves it as it was (most fires only
    record kwargs: `Change.reindex` is false)."""
    return summarize(change) if change.reindex else None


def summarize(change: Change) -> SessionSummary:
    """The summary a backend stores with `change`: pure, no storage access."""
    at = change.at
    if at is None:
        at = latest_stamp(change.instances)
    return summarize_state(change.state, at)


def latest_stamp(instances: Iterable[TaskInstance]) -> float | None:
    """The latest modification time among `instances` (changes built by hand
    may carry no time of their own)."""
    latest: float | None = None
    for instance in instances:
        stamp = instance.metadata.get(Meta.TIMESTAMPS, {}).get(Meta.LAST_MODIFIED)
        if isinstance(stamp, str):
            try:
                at = datetime.fromisoformat(stamp).timestamp()
            except ValueError:
                continue
            latest = at if latest is None else max(latest, at)
    return latest


@dataclass(frozen=True, slots=True)
class SessionFilter:
    """Which sessions `Storage.list_summaries` returns: those meeting every
    condition given (no condition: every session)."""

    #: Only sessions with a failed instance.
    failed: bool = False
    #: Only sessions with an instance in flight (scheduled or running).
    stuck: bool = False
    #: Only sessions with an instance waiting for its triggers.
    waiting: bool = False
    #: Only sessions configuring this task.
    task: str | None = None
    #: Only sessions whose uid starts with this.
    prefix: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.prefix, str):
            raise InvalidInput(f"the uid prefix must be a string, not {self.prefix!r}")
        if self.task is not None and (not isinstance(self.task, str) or not self.task):
            raise InvalidInput(f"the task filter must be a task name, not {self.task!r}")

    def matches(self, summary: SessionSummary) -> bool:
        return (
            (not self.failed or summary.failed)
            and (not self.stuck or summary.stuck)
            and (not self.waiting or summary.waiting)
            and (self.task is None or self.task in summary.tasks)
            and summary.uid.startswith(self.prefix)
        )

    @property
    def flag(self) -> str | None:
        """The first flag asked for (a backend keeps one index per flag and
        checks the others on what that index yields)."""
        for name in FLAGS:
            if getattr(self, name):
                return name
        return None


@dataclass(frozen=True, slots=True)
class SessionPage:
    """One page of `Storage.list_summaries`, in uid order."""

    summaries: tuple[SessionSummary, ...]
    #: Pass as ``after`` for the next page; None on the last page. A page may be
    #: shorter than asked (even empty) and still have a next one: backends bound
    #: the work of one call.
    next: str | None = None


@dataclass(frozen=True, slots=True)
class SessionCounts:
    """How many sessions the index holds, in all and with each flag."""

    sessions: int = 0
    failed: int = 0
    stuck: int = 0
    waiting: int = 0


def check_page(after: str | None, limit: int) -> None:
    """Refuse a bad cursor or page size, naming it."""
    if after is not None and not isinstance(after, str):
        raise InvalidInput(f"the cursor must be a uid string, not {after!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be an integer from 1 to {MAX_PAGE}, not {limit!r}")


async def each_summary(
    storage: Storage, filter: SessionFilter | None = None, *, page: int = 500
) -> AsyncIterator[SessionSummary]:
    """Every summary `filter` selects, in uid order, a page at a time."""
    after: str | None = None
    while True:
        found = await storage.list_summaries(filter, after=after, limit=page)
        for summary in found.summaries:
            yield summary
        if found.next is None:
            return
        after = found.next
