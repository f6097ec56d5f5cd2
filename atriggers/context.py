"""What a running task sees: `TaskContext`, and the signals it raises to retry or
skip itself."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ._json import jsonable, kwargs_by_trigger, object_arg
from .clock import from_iso
from .errors import MaxRetriesExceeded, with_context
from .instance import Meta, TaskInstance
from .tasks import TaskDefinition

if TYPE_CHECKING:
    from .manager import TriggerManager

__all__ = ["Retry", "Skip", "TaskContext", "TaskSignal", "exception_metadata"]


#: ERROR-level records kept per run in ``errorLogs``, and characters per record.
MAX_ERROR_LOGS = 5
MAX_ERROR_LOG_CHARS = 1000


class TaskSignal(Exception):
    """Raised by a task to end its run with a status other than finished/failed."""

    def __init__(self, metadata: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.metadata = dict(metadata or {})


class Retry(TaskSignal):
    """``raise context.retry(...)``: the instance is replayed after a cooldown."""

    def __init__(
        self,
        metadata: Mapping[str, Any] | None = None,
        replacement_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
        cooldown: float | None = None,
    ) -> None:
        super().__init__(metadata)
        self.replacement_kwargs = replacement_kwargs
        self.cooldown = cooldown
        if cooldown:
            self.metadata[Meta.COOLDOWN] = cooldown


class Skip(TaskSignal):
    """``raise context.skip(...)``: the instance is marked skipped (no cascade)."""


def exception_metadata(exc: BaseException) -> dict[str, Any]:
    """The metadata a failed instance stores about `exc`."""
    return {
        Meta.EXCEPTION_TYPE: f"{type(exc).__module__}.{type(exc).__qualname__}",
        Meta.EXCEPTION_INFO: "".join(traceback.format_exception(exc)),
        Meta.EXCEPTION_CONTEXT: jsonable(getattr(exc, "context", None) or {}),
    }


class _TrackingAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Records the highest level logged through it on the task context."""

    def __init__(self, logger: logging.Logger, extra: Mapping[str, object], owner: TaskContext) -> None:
        super().__init__(logger, extra)
        self._owner = owner

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level > self._owner.log_level:
            self._owner.log_level = level
        if level >= logging.ERROR:
            self._owner.keep_error_log(level, msg, args)
        super().log(level, msg, *args, **kwargs)

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


class TaskContext:
    """Everything a task function receives."""

    def __init__(
        self,
        manager: TriggerManager,
        instance: TaskInstance,
        definition: TaskDefinition,
        *,
        token: str | None = None,
    ) -> None:
        self.manager = manager
        self.instance = instance
        self.definition = definition
        #: The fencing token of this run: only it can store the outcome.
        self.token = token
        #: Highest log level emitted through `get_logger_context` loggers.
        self.log_level = logging.NOTSET
        #: The text of the ERROR-level (and above) records logged through them,
        #: stored on the instance as ``errorLogs`` (at most `MAX_ERROR_LOGS`).
        self.error_logs: list[str] = []
        deadline = instance.metadata.get(Meta.DEADLINE)
        #: When this run is lost unless it stores its outcome or heartbeats
        #: (epoch seconds; None: no deadline).
        self.deadline: float | None = from_iso(deadline) if isinstance(deadline, str) else None

    def keep_error_log(self, level: int, msg: object, args: tuple[Any, ...]) -> None:
        """Keep the text of an ERROR-level record for the instance's metadata:
        the first `MAX_ERROR_LOGS`, each cut to `MAX_ERROR_LOG_CHARS`."""
        if len(self.error_logs) >= MAX_ERROR_LOGS:
            return
        try:
            text = str(msg) % args if args else str(msg)
        except Exception:  # noqa: BLE001 - a bad format string is logging's problem, not ours
            text = f"{msg!s} {args!r}"
        line = f"{logging.getLevelName(level)}: {text}"
        if len(line) > MAX_ERROR_LOG_CHARS:
            line = line[: MAX_ERROR_LOG_CHARS - 1] + "…"
        self.error_logs.append(line)

    @property
    def instance_name(self) -> str:
        return self.instance.name

    @property
    def task_name(self) -> str:
        return self.instance.task_name

    @property
    def uid(self) -> str:
        return self.manager.uid

    @property
    def trigger_kwargs(self) -> dict[str, Any]:
        """Trigger name -> kwargs it fired with, ``withParams`` merged underneath.

        The task's own copy (`instance` is a snapshot): changing it changes
        nothing stored."""
        actual: dict[str, Any] = self.instance.metadata.get(Meta.ACTUAL_KWARGS) or {}
        return actual

    async def heartbeat(self) -> None:
        """Tell storage this run is alive: its deadline moves its task's
        ``timeout`` from now (for long tasks). Raises `atriggers.InstanceLost`
        when the run was lost meanwhile: its outcome would be refused, so stop.
        Without a ``timeout`` there is no deadline to move and nothing is written
        (the process's lease already proves it alive)."""
        if self.deadline is None:
            return
        deadline = await self.manager.heartbeat(self.instance_name, self.token)
        if deadline is not None:
            self.deadline = deadline

    @contextmanager
    def get_logger_context(self, context: Mapping[str, Any] | None = None) -> Iterator[logging.LoggerAdapter]:  # type: ignore[type-arg]
        """A logger for the task; the highest level it emits is stored on the
        instance (``logLevel``). An exception escaping the block is logged."""
        logger = logging.getLogger(f"atriggers.tasks.{self.definition.name}")
        adapter = _TrackingAdapter(
            logger,
            {"uid": self.uid, "instance": self.instance_name, "context": dict(context or {})},
            self,
        )
        try:
            yield adapter
        except TaskSignal:
            raise
        except Exception as exc:
            adapter.exception(
                "%s failed: %s", self.instance_name, exc, extra={"context": getattr(exc, "context", {})}
            )
            raise

    def retry(
        self,
        exc: BaseException | None = None,
        *,
        cooldown: float | None = None,
        replacement_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Retry | MaxRetriesExceeded:
        """The exception to raise to run this instance again::

            raise context.retry(exc, cooldown=30)

        The instance becomes ``replayed`` and a clone runs after `cooldown`
        seconds, with `replacement_kwargs` if given. Past the task's
        ``max_retries`` this returns `MaxRetriesExceeded` instead, which fails the
        instance.
        """
        details = dict(metadata or {})
        if exc is not None:
            details.update(exception_metadata(exc))
        if self.instance.depth >= self.definition.max_retries:
            error = MaxRetriesExceeded(
                f"{self.instance_name}: attempting retry #{self.instance.depth + 1}, "
                f"but task {self.definition.name!r} has max_retries={self.definition.max_retries}"
            )
            error.__cause__ = exc
            return with_context(error, {"retryMetadata": details})
        if cooldown is not None and cooldown < 0:
            raise ValueError(f"cooldown must be >= 0 seconds, not {cooldown}")
        replacement = kwargs_by_trigger(replacement_kwargs, "replacement_kwargs")
        object_arg(details, "retry metadata")  # refused here, where the task author sees it
        return Retry(details, replacement, cooldown)

    def skip(self, metadata: Mapping[str, Any] | None = None) -> Skip:
        """The exception to raise to mark this instance skipped::

        raise context.skip({"reason": "nothing to import"})
        """
        return Skip(object_arg(metadata, "skip metadata"))

    def __repr__(self) -> str:
        return f"<TaskContext {self.uid}/{self.instance_name}>"
