"""Session snapshots, and the drafts that record what an operation changes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ._table import ABSENT, InstanceTable, waits_for
from .clock import iso
from .config import TaskConfig
from .due import Due, due_of, due_of_cached
from .errors import InstanceNotFound
from .idempotency import NO_KEYS, FireKey, FireKeys
from .instance import VALUE_OF, Meta, Status, TaskInstance

__all__ = ["Change", "Draft", "Placement", "SessionState", "instance_number", "utc_now"]


def utc_now() -> str:
    """ISO 8601 UTC timestamp, as stored in instance metadata."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


_IN_FLIGHT = frozenset({Status.SCHEDULED, Status.RUNNING})


def _may_be_due(instance: TaskInstance) -> bool:
    """Whether `instance` can have a due entry at all (the common answer, no,
    without working it out)."""
    if instance.status in _IN_FLIGHT:
        return True
    return (
        instance.status is Status.UNSTARTED
        and instance.config is not None
        and instance.config.within is not None
    )


def _nobody(runner: str) -> str | None:
    return None


def _nobody_limit(runner: str) -> float | None:
    return None


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the instances an operation schedules go: `default_runner` for tasks
    without ``using``, and `owner_for(runner)`, the lease owner that will hold
    instances dispatched to that runner in this process (None: the runner hands
    them elsewhere, like Celery or Lambda)."""

    default_runner: str = "asyncio"
    owner_for: Callable[[str], str | None] = _nobody
    #: Seconds an instance dispatched to that runner may wait to start (None:
    #: no limit), so that one handed to a broker that drops it is not stuck.
    start_within: Callable[[str], float | None] = _nobody_limit
    #: Called with each instance just scheduled and held in this process: its
    #: runner may start it in the same write (stored ``running`` at once).
    start: Callable[[Draft, TaskInstance], None] | None = None


@dataclass(frozen=True, slots=True)
class SessionState:
    """A read-only snapshot of one session.

    `instances` holds every instance when the snapshot comes from
    `TriggerManager.get_state()` (``complete`` is true). Snapshots used internally
    for a fire hold only the unresolved instances and those asked for by name,
    which is what keeps a fire's cost independent of the session's history.
    """

    uid: str
    version: int = 0
    tasks: Mapping[str, TaskConfig] = field(default_factory=dict)
    instances: Mapping[str, TaskInstance] = field(default_factory=dict)
    latest_kwargs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: Task name -> how many instances it has ever had (the next ``#n``).
    instance_counts: Mapping[str, int] = field(default_factory=dict)
    complete: bool = True
    #: The idempotency keys of its recent keyed fires (`atriggers.idempotency`).
    fire_keys: FireKeys = NO_KEYS
    #: Unresolved instances by status value, when already known (a snapshot made
    #: by a write carries them forward from the one before: see `by_status`).
    unresolved_counts: Mapping[str, int] | None = field(default=None, compare=False, repr=False)

    def by_status(self) -> Mapping[str, int]:
        """How many unresolved instances it holds in each status (every one: a
        working view holds all the unresolved instances)."""
        if self.unresolved_counts is not None:
            return self.unresolved_counts
        if type(self.instances) is InstanceTable:
            return self.instances.unresolved_counts()
        counts: dict[str, int] = {}
        for instance in self.instances.values():
            if not instance.is_resolved:
                status = instance.status.value
                counts[status] = counts.get(status, 0) + 1
        return counts

    def instances_of_task(self, name: str | TaskConfig) -> list[TaskInstance]:
        """The instances of task `name` (or of a `TaskConfig`), oldest first."""
        if isinstance(name, TaskConfig):
            name = name.name
        found = [i for i in self.instances.values() if i.task_name == name]
        found.sort(key=instance_number)
        return found

    def get_unresolved_tasks(self) -> list[TaskConfig]:
        """Tasks with no instance yet, or with at least one unresolved instance."""
        unresolved = {i.task_name for i in self.instances.values() if not i.is_resolved}
        return [
            task
            for name, task in self.tasks.items()
            if name in unresolved or not self.instance_counts.get(name)
        ]

    def get_unresolved_instances(self) -> list[TaskInstance]:
        return [i for i in self.instances.values() if not i.is_resolved]

    def get_instances_with_unresolved_logs(self) -> list[TaskInstance]:
        return [i for i in self.instances.values() if not i.logs_resolved]

    def ordered_instances(self) -> list[TaskInstance]:
        """The instances task by task in configuration order, each task's oldest
        first; instances of tasks no longer configured come last, by name."""
        by_task: dict[str, list[TaskInstance]] = {}
        for instance in self.instances.values():
            by_task.setdefault(instance.task_name, []).append(instance)
        ordered: list[TaskInstance] = []
        for task in self.tasks:
            ordered += sorted(by_task.pop(task, ()), key=instance_number)
        leftovers = (i for found in by_task.values() for i in found)
        ordered += sorted(leftovers, key=lambda i: i.name)
        return ordered

    def debug_repr(self) -> dict[str, Any]:
        """The whole snapshot as plain JSON-ready data, instances in the order of
        `ordered_instances`, with the derived lists people look for first."""
        ordered = self.ordered_instances()
        return {
            "uid": self.uid,
            "version": self.version,
            "tasks": {name: task.to_dict() for name, task in self.tasks.items()},
            "instances": {i.name: i.to_dict() for i in ordered},
            "latestKwargs": {k: dict(v) for k, v in self.latest_kwargs.items()},
            "unresolvedTasks": [t.name for t in self.get_unresolved_tasks()],
            # From the ordered instances, so two storages holding the same
            # session give the same lists whatever order they load rows in.
            "unresolvedInstances": [i.name for i in ordered if not i.is_resolved],
            "unresolvedLogs": [i.name for i in ordered if not i.logs_resolved],
            "failed": [
                {
                    "instance": i.name,
                    "exceptionType": i.metadata.get(Meta.EXCEPTION_TYPE),
                    "exceptionInfo": i.metadata.get(Meta.EXCEPTION_INFO),
                    "exceptionContext": i.metadata.get(Meta.EXCEPTION_CONTEXT),
                }
                for i in ordered
                if i.status is Status.FAILED
            ],
        }


def instance_number(instance: TaskInstance) -> int:
    """The ``n`` of ``<task>#<n>`` (its creation order within its task)."""
    _, _, number = instance.name.rpartition("#")
    return int(number) if number.isdigit() else 0


