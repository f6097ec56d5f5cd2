"""Where sessions live: the `Storage` base class and its backends."""

from .base import SessionLocks, Storage, VersionConflict
from .memory import MemoryStorage
from .registry import open_storage, register_storage
from .sqlite import SQLiteStorage

__all__ = [
    "MemoryStorage",
    "SQLiteStorage",
    "SessionLocks",
    "Storage",
    "VersionConflict",
    "open_storage",
    "register_storage",
]
