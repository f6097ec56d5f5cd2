"""`Registry`: names to things, the one mechanism behind tasks, runners, managers
and storages.

Lookup order is always the same: what was registered in the process, then the
registry this one is layered over (if any), then the installed packages'
entry-point group. A name found nowhere raises the registry's own `TriggerError`
subclass naming what is known. Nothing is ever imported because a configuration
names it: only entry points that packages declared are loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from .errors import TriggerError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> registered value.

    `kind` names what is registered, in error messages ("runner"). `group` is the
    entry-point group searched for names not registered (None: none). `error`
    is the exception raised for an unknown name. `convert` turns what an entry
    point loads into a value (a class into an instance, say), `name_of` gives
    the default name of a value registered without one, and `hint` ends the
    error message with how to register. `fallback` is a registry consulted
    (with its entry points) for names this one lacks: a test's private
    registry layered over the global one.
    """

    def __init__(
        self,
        kind: str,
        *,
        error: Callable[[str], TriggerError],
        group: str | None = None,
        convert: Callable[[str, object], T] | None = None,
        name_of: Callable[[T], str] | None = None,
        hint: str = "",
        fallback: Registry[T] | None = None,
    ) -> None:
        self.kind = kind
        self.group = group
        self.fallback = fallback
        self._error = error
        self._convert = convert
        self._name_of = name_of
        self._hint = hint
        self._entries: dict[str, T] = {}

    def __repr__(self) -> str:
        return f"<Registry of {self.kind}s: {', '.join(sorted(self._entries)) or 'empty'}>"

    def register(self, value: T, name: str | None = None) -> T:
        """Register `value` under `name` (default: the value's own name); a name
        already taken is replaced. Returns `value`."""
        if name is None:
            if self._name_of is None:
                raise TypeError(f"registering a {self.kind} needs a name")
            name = self._name_of(value)
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"a {self.kind} name must be a non-empty string, not {name!r}")
        self._entries[name] = value
        return value

    def unregister(self, name: str) -> None:
        """Forget `name` (no error if it is not registered)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """The value registered as `name`: registered here, else in `fallback`,
        else declared in the entry-point group (loaded once, then registered)."""
        value = self._entries.get(name)
        if value is not None:
            return value
        if self.fallback is not None:
            return self.fallback.get(name)
        if self.group is not None:
            for ep in entry_points(group=self.group, name=name):
                loaded = ep.load()
                return self.register(self._convert(name, loaded) if self._convert else loaded, name)
        known = sorted({*self._entries, *(self.fallback.names() if self.fallback else ())})
        where = f" or in the {self.group!r} entry-point group" if self.group else ""
        raise self._error(
            f"no {self.kind} registered as {name!r}{where} "
            f"(known: {', '.join(known) or 'none'})" + (f"; {self._hint}" if self._hint else "")
        )

    def names(self) -> list[str]:
        """The names registered in this process (entry points not loaded yet excluded)."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    @contextmanager
    def scoped(self) -> Iterator[Registry[T]]:
        """``with registry.scoped():`` anything registered or unregistered inside
        the block is undone when it ends (for tests)."""
        saved = dict(self._entries)
        try:
            yield self
        finally:
            self._entries.clear()
            self._entries.update(saved)
