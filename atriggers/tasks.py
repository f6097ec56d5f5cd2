"""The task registry: how a configuration's ``run`` name becomes code.

Names resolve through this explicit registry (filled by `@task`) and the
``atriggers.tasks`` entry-point group of installed packages, never by importing a
dotted path written in a configuration.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, overload

import anyio.to_thread

from .errors import UnknownTask
from .registry import Registry

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


def _task_definition(name: str, loaded: object) -> TaskDefinition:
    if isinstance(loaded, TaskDefinition):
        return loaded
    if not callable(loaded):
        raise UnknownTask(f"entry point {name!r} of {ENTRY_POINT_GROUP!r} is not a function: {loaded!r}")
    return TaskDefinition(name, loaded)


class TaskRegistry(Registry[TaskDefinition]):
    """Task name -> `TaskDefinition`.

    `fallback`: a registry consulted for names this one lacks (a test's own
    tasks layered over the global registry); `entry_point_group`: where
    installed packages declare tasks (None: nowhere).
    """

    def __init__(
        self,
        *,
        entry_point_group: str | None = ENTRY_POINT_GROUP,
        fallback: TaskRegistry | None = None,
    ) -> None:
        super().__init__(
            "task",
            error=UnknownTask,
            group=entry_point_group,
            convert=_task_definition,
            hint="decorate it with @atriggers.task(name) in a module your process imports",
            fallback=fallback,
        )

    def register(
        self, function: Callable[..., Any], name: str | None = None, *, max_retries: int = 0
    ) -> TaskDefinition:
        """Register `function` as task `name` (default: ``module.qualname``)."""
        if isinstance(function, TaskDefinition):
            return super().register(function, name or function.name)
        if not callable(function):
            raise TypeError(f"a task must be a function taking a TaskContext, not {function!r}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, not {max_retries}")
        name = name or f"{function.__module__}.{function.__qualname__}"
        return super().register(TaskDefinition(name, function, max_retries), name)


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
