"""Storages found by URL scheme: built-in ones, registered ones, entry points."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import UnknownStorage
from ..registry import Registry
from .base import Storage
from .memory import MemoryStorage
from .sqlite import SQLiteStorage

__all__ = ["ENTRY_POINT_GROUP", "StorageFactory", "open_storage", "register_storage", "storages"]

#: Entry-point group where packages declare storages: ``scheme = "pkg.mod:Class"``;
#: the class needs a ``from_url(url)`` classmethod.
ENTRY_POINT_GROUP = "atriggers.storages"

#: Builds a storage from its URL (a `Storage` subclass's ``from_url``).
StorageFactory = Callable[[str], Storage]


def _factory(scheme: str, loaded: object) -> StorageFactory:
    if not (isinstance(loaded, type) and issubclass(loaded, Storage)):
        raise UnknownStorage(f"entry point {scheme!r} of {ENTRY_POINT_GROUP!r} is not a Storage class")
    return loaded.from_url


#: URL scheme -> factory.
storages: Registry[StorageFactory] = Registry(
    "storage URL scheme",
    error=UnknownStorage,
    group=ENTRY_POINT_GROUP,
    convert=_factory,
    hint="install the backend's extra, or call atriggers.storage.register_storage()",
)
storages.register(MemoryStorage.from_url, MemoryStorage.scheme)
storages.register(SQLiteStorage.from_url, SQLiteStorage.scheme)


def register_storage(scheme: str, factory: StorageFactory) -> None:
    """Make ``open_storage("<scheme>://...")`` call ``factory(url)``."""
    storages.register(factory, scheme)


def open_storage(url: str) -> Storage:
    """The storage a URL names, to use as ``async with open_storage(url) as s``.

    ``memory://``, ``sqlite:///relative/path``, ``sqlite:////absolute/path``, and
    any scheme registered with `register_storage` or the ``atriggers.storages``
    entry-point group (``redis://`` with the ``redis`` extra, ``postgresql://`` and
    ``postgres://`` with the ``postgres`` extra). An unknown scheme raises
    `UnknownStorage` (a ``ValueError``).
    """
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(f"storage URL must look like scheme://..., not {url!r}")
    scheme = url.split("://", 1)[0].lower()
    return storages.get(scheme)(url)
