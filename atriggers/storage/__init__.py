"""Where sessions live: the `Storage` base class and its backends."""

from typing import TYPE_CHECKING

from ..state import Change, SessionState
from .base import Reapply, Storage, VersionConflict
from .cache import SnapshotCache
from .codec import ConfigCache, EncodedChange, decode_state, encode_change, encode_tasks
from .index import SessionCounts, SessionFilter, SessionPage, SessionSummary, summarize
from .locks import SessionLocks
from .memory import MemoryStorage
from .registry import StorageFactory, open_storage, register_storage, storages
from .runs import RunTracker
from .sqlite import SQLiteStorage

if TYPE_CHECKING:
    from .postgres import PostgresStorage as PostgresStorage
    from .redis import RedisStorage as RedisStorage

__all__ = [
    # Backends and how to open them by URL.
    "MemoryStorage",
    "SQLiteStorage",
    "RedisStorage",
    "PostgresStorage",
    "open_storage",
    "register_storage",
    "storages",
    "StorageFactory",
    # What a backend author implements and works with.
    "Storage",
    "VersionConflict",
    "Change",
    "SessionState",
    "Reapply",
    "ConfigCache",
    "EncodedChange",
    "decode_state",
    "encode_change",
    "encode_tasks",
    # The session index each backend keeps.
    "SessionCounts",
    "SessionFilter",
    "SessionPage",
    "SessionSummary",
    "summarize",
    # The machinery the base class owns.
    "RunTracker",
    "SessionLocks",
    "SnapshotCache",
]


def __getattr__(name: str) -> object:
    # Imported on first use only: `import atriggers.storage` must work without
    # the redis and postgres extras.
    if name == "RedisStorage":
        from .redis import RedisStorage

        return RedisStorage
    if name == "PostgresStorage":
        from .postgres import PostgresStorage

        return PostgresStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
