"""Where a replay would run, and whether it could run there: checked before a
failed instance is used up by a replay that would fail at once."""

from __future__ import annotations

from ..errors import UnknownRunner, UnknownTask
from ..instance import Status
from ..manager import TriggerManager
from ..state import SessionState
from .exits import CommandError, ExitCode

__all__ = ["check_runnable", "replay_target"]


def replay_target(manager: TriggerManager, state: SessionState, name: str, runner: str | None) -> str:
    """The runner a replay of `name` goes to: the task's ``using``, else `runner`
    (``--runner``), else where the failed instance went, else the default."""
    instance = state.instances[name]
    task = state.tasks.get(instance.task_name)
    using = task.using if task is not None else None
    return using or runner or instance.runner or manager.default_runner


def check_runnable(
    manager: TriggerManager, state: SessionState, names: list[str], runner: str | None
) -> None:
    """Refuse (before anything is written) replays that would fail at once in
    this process: an unknown runner, or an in-process runner for a task this
    process has not registered (``--import`` its module)."""
    for name in names:
        instance = state.instances.get(name)
        if instance is None or instance.status is not Status.FAILED:
            continue  # the replay itself says what is wrong
        target = replay_target(manager, state, name, runner)
        try:
            found = manager.runners.get(target)
        except UnknownRunner:
            raise CommandError(
                f"cannot replay {name}: it would go to runner {target!r}, which this process does not "
                f"know (--import the module that registers it, or --runner NAME); nothing was changed",
                ExitCode.USAGE,
            ) from None
        if not found.in_process:
            continue  # run elsewhere: that process's registry decides
        task = state.tasks.get(instance.task_name)
        run = task.run if task is not None else instance.task_name
        try:
            manager.tasks.get(run)
        except UnknownTask:
            raise CommandError(
                f"cannot replay {name}: runner {target!r} would run it in this process, where task "
                f"{run!r} is not registered (--import the module that defines it, or --runner NAME "
                f"to send it elsewhere); nothing was changed",
                ExitCode.USAGE,
            ) from None
