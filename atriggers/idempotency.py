"""Idempotent fires: a fire given a key is applied once per session.

``await manager.fire(trigger, kwargs, key=KEY)`` stores a record of the key in
the same compare-and-swap write as the fire itself. A fire repeated with the same
key, trigger and kwargs then changes nothing and answers with the instances the
first one scheduled; the same key with another trigger or other kwargs raises
`IdempotencyConflict`. Everything here is a pure function over a snapshot (or a
`Draft`), so a storage that re-applies an operation under its own lock (SQLite)
re-checks the key there too.

Records are kept for `DEFAULT_KEY_RETENTION` seconds and at most
`DEFAULT_MAX_KEYS` per session (both are `TriggerManager` settings). They live in
slots ``0 .. max_keys - 1`` filled in turn, so that the record a new key replaces
once the session is full is the oldest one; records older than the retention are
blanked by the session's next keyed fire.

How they are stored: each slot is a row of the session's *triggers* part (the
latest kwargs, one JSON object per trigger, which every backend reads with the
session and writes in the same atomic write) under a name no trigger can have:
`KEY_ROW_MARK` followed by the slot number written in whitespace digits, a name
made only of whitespace, which trigger and task names never are. `atriggers.storage.codec`
turns `Change.keys` into such rows and such rows back into `SessionState.fire_keys`:
a backend built on the codec stores keys without a line of its own.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._json import check_text, dumps, loads
from .errors import IdempotencyConflict, InvalidInput

if TYPE_CHECKING:
    from .instance import TaskInstance
    from .state import Draft

__all__ = [
    "DEFAULT_KEY_RETENTION",
    "DEFAULT_MAX_KEYS",
    "KEY_ROW_MARK",
    "MAX_KEY_LENGTH",
    "NO_KEYS",
    "FireKey",
    "FireKeys",
    "Fired",
    "Signature",
    "check_key",
    "decode_rows",
    "encode_row",
    "fire_once",
    "is_key_row",
    "key_row_name",
]

#: Longest key accepted (characters); HTTP clients send UUIDs (36) or similar.
MAX_KEY_LENGTH = 255
#: Seconds a key is remembered after its fire, by default (24 hours).
DEFAULT_KEY_RETENTION = 24 * 3600.0
#: Keys a session remembers at most, by default; a new key then replaces the oldest.
DEFAULT_MAX_KEYS = 1000

#: First character of the name of a stored key row (a whitespace character).
KEY_ROW_MARK = "\x1f"
# Slot numbers are written with U+2000..U+2009, ten whitespace characters.
_TO_ROW = str.maketrans("0123456789", "".join(chr(0x2000 + d) for d in range(10)))
_FROM_ROW = str.maketrans("".join(chr(0x2000 + d) for d in range(10)), "0123456789")


def key_row_name(slot: int) -> str:
    """The name of the stored row of key slot `slot`."""
    return KEY_ROW_MARK + str(slot).translate(_TO_ROW)


def is_key_row(name: str) -> bool:
    """Whether a stored triggers row holds a key record (its name is whitespace
    only: no trigger is named so)."""
    return name[:1] == KEY_ROW_MARK and not name.strip()


def _slot_of(name: str) -> int:
    return int(name[1:].translate(_FROM_ROW))


def check_key(key: object) -> str:
    """`key` as an idempotency key, or `InvalidInput` saying what is wrong."""
    if not isinstance(key, str):
        raise InvalidInput(f"an idempotency key must be a string, not {type(key).__name__} {key!r}")
    if not key.strip():
        raise InvalidInput(f"an idempotency key must not be empty or blank, not {key!r}")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidInput(
            f"an idempotency key must be at most {MAX_KEY_LENGTH} characters, not {len(key)} ({key[:40]!r}...)"
        )
    check_text(key, "idempotency key")
    return key


# Kwargs in a canonical form (keys sorted), so that the same kwargs built in
# another order are the same fire. Built once, as in `atriggers._json`.
_sorted_encode = (
    c_make_encoder(None, None, encode_basestring, None, ":", ",", True, False, False)
    if c_make_encoder is not None
    else None
)


def _canonical(kwargs: Mapping[str, Any]) -> str:
    if _sorted_encode is None:  # pragma: no cover - CPython has the C encoder
        return json.dumps(kwargs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "".join(_sorted_encode(kwargs, 0))


@dataclass(frozen=True, slots=True)
class Signature:
    """What a keyed fire is: its key, trigger, and a digest of its kwargs."""

    key: str
    trigger: str
    digest: str

    @classmethod
    def of(cls, key: str, trigger: str, kwargs: Mapping[str, Any]) -> Signature:
        """(`kwargs` already checked as a JSON object.)"""
        digest = hashlib.blake2b(_canonical(kwargs).encode(), digest_size=16).hexdigest()
        return cls(key, trigger, digest)


@dataclass(frozen=True, slots=True)
class FireKey:
    """A stored key: what the first fire with it was and what it scheduled."""

    key: str
    trigger: str
    #: Digest of the first fire's kwargs (`Signature.digest`).
    digest: str
    #: When that fire was stored (epoch seconds, the storage's clock).
    at: float
    #: Names of the instances it scheduled (none for a delayed fire).
    instances: tuple[str, ...]
    #: Order among the session's keys, and where the record is stored.
    seq: int
    slot: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "trigger": self.trigger,
            "digest": self.digest,
            "at": self.at,
            "instances": list(self.instances),
            "seq": self.seq,
        }


K = TypeVar("K")
V = TypeVar("V")


class _Layered(Generic[K, V]):
    """An immutable mapping: a base shared with older versions plus a small delta
    (None: removed). An update copies only the delta, and folds it into a new
    base once it grows, so a keyed fire costs O(1) however many keys are held."""

    __slots__ = ("_base", "_delta")
    _FOLD = 64

    def __init__(self, base: dict[K, V], delta: dict[K, V | None] | None = None) -> None:
        self._base = base
        self._delta: dict[K, V | None] = delta or {}

    def get(self, key: K) -> V | None:
        delta = self._delta
        if key in delta:
            return delta[key]
        return self._base.get(key)

    def items(self) -> Iterator[tuple[K, V]]:
        delta = self._delta
        for key, value in self._base.items():
            if key not in delta:
                yield key, value
        for key, maybe in delta.items():
            if maybe is not None:
                yield key, maybe

    def updated(self, changes: dict[K, V | None]) -> _Layered[K, V]:
        delta = {**self._delta, **changes}
        if len(delta) <= self._FOLD:
            return _Layered(self._base, delta)
        return _Layered(dict(_Layered(self._base, delta).items()))


class FireKeys:
    """The keys a session holds (immutable; `SessionState.fire_keys`)."""

    __slots__ = ("_by_key", "_by_slot", "next_seq", "oldest_at")

    def __init__(
        self,
        by_key: _Layered[str, FireKey] | None = None,
        by_slot: _Layered[int, str] | None = None,
        next_seq: int = 0,
        oldest_at: float = float("inf"),
    ) -> None:
        self._by_key: _Layered[str, FireKey] = by_key if by_key is not None else _Layered({})
        self._by_slot: _Layered[int, str] = by_slot if by_slot is not None else _Layered({})
        #: The next record's `FireKey.seq`.
        self.next_seq = next_seq
        #: No record is older than this (a lower bound: a pruning pass makes it exact).
        self.oldest_at = oldest_at

    def get(self, key: str) -> FireKey | None:
        """The record of `key`, expired or not."""
        return self._by_key.get(key)

    def records(self) -> Iterator[FireKey]:
        return (record for _, record in self._by_key.items())

    def __len__(self) -> int:
        return sum(1 for _ in self._by_key.items())

    def __repr__(self) -> str:
        return f"<FireKeys {len(self)} held, next seq {self.next_seq}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FireKeys):
            return NotImplemented
        return self.next_seq == other.next_seq and dict(self._by_key.items()) == dict(other._by_key.items())

    def __hash__(self) -> int:
        return hash(self.next_seq)

    def at_slot(self, slot: int) -> FireKey | None:
        key = self._by_slot.get(slot)
        return self._by_key.get(key) if key is not None else None

    def updated(
        self, dropped: Iterable[FireKey], added: FireKey, oldest_at: float
    ) -> tuple[FireKeys, dict[int, FireKey | None]]:
        """These keys without `dropped` and with `added`, and the rows to write."""
        rows: dict[int, FireKey | None] = {}
        by_key: dict[str, FireKey | None] = {}
        by_slot: dict[int, str | None] = {}
        for record in dropped:
            rows[record.slot] = None
            by_key[record.key] = None
            by_slot[record.slot] = None
        rows[added.slot] = added
        by_key[added.key] = added
        by_slot[added.slot] = added.key
        keys = FireKeys(
            self._by_key.updated(by_key), self._by_slot.updated(by_slot), added.seq + 1, oldest_at
        )
        return keys, rows


NO_KEYS = FireKeys()


def encode_row(record: FireKey | None) -> str:
    """The stored JSON of a key slot (``{}``: an empty slot)."""
    return dumps(record.to_dict()) if record is not None else "{}"


def decode_rows(rows: Iterable[tuple[str, str]]) -> FireKeys:
    """The keys of stored key rows (``(name, json)``); a malformed row raises
    ValueError, KeyError or TypeError (the codec reports the session as corrupt)."""
    by_key: dict[str, FireKey] = {}
    next_seq = 0
    oldest = float("inf")
    for name, text in rows:
        data = loads(text)
        if not data:
            continue  # an empty slot
        record = FireKey(
            key=str(data["key"]),
            trigger=str(data["trigger"]),
            digest=str(data["digest"]),
            at=float(data["at"]),
            instances=tuple(str(n) for n in data["instances"]),
            seq=int(data["seq"]),
            slot=_slot_of(name),
        )
        next_seq = max(next_seq, record.seq + 1)
        oldest = min(oldest, record.at)
        known = by_key.get(record.key)
        if known is None or known.seq < record.seq:
            by_key[record.key] = record
    by_slot = {record.slot: record.key for record in by_key.values()}
    return FireKeys(_Layered(by_key), _Layered(by_slot), next_seq, oldest)


# -- the rule -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fired:
    """What a keyed fire did: it was new (`instances` it scheduled) or it
    `repeated` a stored one (`names` of the instances the first one scheduled)."""

    instances: list[TaskInstance]
    repeated: bool = False
    names: tuple[str, ...] = ()


def _find(keys: FireKeys, signature: Signature, now: float, retention: float) -> FireKey | None:
    record = keys.get(signature.key)
    if record is None or record.at + retention <= now:
        return None  # never seen, or forgotten
    if record.trigger != signature.trigger:
        raise IdempotencyConflict(
            signature.key,
            "trigger",
            f"idempotency key {signature.key!r} was used for trigger {record.trigger!r}, "
            f"not {signature.trigger!r}: nothing was written",
        )
    if record.digest != signature.digest:
        raise IdempotencyConflict(
            signature.key,
            "kwargs",
            f"idempotency key {signature.key!r} was used for trigger {record.trigger!r} with "
            f"other kwargs: nothing was written",
        )
    return record


def fire_once(
    draft: Draft,
    signature: Signature,
    apply: Callable[[], list[TaskInstance]],
    *,
    retention: float = DEFAULT_KEY_RETENTION,
    max_keys: int = DEFAULT_MAX_KEYS,
) -> Fired:
    """Apply a fire (`apply`) to `draft` unless its key is already held: then
    change nothing. Raises `IdempotencyConflict` if the key is held for another
    fire. A new key is recorded in the draft, so it is stored with the fire."""
    keys = draft.fire_keys
    now = draft.at
    found = _find(keys, signature, now, retention)
    if found is not None:
        return Fired([], repeated=True, names=found.instances)
    ready = apply()
    seq = keys.next_seq
    slot = seq % max_keys
    dropped: dict[str, FireKey] = {}
    old = keys.get(signature.key)
    if old is not None:  # the same key, expired: its old row goes
        dropped[old.key] = old
    occupant = keys.at_slot(slot)
    if occupant is not None:  # the oldest key, when the session holds max_keys
        dropped[occupant.key] = occupant
    oldest = keys.oldest_at
    if oldest + retention <= now:
        # Some record expired: blank every expired row (a pass over the keys,
        # needed only when the oldest one expired).
        oldest = now
        for record in keys.records():
            if record.at + retention <= now:
                dropped[record.key] = record
            elif record.key not in dropped:
                oldest = min(oldest, record.at)
    record = FireKey(
        signature.key, signature.trigger, signature.digest, now, tuple(i.name for i in ready), seq, slot
    )
    updated, rows = keys.updated(dropped.values(), record, min(oldest, now))
    draft.set_fire_keys(updated, rows)
    return Fired(ready)
