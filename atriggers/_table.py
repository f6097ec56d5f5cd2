"""`InstanceTable`: the instances of a working snapshot, indexed for the rules.

A fire must touch only the instances it concerns: the unstarted instances of a
task that wait for the fired trigger, and those that may be ready to run or be
abandoned. Scanning every unresolved instance instead makes each fire of an
``andEvery`` trigger dearer as instances pile up. The table keeps these indexes
(task -> unstarted instances, (task, trigger) -> instances waiting for it, task
-> instances ready to schedule or abandon) and unresolved counts by status.

Snapshots are immutable, yet the snapshot a write makes must cost what the write
changed, not a copy of every instance. The versions of one session share one
set of data ("rerooting", as for persistent arrays): the newest version holds it,
each older version holds the difference to the next one. Reading an older
version (rare: a preview, a retried operation) swaps the differences back
along the way, so every version stays what it was. A lock guards the shared
data: a backend may decode or re-apply in its own thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from .instance import RESOLVED, VALUE_OF, Status, TaskInstance

if TYPE_CHECKING:
    from .config import TaskConfig

__all__ = ["ABSENT", "InstanceTable", "Undecoded"]


class _Absent:
    __slots__ = ()

    def __repr__(self) -> str:
        return "ABSENT"


#: In a difference: the instance is not in that version.
ABSENT: Any = _Absent()

_UNSTARTED = Status.UNSTARTED
_UNSTARTED_VALUE = VALUE_OF[_UNSTARTED]


class Undecoded(Protocol):
    """A stored instance read only as far as the indexes need (a backend's
    codec makes them): its task, status, configuration, the triggers it has
    kwargs of and its abandon state. The table decodes the rest the first time
    the instance is asked for: a fire uses a few of a session's instances, and
    decoding all the others on a cold read cost more than the rest of the fire.
    What the indexes use was checked when it was read; the rest, if corrupt,
    raises `StorageError` naming the instance when it is decoded.
    """

    @property
    def name(self) -> str: ...
    @property
    def task_name(self) -> str: ...
    @property
    def status(self) -> Status: ...
    @property
    def kwargs(self) -> Mapping[str, object]: ...  # (the triggers it has kwargs of)
    @property
    def abandon_state(self) -> frozenset[str]: ...
    @property
    def config(self) -> TaskConfig | None: ...

    def decode(self) -> TaskInstance: ...


#: A row of the table: an instance, or one not decoded in full yet.
Row = TaskInstance | Undecoded


def _decoded(rows: dict[str, Row], name: str) -> TaskInstance:
    """The instance `name` of `rows`, decoded in place if it was not yet (the
    same instance in every version that holds it: nothing to swap back)."""
    row = rows[name]
    if isinstance(row, TaskInstance):
        return row
    decoded = rows[name] = row.decode()
    return decoded


def _add(index: dict[Any, dict[str, None]], key: Any, name: str) -> None:
    names = index.get(key)
    if names is None:
        index[key] = {name: None}
    else:
        names[name] = None


def _discard(index: dict[Any, dict[str, None]], key: Any, name: str) -> None:
    names = index.get(key)
    if names is not None:
        names.pop(name, None)
        if not names:
            del index[key]


def waits_for(instance: Row) -> list[str]:
    """The triggers an unstarted instance still takes (per its configuration)."""
    config = instance.config
    if config is None:
        return []
    waiting = [t for t in config.after if t not in instance.kwargs]
    waiting += [t for t in config.unless if t not in instance.abandon_state]
    return waiting


class _Data:
    """The rows of the newest version (the one whose `_next` is None), and their
    indexes (built when first asked for: most snapshots decoded are used for one
    fire, or none). It refers to no version: versions and their data make no
    reference cycle, so they go as soon as nothing holds them, not at the next
    collection of the garbage collector."""

    __slots__ = ("counts", "indexed", "lock", "ready", "resolved", "rows", "unstarted", "waiting")

    def __init__(self, rows: dict[str, Row]) -> None:
        self.rows = rows
        self.lock = threading.Lock()
        self.indexed = False
        self.unstarted: dict[str, dict[str, None]] = {}
        self.waiting: dict[tuple[str, str], dict[str, None]] = {}
        self.ready: dict[str, dict[str, None]] = {}
        self.resolved: dict[str, None] = {}
        self.counts: dict[str, int] = {}

    def build(self) -> None:
        if not self.indexed:
            self.indexed = True
            index = self.index
            for name, instance in self.rows.items():
                index(name, instance)

    def index(self, name: str, instance: Row) -> None:
        # Inlined (no properties, no enum `.value`, no helper calls): a cold
        # read indexes every unresolved instance of the session.
        status = instance.status
        if status is not _UNSTARTED:
            if status in RESOLVED:
                self.resolved[name] = None
            else:
                value = VALUE_OF[status]
                self.counts[value] = self.counts.get(value, 0) + 1
            return
        self.counts[_UNSTARTED_VALUE] = self.counts.get(_UNSTARTED_VALUE, 0) + 1
        task = instance.task_name
        names = self.unstarted.get(task)
        if names is None:
            self.unstarted[task] = {name: None}
        else:
            names[name] = None
        config = instance.config
        # Ready: every `after` trigger applied (it can run), or every `unless`
        # trigger (it is to be abandoned): `can_run or can_abandon`; with no
        # configuration (never fired: unconfigured), nothing to wait for.
        ready = True
        if config is not None:
            kwargs = instance.kwargs
            waiting = self.waiting
            for trigger in config.after:
                if trigger not in kwargs:
                    ready = False
                    names = waiting.get((task, trigger))
                    if names is None:
                        waiting[task, trigger] = {name: None}
                    else:
                        names[name] = None
            unless = config.unless
            if unless:
                applied = instance.abandon_state
                missing = False
                for trigger in unless:
                    if trigger not in applied:
                        _add(waiting, (task, trigger), name)
                        missing = True
                ready = ready or not missing
        if ready:
            _add(self.ready, task, name)

    def unindex(self, name: str, instance: Row) -> None:
        status = instance.status
        if status in RESOLVED:
            self.resolved.pop(name, None)
            return
        value = VALUE_OF[status]
        left = self.counts[value] - 1
        if left:
            self.counts[value] = left
        else:
            del self.counts[value]
        if status is not _UNSTARTED:
            return
        task = instance.task_name
        _discard(self.unstarted, task, name)
        for trigger in waits_for(instance):
            _discard(self.waiting, (task, trigger), name)
        _discard(self.ready, task, name)

    def put(self, name: str, instance: Any) -> Any:
        """Set (or with `ABSENT` remove) a row; returns what it was (or `ABSENT`)."""
        rows = self.rows
        old = rows.get(name, ABSENT)
        if old is not ABSENT and self.indexed:
            self.unindex(name, old)
        if instance is ABSENT:
            rows.pop(name, None)
        else:
            rows[name] = instance
            if self.indexed:
                self.index(name, instance)
        return old


class InstanceTable(Mapping[str, TaskInstance]):
    """A snapshot's instances by name (read-only), with the indexes the rules
    query. `derive` makes the next version in the time of what changed."""

    __slots__ = ("_data", "_diff", "_next")

    def __init__(self, rows: dict[str, Row] | None = None) -> None:
        """A table of `rows` (taken over, not copied: the caller lets go of it)."""
        self._data = _Data({} if rows is None else rows)
        self._diff: dict[str, Any] | None = None
        self._next: InstanceTable | None = None

    # -- versions -------------------------------------------------------------------

    def _reroot(self) -> _Data:
        """Make this version the one the shared data holds (lock held)."""
        data = self._data
        if self._next is None:
            return data
        # Each version refers to the next newer one: the chain ends at the one
        # the data holds.
        path: list[InstanceTable] = []
        node: InstanceTable = self
        while node._next is not None:
            path.append(node)
            node = node._next
        head = node
        for node in reversed(path):
            assert node._diff is not None
            head._diff = {name: data.put(name, value) for name, value in node._diff.items()}
            head._next = node
            node._diff = node._next = None
            head = node
        return data

    def derive(self, changes: dict[str, Any], *, drop_resolved: bool = False) -> InstanceTable:
        """The next version: these rows set (or, with `ABSENT`, removed); with
        `drop_resolved`, the resolved instances it held removed too (`changes`
        is the caller's to give away)."""
        new = InstanceTable.__new__(InstanceTable)
        new._diff = new._next = None
        with self._data.lock:
            data = self._reroot()
            if drop_resolved:
                data.build()
                for name in data.resolved:
                    changes.setdefault(name, ABSENT)
            new._data = data
            self._diff = {name: data.put(name, value) for name, value in changes.items()}
            self._next = new
        return new

    # -- the mapping ------------------------------------------------------------------

    def __getitem__(self, name: str) -> TaskInstance:
        with self._data.lock:
            return _decoded(self._reroot().rows, name)

    def get(self, name: str, default: Any = None) -> Any:
        with self._data.lock:
            rows = self._reroot().rows
            return _decoded(rows, name) if name in rows else default

    def __contains__(self, name: object) -> bool:
        with self._data.lock:
            return name in self._reroot().rows

    def __len__(self) -> int:
        with self._data.lock:
            return len(self._reroot().rows)

    def __iter__(self) -> Iterator[str]:
        with self._data.lock:
            return iter(list(self._reroot().rows))

    def values(self) -> list[TaskInstance]:  # type: ignore[override]
        with self._data.lock:
            rows = self._reroot().rows
            return [_decoded(rows, name) for name in list(rows)]

    def items(self) -> list[tuple[str, TaskInstance]]:  # type: ignore[override]
        with self._data.lock:
            rows = self._reroot().rows
            return [(name, _decoded(rows, name)) for name in list(rows)]

    def __repr__(self) -> str:
        return f"InstanceTable({dict(self.items())!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Copied or pickled as the rows of this version alone (not the shared
        # data of every version, nor its lock).
        return (InstanceTable, (dict(self.items()),))

    # -- the indexes --------------------------------------------------------------------

    def unstarted(self, task: str) -> list[TaskInstance]:
        """The task's unstarted instances."""
        with self._data.lock:
            data = self._reroot()
            data.build()
            names = data.unstarted.get(task)
            return [_decoded(data.rows, n) for n in names] if names else []

    def waiting(self, task: str, trigger: str) -> list[TaskInstance]:
        """The task's unstarted instances that still take `trigger` (an ``after``
        trigger they have no kwargs of, an ``unless`` trigger not yet applied)."""
        with self._data.lock:
            data = self._reroot()
            data.build()
            names = data.waiting.get((task, trigger))
            return [_decoded(data.rows, n) for n in names] if names else []

    def ready(self, task: str) -> list[TaskInstance]:
        """The task's unstarted instances that can run or be abandoned now (none,
        usually: a fire schedules or abandons them; a new configuration or an
        operator's change may leave some for the next fire of the task)."""
        with self._data.lock:
            data = self._reroot()
            data.build()
            names = data.ready.get(task)
            return [_decoded(data.rows, n) for n in names] if names else []

    def resolved(self) -> list[str]:
        """The names of the resolved instances held."""
        with self._data.lock:
            data = self._reroot()
            data.build()
            return list(data.resolved)

    def unresolved_counts(self) -> dict[str, int]:
        """Unresolved instances by status value."""
        with self._data.lock:
            data = self._reroot()
            data.build()
            return dict(data.counts)