@dataclass(frozen=True, slots=True)
class Change:
    """What one operation changed in a session: exactly what storage must write."""

    #: The full new configuration, when the operation changed it.
    tasks: Mapping[str, TaskConfig] | None
    #: Latest kwargs of the triggers fired by the operation.
    triggers: Mapping[str, Mapping[str, Any]]
    #: The full new instance counts, when the operation created instances.
    instance_counts: Mapping[str, int] | None
    #: Instances created or changed, in their new form.
    instances: tuple[TaskInstance, ...]
    #: The snapshot after the change (version = base version + 1).
    state: SessionState
    #: Due-index entries to write (key -> entry) or delete (key -> None), in
    #: the same atomic write (see `atriggers.due`).
    due: Mapping[str, Due | None] = field(default_factory=dict)
    #: When the operation happened (epoch seconds, the storage's clock). None:
    #: not known.
    at: float | None = None
    #: Whether the session's entry in the session index changes: a new session,
    #: a new configuration, instances created, or an instance's status changed.
    #: (False for a fire that only records kwargs: most fires write no index.)
    reindex: bool = True
    #: Idempotency-key slots to write (slot -> record) or blank (slot -> None),
    #: in the same atomic write (the codec stores them; see `atriggers.idempotency`).
    keys: Mapping[int, FireKey | None] = field(default_factory=dict)

    @property
    def version(self) -> int:
        return self.state.version


