"""Where task instances run: the `BaseRunner` plug-in point and its registry."""

from .base import BaseRunner, RunnerRegistry, get_runner, register_runner, runners, unregister_runner
from .inprocess import AsyncioRunner

__all__ = [
    "AsyncioRunner",
    "BaseRunner",
    "RunnerRegistry",
    "get_runner",
    "register_runner",
    "runners",
    "unregister_runner",
]

# The embedded default, registered like any other runner (and declared in the
# ``atriggers.runners`` entry-point group, should it be unregistered).
register_runner(AsyncioRunner())
