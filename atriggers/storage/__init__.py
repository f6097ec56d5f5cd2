"""Where sessions live: the `Storage` base class and its backends."""

from typing import TYPE_CHECKING

from .base import SessionLocks, Storage, VersionConflict
from .memory import MemoryStorage
from .registry import open_storage, register_storage
from .sqlite import SQLiteStorage

if TYPE_CHECKING:
    from .redis import RedisStorage as RedisStorage

__all__ = [
    "MemoryStorage",
    "SQLiteStorage",
    "SessionLocks",
    "Storage",
    "VersionConflict",
    "open_storage",
    "register_storage",
]


def __getattr__(name: str) -> object:
    # Imported on first use only: `import atriggers.storage` must work without
    # the redis extra.
    if name == "RedisStorage":
        from .redis import RedisStorage

        return RedisStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
