"""Task instances and their statuses."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from ._json import copy_json
from .config import TaskConfig
from .errors import InvalidInput

__all__ = ["Meta", "Status", "TaskInstance", "check_metadata"]


class Status(StrEnum):
    """The life cycle of a task instance."""

    UNSTARTED = "unstarted"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    ABANDONED = "abandoned"
    REPLAYED = "replayed"
    SKIPPED = "skipped"

    @property
    def is_resolved(self) -> bool:
        return self in RESOLVED


#: Status value -> status (a lookup: cheaper than calling the enum).
STATUS_OF = {status.value: status for status in Status}
#: Status -> its value (``Status.value`` is a property, a few times dearer than a lookup).
VALUE_OF = {status: status.value for status in Status}
#: The empty ``abandonState`` (shared: most instances have it).
NO_TRIGGERS: frozenset[str] = frozenset()
RESOLVED = frozenset({Status.FINISHED, Status.ABANDONED, Status.REPLAYED, Status.SKIPPED})
#: Statuses in which the instance's log level no longer matters.
_LOGS_IRRELEVANT = frozenset({Status.ABANDONED, Status.REPLAYED, Status.SKIPPED})


class Meta:
    """Instance metadata keys, as in the original library."""

    RESULT = "result"
    EXCEPTION_TYPE = "exceptionType"
    EXCEPTION_INFO = "exceptionInfo"
    EXCEPTION_CONTEXT = "exceptionContext"
    PARENT = "parent"
    TIMESTAMPS = "timestamps"
    LOG_LEVEL = "logLevel"
    LOGS_RESOLVED = "logsResolved"
    COOLDOWN = "cooldown"
    DEPTH = "depth"
    ACTUAL_KWARGS = "actualKwargs"
    CREATED = "created"
    LAST_MODIFIED = "lastModified"
    #: The runner the instance was dispatched to.
    RUNNER = "runner"
    #: The process (lease owner) holding it: running it, or keeping it scheduled
    #: for an in-process run.
    OWNER = "owner"
    #: The fencing token of its current run: storing the outcome requires it.
    TOKEN = "token"
    #: When a running instance is lost if it has not stored its outcome (ISO).
    DEADLINE = "deadline"
    #: A scheduled instance does not start before this (a cooldown; ISO).
    NOT_BEFORE = "notBefore"
    #: Why an instance was abandoned (``"expired"``: its ``within`` ran out).
    REASON = "reason"
    #: The task's ``max_retries`` where the instance last ran (for lost retries).
    MAX_RETRIES = "maxRetries"
    #: The text of the ERROR-level (and above) records its task logged (bounded).
    ERROR_LOGS = "errorLogs"
    #: Operators' notes: a list of ``{"at", "by", "text"}``.
    NOTES = "notes"
    #: Trigger -> W3C ``traceparent`` of the fire whose kwargs the instance
    #: received (written when OpenTelemetry tracing is on; see atriggers.telemetry).
    TRACE = "trace"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_time(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


#: What each reserved metadata key may hold, and how to say it.
_RESERVED: dict[str, tuple[Callable[[object], bool], str]] = {
    Meta.RESULT: (lambda v: isinstance(v, dict), "a JSON object"),
    Meta.EXCEPTION_TYPE: (lambda v: isinstance(v, str), "a string"),
    Meta.EXCEPTION_INFO: (lambda v: isinstance(v, str), "a string"),
    Meta.EXCEPTION_CONTEXT: (lambda v: isinstance(v, dict), "a JSON object"),
    Meta.PARENT: (lambda v: isinstance(v, str), "an instance name"),
    Meta.TIMESTAMPS: (
        lambda v: isinstance(v, dict) and all(_is_time(t) for t in v.values()),
        "a JSON object of ISO 8601 times",
    ),
    Meta.LOG_LEVEL: (_is_int, "a logging level (an integer >= 0)"),
    Meta.LOGS_RESOLVED: (lambda v: isinstance(v, bool), "true or false"),
    Meta.COOLDOWN: (
        lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0,
        "a number of seconds >= 0",
    ),
    Meta.DEPTH: (_is_int, "an integer >= 0"),
    Meta.ACTUAL_KWARGS: (lambda v: isinstance(v, dict), "a JSON object"),
    Meta.RUNNER: (lambda v: isinstance(v, str), "a runner name"),
    Meta.OWNER: (lambda v: isinstance(v, str), "an owner id"),
    Meta.TOKEN: (lambda v: isinstance(v, str), "a string"),
    Meta.DEADLINE: (_is_time, "an ISO 8601 time"),
    Meta.NOT_BEFORE: (_is_time, "an ISO 8601 time"),
    Meta.REASON: (lambda v: isinstance(v, str), "a string"),
    Meta.MAX_RETRIES: (_is_int, "an integer >= 0"),
    Meta.ERROR_LOGS: (
        lambda v: isinstance(v, list) and all(isinstance(t, str) for t in v),
        "a list of strings",
    ),
    Meta.NOTES: (lambda v: isinstance(v, list) and all(isinstance(n, dict) for n in v), "a list of objects"),
    Meta.TRACE: (
        lambda v: isinstance(v, dict) and all(isinstance(t, str) for t in v.values()),
        "a JSON object of trigger -> traceparent",
    ),
}


def check_metadata(metadata: Mapping[str, Any], what: str = "metadata") -> None:
    """Refuse values of reserved keys (``logLevel``, ``depth``, ``timestamps``...)
    that properties, replays and tools could not read back; other keys are free."""
    for key, value in metadata.items():
        rule = _RESERVED.get(key)
        if rule is not None and not rule[0](value):
            raise InvalidInput(f"{what} key {key!r} must be {rule[1]}, not {value!r}")


@dataclass(slots=True)
class TaskInstance:
    """One run (or future run) of a trigger task in a session.

    Instances handed out by atriggers are snapshots: changing one changes nothing
    stored. Use the manager's methods to change an instance.
    """

    name: str
    task_name: str
    status: Status = Status.UNSTARTED
    #: Trigger name -> kwargs of every `after` trigger applied so far.
    kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: `unless` triggers applied so far.
    abandon_state: frozenset[str] = frozenset()
    metadata: dict[str, Any] = field(default_factory=dict)
    #: The task's configuration (not stored with the instance).
    config: TaskConfig | None = field(default=None, compare=False, repr=False)
    #: (status, due-index entry) as last worked out by `atriggers.due.due_of_cached`:
    #: a cache, not data (never copied, compared or stored). Instances are replaced,
    #: not changed, once written, so the entry of the instance a change replaces is
    #: usually known already.
    _due_memo: tuple[Status, Any] | None = field(default=None, init=False, compare=False, repr=False)

    # -- what may happen next ----------------------------------------------------

    @property
    def can_schedule(self) -> bool:
        """The instance has not started, so triggers can still be applied to it."""
        return self.status is Status.UNSTARTED

    @property
    def can_abandon(self) -> bool:
        """Unstarted, and every `unless` trigger of its task has arrived."""
        unless = self.config.unless if self.config else frozenset()
        return self.can_schedule and bool(unless) and unless <= self.abandon_state

    @property
    def can_run(self) -> bool:
        """Unstarted, every `after` trigger applied, and not to be abandoned."""
        after = self.config.after if self.config else frozenset()
        return self.can_schedule and after <= self.kwargs.keys() and not self.can_abandon

    @property
    def can_replay(self) -> bool:
        return self.status is Status.FAILED

    @property
    def can_skip(self) -> bool:
        return self.status is Status.FAILED

    @property
    def is_resolved(self) -> bool:
        return self.status in RESOLVED

    # -- metadata views ----------------------------------------------------------

    @property
    def result(self) -> dict[str, Any] | None:
        result = self.metadata.get(Meta.RESULT)
        return result if isinstance(result, dict) else None

    @property
    def parent(self) -> str | None:
        parent = self.metadata.get(Meta.PARENT)
        return parent if isinstance(parent, str) else None

    @property
    def depth(self) -> int:
        return int(self.metadata.get(Meta.DEPTH) or 0)

    @property
    def cooldown(self) -> float:
        return float(self.metadata.get(Meta.COOLDOWN) or 0)

    @property
    def timestamps(self) -> dict[str, str]:
        timestamps = self.metadata.get(Meta.TIMESTAMPS)
        return dict(timestamps) if isinstance(timestamps, dict) else {}

    @property
    def runner(self) -> str | None:
        runner = self.metadata.get(Meta.RUNNER)
        return runner if isinstance(runner, str) else None

    @property
    def owner(self) -> str | None:
        owner = self.metadata.get(Meta.OWNER)
        return owner if isinstance(owner, str) else None

    @property
    def log_level(self) -> int:
        return int(self.metadata.get(Meta.LOG_LEVEL) or logging.NOTSET)

    @property
    def log_level_name(self) -> str:
        return logging.getLevelName(self.log_level)

    @property
    def logs_resolved(self) -> bool:
        """False while the instance logged at ERROR or above and nobody marked
        those logs resolved (abandoned, replayed and skipped instances excepted)."""
        return (
            self.status in _LOGS_IRRELEVANT
            or self.log_level < logging.ERROR
            or bool(self.metadata.get(Meta.LOGS_RESOLVED))
        )

    # -- serialization -----------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as stored."""
        return {
            "task": self.task_name,
            "status": VALUE_OF[self.status],
            "kwargs": self.kwargs,
            "abandonState": sorted(self.abandon_state) if self.abandon_state else [],
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any], config: TaskConfig | None = None) -> TaskInstance:
        """The inverse of `to_dict`; `ValueError` (or `KeyError`) for data of
        the wrong shape."""
        # A cold read builds one instance per unresolved instance: no enum call,
        # no empty frozenset built, positional arguments.
        kwargs, metadata = data.get("kwargs") or {}, data.get("metadata") or {}
        task = data["task"]
        if type(task) is not str or type(kwargs) is not dict or type(metadata) is not dict:
            raise ValueError("its task, kwargs or metadata have the wrong type")
        for inner in kwargs.values():
            if type(inner) is not dict:
                raise ValueError("its kwargs are not an object of trigger -> kwargs")
        abandon = data.get("abandonState")
        if abandon:
            if type(abandon) is not list:
                raise ValueError("its abandonState is not a list")
            abandon_state = frozenset(abandon)
        else:
            abandon_state = NO_TRIGGERS
        status = STATUS_OF.get(data["status"]) if type(data["status"]) is str else None
        if status is None:
            raise ValueError(f"{data['status']!r} is not a valid Status")
        return cls(name, task, status, kwargs, abandon_state, metadata, config)

    def snapshot(self) -> TaskInstance:
        """A deep copy: what atriggers hands to callers, hooks, runners and tasks,
        so that changing it changes nothing stored or cached."""
        return TaskInstance(
            self.name,
            self.task_name,
            self.status,
            copy_json(self.kwargs),
            self.abandon_state,
            copy_json(self.metadata),
            self.config,
        )

    def copy(self) -> TaskInstance:
        """A copy whose top-level containers can be changed without touching this
        one; nested values are shared (the rules replace them, never change them
        in place). For the rules' drafts; use `snapshot` for anything handed out.
        """
        metadata = dict(self.metadata)
        if isinstance(metadata.get(Meta.TIMESTAMPS), dict):
            metadata[Meta.TIMESTAMPS] = dict(metadata[Meta.TIMESTAMPS])
        return TaskInstance(
            self.name,
            self.task_name,
            self.status,
            dict(self.kwargs),
            self.abandon_state,
            metadata,
            self.config,
        )

    def __str__(self) -> str:
        return f"{self.name} ({self.status.value})"
