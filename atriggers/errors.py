"""The exception hierarchy: every error atriggers raises derives from `TriggerError`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = [
    "ConcurrencyError",
    "ConfigurationError",
    "DispatchError",
    "IdempotencyConflict",
    "InstanceLost",
    "InstanceNotFound",
    "InvalidInput",
    "InvalidStatus",
    "MaxRetriesExceeded",
    "Problem",
    "SessionChanged",
    "StorageError",
    "TriggerError",
    "UnknownManager",
    "UnknownRunner",
    "UnknownStorage",
    "UnknownTask",
    "with_context",
]


class TriggerError(Exception):
    """Base class of every error raised by atriggers."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a configuration: which task, which directive, what."""

    task: str | None
    directive: str | None
    message: str

    def __str__(self) -> str:
        where = [f"task {self.task!r}"] if self.task is not None else []
        if self.directive is not None:
            where.append(f"directive {self.directive!r}")
        return f"{', '.join(where)}: {self.message}" if where else self.message


class ConfigurationError(TriggerError, ValueError):
    """A configuration is invalid. Raised before anything is stored.

    `problems` lists every problem found, each naming the task and the directive
    (spelled as in the configuration, e.g. ``withParams``).
    """

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        if len(problems) == 1:
            message = f"invalid configuration: {problems[0]}"
        else:
            lines = "".join(f"\n  - {p}" for p in problems)
            message = f"invalid configuration ({len(problems)} problems):{lines}"
        super().__init__(message)

    @property
    def task(self) -> str | None:
        """The task named by the first problem."""
        return self.problems[0].task if self.problems else None

    @property
    def directive(self) -> str | None:
        """The directive named by the first problem."""
        return self.problems[0].directive if self.problems else None


class InvalidInput(TriggerError, ValueError, TypeError):
    """An argument cannot be accepted (a non-string trigger name, kwargs that are
    not a JSON object...). Raised before anything is written. A `ValueError` and
    a `TypeError` both: code that catches either for a bad argument catches it."""


class SessionChanged(InvalidInput):
    """The session is no longer at the version an operation was planned against
    (a repair plan made before a fire, say). Nothing was written."""

    def __init__(self, uid: str, expected: int, current: int) -> None:
        self.uid = uid
        self.expected = expected
        self.current = current
        super().__init__(
            f"session {uid!r} changed since it was planned for (version {expected}, now {current}); "
            f"nothing was written"
        )


class IdempotencyConflict(InvalidInput):
    """A fire reused an idempotency key that the session holds for another fire
    (another trigger, or other kwargs). Nothing was written. `key` is the key,
    `differs` what differs: ``"trigger"`` or ``"kwargs"``."""

    def __init__(self, key: str, differs: str, message: str) -> None:
        self.key = key
        self.differs = differs
        super().__init__(message)


class InstanceNotFound(TriggerError, KeyError):
    """The session has no task instance with this name."""

    def __init__(self, name: str, uid: str) -> None:
        self.name = name
        self.uid = uid
        super().__init__(name)

    def __str__(self) -> str:
        return f"session {self.uid!r} has no task instance named {self.name!r}"


class InvalidStatus(TriggerError, ValueError):
    """The instance is not in a status that allows the operation (e.g. replaying
    an instance that did not fail)."""

    def __init__(self, name: str, status: str, operation: str) -> None:
        self.name = name
        self.status = status
        super().__init__(f"instance {name!r} is {status}; only failed instances can be {operation}")


class ConcurrencyError(TriggerError):
    """Concurrent writers kept changing the session: the operation gave up after
    its bounded retries. Nothing of it was written."""


class StorageError(TriggerError):
    """The storage backend failed (database error, server unreachable). The
    operation was not stored; the driver's exception is the ``__cause__``."""


class DispatchError(TriggerError):
    """A runner refused an instance, or there is no runner to hand it to: the
    broker is down, the function rejected the invocation, the runner is unknown.

    `TriggerManager.fire` does not raise it: the instance is stored ``failed``
    with this error, and can be replayed once the runner is back.
    """


class UnknownRunner(DispatchError, LookupError):
    """No runner is registered under this name."""


class UnknownTask(TriggerError, LookupError):
    """No task is registered under the name given in ``run``."""


class UnknownManager(TriggerError, LookupError):
    """No `TriggerManager` class is registered under this name (a remote worker
    or the CLI was asked to rebuild one it does not know)."""


class UnknownStorage(TriggerError, LookupError, ValueError):
    """No storage is registered for this URL scheme."""


class InstanceLost(TriggerError):
    """An instance was lost: its run did not store an outcome before its
    deadline (``timeout``), or the process holding it stopped. Stored as the
    ``exceptionType`` of the failed instance; a task that calls
    ``context.heartbeat()`` after it was lost gets it raised."""


class MaxRetriesExceeded(TriggerError):
    """A task asked to retry itself more often than its ``max_retries`` allows."""


E = TypeVar("E", bound=BaseException)


def with_context(exc: E, context: Mapping[str, Any]) -> E:
    """Attach `context` to `exc` (as ``exc.context``) and return it.

    When a task fails with such an exception, the context is stored in the failed
    instance's ``exceptionContext`` metadata::

        raise with_context(ValueError("bad score"), {"score": score})
    """
    existing = getattr(exc, "context", None)
    merged = {**existing, **context} if isinstance(existing, Mapping) else dict(context)
    exc.context = merged  # type: ignore[attr-defined]
    return exc


# A failed instance stores the dotted name of its exception (``exceptionType``), and
# operators and tools match on it: pinned, so that moving a class to another module
# never changes what sessions say.
for _error in (
    TriggerError,
    ConfigurationError,
    InvalidInput,
    IdempotencyConflict,
    InstanceNotFound,
    InvalidStatus,
    ConcurrencyError,
    StorageError,
    DispatchError,
    UnknownRunner,
    UnknownTask,
    UnknownManager,
    UnknownStorage,
    InstanceLost,
    MaxRetriesExceeded,
):
    _error.__module__ = "atriggers.errors"
del _error
