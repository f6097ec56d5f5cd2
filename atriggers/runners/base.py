"""The runner plug-in point, and the registry that finds runners by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, ClassVar, TypeVar

from ..errors import UnknownRunner

if TYPE_CHECKING:
    from ..instance import TaskInstance
    from ..manager import TriggerManager

__all__ = ["ENTRY_POINT_GROUP", "BaseRunner", "get_runner", "register_runner", "unregister_runner"]

#: Entry-point group for runners: ``name = "pkg.module:RunnerClass"`` (built with
#: no arguments) or ``"pkg.module:runner_instance"``.
ENTRY_POINT_GROUP = "atriggers.runners"


class BaseRunner(ABC):
    """Starts task instances somewhere: in this process, a queue, a function.

    `run` is called once per instance, after its move to ``scheduled`` is stored.
    It should hand the instance over and return quickly; whatever executes it then
    calls ``await manager.run_instance(instance.name)`` (in-process) or rebuilds a
    manager from the session's storage URL and uid (remote workers) and does the
    same. If `run` raises, the instance is stored as ``failed`` with the error.
    `aclose` releases the runner's resources at shutdown.

    `atriggers.testing.conformance.RunnerConformance` checks a runner against
    this contract.
    """

    #: The name configurations use in ``using``.
    name: ClassVar[str]

    @abstractmethod
    async def run(self, manager: TriggerManager, instance: TaskInstance) -> None:
        """Dispatch `instance`; honour ``instance.cooldown`` (seconds) if possible."""

    async def aclose(self) -> None:
        """Release what the runner holds open (broker connections, clients).

        Called when the application that dispatches shuts down; it does not
        wait for instances already handed over, which belong to wherever they
        run. A runner may be used again after `aclose` (it reopens what it
        needs) and `aclose` may be awaited more than once. Does nothing by
        default: override it when the runner keeps resources between calls.
        """


_runners: dict[str, BaseRunner] = {}

R = TypeVar("R", bound=BaseRunner)


def register_runner(runner: R, name: str | None = None) -> R:
    """Make `runner` available under `name` (default: ``runner.name``)."""
    if not isinstance(runner, BaseRunner):
        raise TypeError(f"register a BaseRunner instance, not {runner!r}")
    _runners[name or runner.name] = runner
    return runner


def unregister_runner(name: str) -> None:
    _runners.pop(name, None)


def get_runner(name: str) -> BaseRunner:
    """The runner registered under `name`, loading entry points on first use."""
    runner = _runners.get(name)
    if runner is not None:
        return runner
    if name == "asyncio":
        from .inprocess import AsyncioRunner

        return register_runner(AsyncioRunner())
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=name):
        loaded = ep.load()
        made: BaseRunner = loaded() if isinstance(loaded, type) else loaded
        return register_runner(made, name)
    known = ", ".join(sorted({*_runners, "asyncio"}))
    raise UnknownRunner(
        f"no runner registered as {name!r} (known: {known}); register one with "
        f"atriggers.runners.register_runner() or the {ENTRY_POINT_GROUP!r} entry-point group"
    )
