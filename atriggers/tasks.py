"""The task registry: how a configuration's ``run`` name becomes code.

Names resolve through this explicit registry (filled by `@task`) and the
``atriggers.tasks`` entry-point group of installed packages, never by importing a
dotted path written in a configuration.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, TypeVar, overload

import anyio.to_thread

from .errors import UnknownTask

if TYPE_CHECKING:
    from .context import TaskContext

__all__ = ["ENTRY_POINT_GROUP", "TaskDefinition", "TaskRegistry", "registry", "task"]

#: Entry-point group for tasks: ``name = "package.module:function"``.
ENTRY_POINT_GROUP = "atriggers.tasks"

TaskResult = Mapping[str, Any] | None
TaskFunction = Callable[["TaskContext"], Awaitable[TaskResult]] | Callable[["TaskContext"], TaskResult]
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class TaskDefinition:
    """A registered task: its name, its function and how often it may retry."""

    name: str
    function: Callable[..., Any]
    max_retries: int = 0

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.function)

    async def __call__(self, context: TaskContext) -> object:
        if self.is_async:
            return await self.function(context)
        # Sync tasks run in a worker thread (anyio's default limiter bounds them),
        # so they cannot block the event loop.
        return await anyio.to_thread.run_sync(self.function, context)


class TaskRegistry:
    """Task name -> `TaskDefinition`."""

    def __init__(self, *, entry_point_group: str | None = ENTRY_POINT_GROUP) -> None:
        self._tasks: dict[str, TaskDefinition] = {}
        self._group = entry_point_group

    def register(
        self, function: Callable[..., Any], name: str | None = None, *, max_retries: int = 0
    ) -> TaskDefinition:
        if not callable(function):
            raise TypeError(f"a task must be a function taking a TaskContext, not {function!r}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, not {max_retries}")
        name = name or f"{function.__module__}.{function.__qualname__}"
        definition = TaskDefinition(name, function, max_retries)
        self._tasks[name] = definition
        return definition

    def unregister(self, name: str) -> None:
        self._tasks.pop(name, None)

    def get(self, name: str) -> TaskDefinition:
        definition = self._tasks.get(name)
        if definition is None and self._group:
            for ep in entry_points(group=self._group, name=name):
                loaded = ep.load()
                definition = loaded if isinstance(loaded, TaskDefinition) else self.register(loaded, name)
                break
        if definition is None:
            raise UnknownTask(
                f"no task registered as {name!r}: decorate it with @atriggers.task({name!r}) "
                f"in a module your process imports, or declare it in the "
                f"{self._group!r} entry-point group"
            )
        return definition

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Iterator[str]:
        return iter(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)


#: The registry `@task` fills and managers use unless given another.
registry = TaskRegistry()


@overload
def task(name: F, *, max_retries: int = 0) -> F: ...
@overload
def task(name: str | None = None, *, max_retries: int = 0) -> Callable[[F], F]: ...
def task(name: str | F | None = None, *, max_retries: int = 0) -> F | Callable[[F], F]:
    """Register a task function under `name` (default: ``module.qualname``).

    ::

        @task("app.import_subject", max_retries=3)
        async def import_subject(context: TaskContext) -> dict[str, Any]:
            ...

    The function receives a `TaskContext` and returns a mapping (the kwargs of the
    cascade) or None. Plain ``def`` functions run in a worker thread.
    """
    if callable(name):
        registry.register(name, max_retries=max_retries)
        return name

    def decorate(function: F) -> F:
        registry.register(function, name, max_retries=max_retries)
        return function

    return decorate
