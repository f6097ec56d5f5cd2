"""Where task instances run: the `BaseRunner` plug-in point and its registry."""

from .base import BaseRunner, get_runner, register_runner, unregister_runner
from .inprocess import AsyncioRunner

__all__ = ["AsyncioRunner", "BaseRunner", "get_runner", "register_runner", "unregister_runner"]
