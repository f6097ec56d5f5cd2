"""The runner plug-in point, and the registry that finds runners by name."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar, TypeVar

from ..errors import UnknownRunner
from ..registry import Registry

if TYPE_CHECKING:
    from ..instance import TaskInstance
    from ..manager import TriggerManager

__all__ = [
    "DEFAULT_START_WITHIN",
    "ENTRY_POINT_GROUP",
    "BaseRunner",
    "RunnerRegistry",
    "get_runner",
    "register_runner",
    "runners",
    "unregister_runner",
]

#: Entry-point group for runners: ``name = "pkg.module:RunnerClass"`` (built with
#: no arguments) or ``"pkg.module:runner_instance"``.
ENTRY_POINT_GROUP = "atriggers.runners"

log = logging.getLogger("atriggers.runners")

#: `BaseRunner.start_within` by default: six hours.
DEFAULT_START_WITHIN = 6 * 3600.0


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
    #: True when instances dispatched to this runner run in the dispatching
    #: process: that process then holds them (under its lease) until they run,
    #: so that they are recovered if it dies first.
    in_process: ClassVar[bool] = False
    #: Seconds an instance handed to this runner may wait to start before it
    #: counts as lost (a message the broker dropped, an event the function
    #: never ran) and gets its ``onLost`` policy: the deadline every instance
    #: held by nobody has, so that any process recovers it. Six hours by
    #: default (longer than brokers keep an unacknowledged message before they
    #: deliver it again); None: no limit, for a queue trusted never to lose a
    #: message. Only for runners that hand instances out of this process:
    #: in-process ones hold them under the process's lease.
    start_within: float | None = DEFAULT_START_WITHIN

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


def _runner_from_entry_point(name: str, loaded: object) -> BaseRunner:
    made = loaded() if isinstance(loaded, type) else loaded
    if not isinstance(made, BaseRunner):
        raise UnknownRunner(f"entry point {name!r} of {ENTRY_POINT_GROUP!r} is not a BaseRunner: {made!r}")
    return made


class RunnerRegistry(Registry[BaseRunner]):
    """Runner name -> runner instance. `fallback`: a registry consulted for names
    this one lacks (give a manager its own runners, layered over the global ones)."""

    def __init__(self, *, fallback: RunnerRegistry | None = None) -> None:
        super().__init__(
            "runner",
            error=UnknownRunner,
            group=ENTRY_POINT_GROUP,
            convert=_runner_from_entry_point,
            name_of=lambda runner: runner.name,
            hint="register one with atriggers.runners.register_runner()",
            fallback=fallback,
        )

    def register(self, value: BaseRunner, name: str | None = None) -> BaseRunner:
        if not isinstance(value, BaseRunner):
            raise TypeError(f"register a BaseRunner instance, not {value!r}")
        return super().register(value, name)

    async def aclose_all(self) -> None:
        """Close every runner registered here (`BaseRunner.aclose`); one that
        fails to close is logged and does not keep the others open."""
        for name in self.names():
            try:
                await self.get(name).aclose()
            except Exception:
                log.exception("closing runner %r failed", name)


#: The runners every manager uses unless given its own (``runners=``).
runners = RunnerRegistry()

R = TypeVar("R", bound=BaseRunner)


def register_runner(runner: R, name: str | None = None) -> R:
    """Make `runner` available under `name` (default: ``runner.name``)."""
    runners.register(runner, name)
    return runner


def unregister_runner(name: str) -> None:
    """Forget the runner registered as `name`."""
    runners.unregister(name)


def get_runner(name: str) -> BaseRunner:
    """The runner registered under `name`, loading entry points on first use."""
    return runners.get(name)
