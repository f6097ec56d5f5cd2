"""Storages found by URL scheme: built-in ones, registered ones, entry points."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points

from .base import Storage
from .memory import MemoryStorage
from .sqlite import SQLiteStorage

__all__ = ["ENTRY_POINT_GROUP", "open_storage", "register_storage"]

#: Entry-point group where packages declare storages: ``scheme = "pkg.mod:Class"``;
#: the class needs a ``from_url(url)`` classmethod.
ENTRY_POINT_GROUP = "atriggers.storages"

StorageFactory = Callable[[str], Storage]

_factories: dict[str, StorageFactory] = {
    MemoryStorage.scheme: MemoryStorage.from_url,
    SQLiteStorage.scheme: SQLiteStorage.from_url,
}


def register_storage(scheme: str, factory: StorageFactory) -> None:
    """Make ``open_storage("<scheme>://...")`` call ``factory(url)``."""
    _factories[scheme] = factory


def open_storage(url: str) -> Storage:
    """The storage a URL names, to use as ``async with open_storage(url) as s``.

    ``memory://``, ``sqlite:///relative/path``, ``sqlite:////absolute/path``, and
    any scheme registered with `register_storage` or the ``atriggers.storages``
    entry-point group (``redis://`` with the ``redis`` extra).
    """
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(f"storage URL must look like scheme://..., not {url!r}")
    scheme = url.split("://", 1)[0].lower()
    factory = _factories.get(scheme)
    if factory is None:
        for ep in entry_points(group=ENTRY_POINT_GROUP, name=scheme):
            factory = _factories[scheme] = ep.load().from_url
            break
    if factory is None:
        known = ", ".join(sorted(_factories))
        raise ValueError(f"no storage for URL scheme {scheme!r} (known: {known})")
    return factory(url)
