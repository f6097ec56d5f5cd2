"""`InstanceTable`: the instances of a working snapshot, indexed for the rules.

A fire must touch only the instances it concerns: the unstarted instances of a
task that wait for the fired trigger, and those that may be ready to run or be
abandoned. Scanning every unresolved instance instead makes each fire of an
``andEvery`` trigger dearer as instances pile up. The table keeps these indexes
(task -> unstarted instances, (task, trigger) -> instances waiting for it, task
-> instances ready to schedule or abandon) and unresolved counts by status. Each
is built when first asked for, for the tasks asked about: the rows a backend
read stay stored text until then, so a fire into a session read cold parses the
instances of the tasks it concerns, not the whole session.

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

__all__ = ["ABSENT", "InstanceTable", "Reader", "Undecoded"]


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
    What the indexes use is checked when the row is parsed for them; the rest, if corrupt,
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


class Reader(Protocol):
    """Parses the rows of a working view that a backend read as stored text (a
    codec makes it): `peek` as far as the indexes need, `decode` in full. Both
    raise `StorageError` naming the instance when its row is corrupt, or when
    its task is not the one its name says (``<task>#<n>``)."""

    def peek(self, name: str, text: str) -> Row: ...
    def decode(self, name: str, text: str) -> TaskInstance: ...


def _task_of(name: str, row: Row | str) -> str:
    # An instance is named ``<task>#<n>``: the task of a row still unread is
    # in its name (the reader checks it against the row when it parses it).
    return name.rpartition("#")[0] if isinstance(row, str) else row.task_name


class _Data:
    """The rows of the newest version (the one whose `_next` is None), and their
    indexes. Rows a backend read stay text until used, and each index is built
    when first asked for, for the tasks asked about: a cold fire reads a whole
    session yet touches the instances of the few tasks that use its trigger, so
    parsing and indexing all the others cost more than the rest of the fire.
    It refers to no version: versions and their data make no reference cycle,
    so they go as soon as nothing holds them, not at the next collection of the
    garbage collector."""

    __slots__ = (
        "counted",
        "counts",
        "indexed",
        "lock",
        "misnamed",
        "reader",
        "ready",
        "resolved",
        "rows",
        "unstarted",
        "waiting",
    )

    def __init__(self, rows: dict[str, Any], reader: Reader | None) -> None:
        self.rows = rows
        #: Parses the rows that are text (None: every row is parsed).
        self.reader = reader
        self.lock = threading.Lock()
        #: The tasks whose rows are parsed and in the three indexes below.
        self.indexed: set[str] = set()
        self.unstarted: dict[str, dict[str, None]] = {}
        self.waiting: dict[tuple[str, str], dict[str, None]] = {}
        self.ready: dict[str, dict[str, None]] = {}
        #: The resolved rows among those parsed. A row still text is unresolved
        #: as far as `derive` knows: a working view reads the unresolved
        #: instances, and the few it loads by name are parsed as they are used.
        self.resolved: dict[str, None] = {}
        #: Whether a row is not named ``<task>#<n>`` (only a table built by
        #: hand may hold one): its task's rows are then found by a full scan.
        self.misnamed = False
        #: Unresolved rows by status value, once every row is parsed (`counted`).
        self.counted = False
        self.counts: dict[str, int] = {}
        if reader is None:  # (rows parsed already: a table built by hand, or copied)
            for name, row in rows.items():
                self.note(name, row)

    # -- parsing ------------------------------------------------------------------------

    def parsed(self, name: str, text: str) -> Row:
        """Row `name` (read as `text`), parsed as far as the indexes need, in place
        (the same row in every version that holds it: nothing to swap back)."""
        assert self.reader is not None  # (text rows come with their reader)
        row = self.rows[name] = self.reader.peek(name, text)
        if row.status in RESOLVED:
            self.resolved[name] = None
        return row

    def decoded(self, name: str) -> TaskInstance:
        """Instance `name`, decoded in full in place if it was not yet."""
        row = self.rows[name]
        if isinstance(row, TaskInstance):
            return row
        if type(row) is str:
            assert self.reader is not None
            decoded = self.reader.decode(name, row)
            if decoded.status in RESOLVED:
                self.resolved[name] = None
        else:
            decoded = row.decode()
        self.rows[name] = decoded
        return decoded

    # -- the indexes, built when first asked for ----------------------------------------

    def task(self, task: str) -> None:
        """Index the rows of `task` (parsing those still text), once."""
        if task in self.indexed:
            return
        rows, index = self.rows, self.index
        if self.misnamed:
            names = [name for name, row in rows.items() if _task_of(name, row) == task]
        else:
            # (A C-speed pass over the names, parsing none of the rows.)
            prefix = f"{task}#"
            names = [name for name in rows if name.startswith(prefix) and name.rpartition("#")[0] == task]
        for name in names:
            row = rows[name]
            index(name, self.parsed(name, row) if type(row) is str else row)
        self.indexed.add(task)

    def count(self) -> None:
        """Count the unresolved rows by status (parsing every row), once."""
        if self.counted:
            return
        counts: dict[str, int] = {}
        rows = self.rows
        for name, row in rows.items():  # (parsing in place sets values, not keys)
            status = (self.parsed(name, row) if type(row) is str else row).status
            if status not in RESOLVED:
                value = VALUE_OF[status]
                counts[value] = counts.get(value, 0) + 1
        self.counts = counts
        self.counted = True

    def index(self, name: str, instance: Row) -> None:
        # Inlined (no properties, no enum `.value`, no helper calls): a fire into
        # a cold session indexes every unstarted instance of the tasks it concerns.
        if instance.status is not _UNSTARTED:
            return
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
        if instance.status is not _UNSTARTED:
            return
        task = instance.task_name
        _discard(self.unstarted, task, name)
        for trigger in waits_for(instance):
            _discard(self.waiting, (task, trigger), name)
        _discard(self.ready, task, name)

    def put(self, name: str, row: Any) -> Any:
        """Set (or with `ABSENT` remove) a row; returns what it was (or `ABSENT`).
        Every index built so far follows."""
        rows = self.rows
        old = rows.get(name, ABSENT)
        # (A row of an indexed task, or any row once counted, is parsed: one
        # still text is in no index.)
        if old is not ABSENT and type(old) is not str:
            status = old.status
            if status in RESOLVED:
                self.resolved.pop(name, None)
            elif self.counted:
                value = VALUE_OF[status]
                left = self.counts[value] - 1
                if left:
                    self.counts[value] = left
                else:
                    del self.counts[value]
            if old.task_name in self.indexed:
                self.unindex(name, old)
        if row is ABSENT:
            rows.pop(name, None)
        else:
            rows[name] = row
            self.note(name, row)
        return old

    def note(self, name: str, row: Row | str) -> None:
        """Enter row `name`, just set, in the indexes built so far."""
        if isinstance(row, str):
            if not (self.counted or name.rpartition("#")[0] in self.indexed):
                return
            row = self.parsed(name, row)  # (an older version's row, set back)
        elif not self.misnamed and name.rpartition("#")[0] != row.task_name:
            self.misnamed = True
        status = row.status
        if status in RESOLVED:
            self.resolved[name] = None
        elif self.counted:
            value = VALUE_OF[status]
            self.counts[value] = self.counts.get(value, 0) + 1
        if row.task_name in self.indexed:
            self.index(name, row)


class InstanceTable(Mapping[str, TaskInstance]):
    """A snapshot's instances by name (read-only), with the indexes the rules
    query. `derive` makes the next version in the time of what changed."""

    __slots__ = ("_data", "_diff", "_next")

    def __init__(self, rows: dict[str, Any] | None = None, reader: Reader | None = None) -> None:
        """A table of `rows` (taken over, not copied: the caller lets go of it).
        With a `reader`, the rows are the texts a backend read, parsed by it
        when first used."""
        self._data = _Data({} if rows is None else rows, reader)
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
                for name in data.resolved:
                    changes.setdefault(name, ABSENT)
            new._data = data
            self._diff = {name: data.put(name, value) for name, value in changes.items()}
            self._next = new
        return new

    # -- the mapping ------------------------------------------------------------------

    def __getitem__(self, name: str) -> TaskInstance:
        with self._data.lock:
            return self._reroot().decoded(name)

    def get(self, name: str, default: Any = None) -> Any:
        with self._data.lock:
            data = self._reroot()
            return data.decoded(name) if name in data.rows else default

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
            data = self._reroot()
            return [data.decoded(name) for name in list(data.rows)]

    def items(self) -> list[tuple[str, TaskInstance]]:  # type: ignore[override]
        with self._data.lock:
            data = self._reroot()
            return [(name, data.decoded(name)) for name in list(data.rows)]

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
            data.task(task)
            names = data.unstarted.get(task)
            return [data.decoded(n) for n in names] if names else []

    def waiting(self, task: str, trigger: str) -> list[TaskInstance]:
        """The task's unstarted instances that still take `trigger` (an ``after``
        trigger they have no kwargs of, an ``unless`` trigger not yet applied)."""
        with self._data.lock:
            data = self._reroot()
            data.task(task)
            names = data.waiting.get((task, trigger))
            return [data.decoded(n) for n in names] if names else []

    def ready(self, task: str) -> list[TaskInstance]:
        """The task's unstarted instances that can run or be abandoned now (none,
        usually: a fire schedules or abandons them; a new configuration or an
        operator's change may leave some for the next fire of the task)."""
        with self._data.lock:
            data = self._reroot()
            data.task(task)
            names = data.ready.get(task)
            return [data.decoded(n) for n in names] if names else []

    def resolved(self) -> list[str]:
        """The names of the resolved instances held."""
        with self._data.lock:
            data = self._reroot()
            data.count()  # (parses every row: the resolved ones are all known then)
            return list(data.resolved)

    def unresolved_counts(self) -> dict[str, int]:
        """Unresolved instances by status value."""
        with self._data.lock:
            data = self._reroot()
            data.count()
            return dict(data.counts)