class Draft:
    """Copy-on-write view of a `SessionState` that the rules change.

    The rules (`atriggers._rules`) are pure functions over a draft; `changes()`
    then tells storage what to write.
    """

    def __init__(
        self,
        state: SessionState,
        now: str | None = None,
        *,
        at: float | None = None,
        placement: Placement | None = None,
    ) -> None:
        self.base = state
        self.uid = state.uid
        #: The time of the operation: epoch seconds, and as stored (ISO 8601).
        self.at = at if at is not None else (datetime.fromisoformat(now).timestamp() if now else time.time())
        self._now = now
        self.placement = placement or Placement()
        self._due: dict[str, Due | None] = {}
        self.tasks: Mapping[str, TaskConfig] = state.tasks
        # The base's instances, and those this draft changed or gave a new
        # configuration (looked up first): nothing is copied per operation.
        self._base: Mapping[str, TaskInstance] = state.instances
        self._instances: dict[str, TaskInstance] = {}
        self._latest: Mapping[str, Mapping[str, Any]] = state.latest_kwargs
        self._counts: Mapping[str, int] = state.instance_counts
        self._changed: dict[str, TaskInstance] = {}
        self._fired: dict[str, Mapping[str, Any]] = {}
        self._tasks_changed = False
        #: The session's idempotency keys, and the key slots to write (slot ->
        #: record, None: blank): `atriggers.idempotency.fire_once` sets both.
        self.fire_keys = state.fire_keys
        self.key_rows: dict[int, FireKey | None] = {}
        #: Instances this draft scheduled and its placement started at once
        #: (stored ``running`` by this write; None: none).
        self.started: set[str] | None = None

    @property
    def now(self) -> str:
        """The time of the operation as stored (ISO 8601), worked out when first
        needed (most fires stamp nothing)."""
        now = self._now
        if now is None:
            now = self._now = iso(self.at)
        return now

    # -- reading -----------------------------------------------------------------

    @property
    def latest_kwargs(self) -> Mapping[str, Mapping[str, Any]]:
        return self._latest

    def count(self, task: str) -> int:
        return self._counts.get(task, 0)

    def get(self, name: str) -> TaskInstance:
        instance = self._instances.get(name)
        if instance is None:
            instance = self._base.get(name)
            if instance is None:
                raise InstanceNotFound(name, self.uid)
        return instance

    def find(self, name: str) -> TaskInstance | None:
        """The named instance, or None if the draft has no such instance."""
        instance = self._instances.get(name)
        return self._base.get(name) if instance is None else instance

    def instances(self) -> Iterator[TaskInstance]:
        mine = self._instances
        for name, instance in self._base.items():
            yield mine.get(name, instance)
        for name, instance in mine.items():
            if name not in self._base:
                yield instance

    # -- the indexes the rules query (see `atriggers._table`) -------------------------

    def _table(self) -> InstanceTable:
        base = self._base
        if type(base) is not InstanceTable:
            # A snapshot built by hand, or complete: index a copy, once.
            base = self._base = InstanceTable(dict(base))
        return base

    def _merged(self, found: list[TaskInstance], task: str) -> list[TaskInstance]:
        """`found` in the base, as this draft has them, then this draft's other
        instances of `task` (for the caller to check)."""
        mine = self._instances
        if not mine:
            return found
        merged = [i for i in found if i.name not in mine]
        merged += [i for i in mine.values() if i.task_name == task]
        return merged

    def unstarted(self, task: str) -> list[TaskInstance]:
        """The task's unstarted instances."""
        found = self._merged(self._table().unstarted(task), task)
        return [i for i in found if i.status is Status.UNSTARTED]

    def waiting(self, task: str, trigger: str) -> list[TaskInstance]:
        """The task's unstarted instances that still take `trigger`."""
        found = self._merged(self._table().waiting(task, trigger), task)
        return [i for i in found if i.status is Status.UNSTARTED and trigger in waits_for(i)]

    def maybe_ready(self, task: str) -> list[TaskInstance]:
        """The task's instances that may have become ready to run or be
        abandoned: those this draft changed, and those the base holds ready
        (an instance nobody changed stays as ready as it was)."""
        return self._merged(self._table().ready(task), task)

    def tasks_using(self, trigger: str) -> list[TaskConfig]:
        return [t for t in self.tasks.values() if t.uses_trigger(trigger)]

    # -- writing -----------------------------------------------------------------

    def edit(self, name: str) -> TaskInstance:
        """The named instance, private to this draft and recorded as changed."""
        instance = self._changed.get(name)
        if instance is None:
            instance = self.get(name).copy()
            self._changed[name] = self._instances[name] = instance
        return instance

    def set_status(self, instance: TaskInstance, status: Status) -> None:
        instance.status = status
        self.touch(instance, VALUE_OF[status])

    def schedule(
        self, instance: TaskInstance, not_before: float | None = None, *, runner: str | None = None
    ) -> None:
        """Move `instance` (private to this draft) to ``scheduled``: placed on its
        runner now, or, with a `not_before` still to come, waiting for it in the
        due index (a durable timer that any live process acts on). The runner is
        the task's ``using``, else `runner`, else the placement's default."""
        meta = instance.metadata
        for key in (Meta.OWNER, Meta.TOKEN, Meta.DEADLINE, Meta.NOT_BEFORE):
            meta.pop(key, None)
        if self.started is not None:
            self.started.discard(instance.name)
        config = instance.config
        using = config.using if config is not None else None
        meta[Meta.RUNNER] = using or runner or self.placement.default_runner
        if not_before is not None and not_before > self.at:
            meta[Meta.NOT_BEFORE] = iso(not_before)
        else:
            self.place(instance)
        self.set_status(instance, Status.SCHEDULED)
        if Meta.OWNER in meta and self.placement.start is not None:
            self.placement.start(self, instance)
            if instance.status is Status.RUNNING:
                if self.started is None:
                    self.started = set()
                self.started.add(instance.name)

    def place(self, instance: TaskInstance) -> None:
        """Hand a scheduled instance to its runner: if that runner holds it in
        this process, this process's lease owner holds it; else it must start
        within the runner's ``start_within``, if it has one."""
        meta = instance.metadata
        meta.pop(Meta.NOT_BEFORE, None)
        runner = str(meta.get(Meta.RUNNER) or self.placement.default_runner)
        owner = self.placement.owner_for(runner)
        meta.pop(Meta.DEADLINE, None)
        if owner is None:
            meta.pop(Meta.OWNER, None)
            limit = self.placement.start_within(runner)
            if limit is not None:
                meta[Meta.DEADLINE] = iso(self.at + limit)
        else:
            meta[Meta.OWNER] = owner

    def set_due(self, key: str, entry: Due | None) -> None:
        """Write (or with None delete) a due-index entry that is not an
        instance's own (a delayed fire), or rewrite an instance's entry."""
        self._due[key] = entry

    def refresh_due(self, name: str) -> None:
        """Rewrite the entry instance `name` needs (after a claim moved it)."""
        self._due[name] = due_of(self.get(name))

    def touch(self, instance: TaskInstance, *stamps: str) -> None:
        """Record the last-modified time (and one timestamp per name in `stamps`)."""
        timestamps = instance.metadata.setdefault(Meta.TIMESTAMPS, {})
        timestamps.setdefault(Meta.CREATED, self.now)
        timestamps[Meta.LAST_MODIFIED] = self.now
        for stamp in stamps:
            timestamps[stamp] = self.now

    def create(
        self,
        task: TaskConfig,
        kwargs: dict[str, dict[str, Any]],
        abandon_state: frozenset[str] = frozenset(),
        metadata: dict[str, Any] | None = None,
    ) -> TaskInstance:
        number = self.count(task.name)
        counts = dict(self._counts)
        counts[task.name] = number + 1
        self._counts = counts
        instance = TaskInstance(
            name=f"{task.name}#{number}",
            task_name=task.name,
            kwargs=kwargs,
            abandon_state=abandon_state,
            metadata=dict(metadata or {}),
            config=task,
        )
        self.touch(instance, VALUE_OF[Status.UNSTARTED])
        self._changed[instance.name] = self._instances[instance.name] = instance
        return instance

    def record_fire(self, trigger: str, kwargs: Mapping[str, Any]) -> None:
        if self._latest is self.base.latest_kwargs:
            self._latest = dict(self._latest)
        self._latest[trigger] = kwargs  # type: ignore[index]
        self._fired[trigger] = kwargs

    def replace_tasks(self, tasks: Mapping[str, TaskConfig]) -> None:
        self.tasks = tasks
        self._tasks_changed = True
        # Loaded instances follow their task's new configuration.
        for instance in list(self.instances()):
            config = tasks.get(instance.task_name)
            if config is None or instance.config is config:
                continue
            if instance.name in self._changed:
                instance.config = config
            else:
                copy = instance.copy()
                copy.config = config
                self._instances[instance.name] = copy

    @property
    def fired(self) -> Mapping[str, Mapping[str, Any]]:
        """Trigger -> kwargs of the triggers this operation fired."""
        return self._fired

    def edited(self) -> Iterator[TaskInstance]:
        """The instances this operation created or changed (private to the draft)."""
        return iter(self._changed.values())

    # -- result --------------------------------------------------------------------

    @property
    def changed(self) -> bool:
        return bool(self._changed or self._fired or self._tasks_changed or self._due or self.key_rows)

    def changes(self) -> Change:
        """What to write, and the snapshot that results."""
        complete = self.base.complete
        # The next version of the table holds what this draft changed; a working
        # view drops resolved instances (changed now, or loaded by name).
        rows: dict[str, Any] = {
            name: instance if complete or not instance.is_resolved else ABSENT
            for name, instance in self._instances.items()
        }
        # One pass over what changed: whether the session index moves (a status
        # changed), and the due-index entries that differ.
        moved = False
        due = dict(self._due)
        base = self._base
        for name, instance in self._changed.items():
            before = base.get(name)
            if before is None or before.status is not instance.status:
                moved = True
            if name not in due and (_may_be_due(instance) or (before is not None and _may_be_due(before))):
                entry = due_of_cached(instance)
                if entry != (due_of_cached(before) if before is not None else None):
                    due[name] = entry
        state = SessionState(
            uid=self.uid,
            version=self.base.version + 1,
            tasks=self.tasks,
            instances=self._table().derive(rows, drop_resolved=not complete),
            latest_kwargs=self._latest,
            instance_counts=self._counts,
            complete=complete,
            fire_keys=self.fire_keys,
        )
        counts_changed = self._counts is not self.base.instance_counts
        return Change(
            tasks=self.tasks if self._tasks_changed else None,
            triggers=self._fired,
            instance_counts=self._counts if counts_changed else None,
            instances=tuple(self._changed.values()),
            state=state,
            due=due,
            at=self.at,
            reindex=moved or self.base.version == 0 or self._tasks_changed or counts_changed,
            keys=self.key_rows,
        )
