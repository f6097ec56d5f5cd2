"""Idempotent fires: a fire given a key is applied once per session.

``await manager.fire(trigger, kwargs, key=KEY)`` stores a record of the key in
the same compare-and-swap write as the fire itself. A fire repeated with the same
key, trigger and kwargs then changes nothing and answers with the instances the
first one scheduled; the same key with another trigger or other kwargs raises
`IdempotencyConflict`. `fire_once` is a rule over a `Draft`, like those of
`atriggers._rules`, so a storage that re-applies an operation under its own lock
(SQLite) re-checks the key there too. (It adds to the key index that a session's
successive snapshots share, rather than copying it: see `FireKeys`.)

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
from collections.abc import Callable, Iterable, Mapping
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import TYPE_CHECKING, Any, NamedTuple

from ._json import check_text, loads, msgspec
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
    "signature",
]

#: Longest key accepted (characters); HTTP clients send UUIDs (36) or similar.
MAX_KEY_LENGTH = 255
#: Seconds a key is remembered after its fire, by default (24 hours).
DEFAULT_KEY_RETENTION = 24 * 3600.0
#: Keys a session remembers at most, by default; a new key then replaces the
#: oldest. Ten thousand keyed fires a day is one every nine seconds, all day, in
#: one session; the key rows are read with the session, so not unbounded.
DEFAULT_MAX_KEYS = 10_000

#: First character of the name of a stored key row (a whitespace character).
KEY_ROW_MARK = "\x1f"
# Slot numbers are written with U+2000..U+2009, ten whitespace characters.
_TO_ROW = str.maketrans("0123456789", "".join(chr(0x2000 + d) for d in range(10)))
_FROM_ROW = str.maketrans("".join(chr(0x2000 + d) for d in range(10)), "0123456789")


def key_row_name(slot: int) -> str:
    """The name of the stored row of key slot `slot`."""
    name = _ROW_NAMES.get(slot)
    if name is None:
        name = _ROW_NAMES[slot] = KEY_ROW_MARK + str(slot).translate(_TO_ROW)
    return name


_ROW_NAMES: dict[int, str] = {}


def is_key_row(name: str) -> bool:
    """Whether a stored triggers row holds a key record (its name is whitespace
    only: no trigger is named so)."""
    return name[:1] == KEY_ROW_MARK and not name.strip()


def _slot_of(name: str) -> int:
    slot = _SLOTS.get(name)
    if slot is None:
        slot = int(name[1:].translate(_FROM_ROW))
        if len(_SLOTS) < _SLOTS_KEPT:  # (row names of slots in use: a few thousand)
            _SLOTS[name] = slot
    return slot


_SLOTS: dict[str, int] = {}
_SLOTS_KEPT = 100_000


def check_key(key: object) -> str:
    """`key` as an idempotency key, or `InvalidInput` saying what is wrong."""
    if not isinstance(key, str):
        raise InvalidInput(f"an idempotency key must be a string, not {type(key).__name__} {key!r}")
    if not key.strip():
        raise InvalidInput(f"an idempotency key must not be empty or blank, not {key!r}")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidInput(
            f"an idempotency key must be at most {MAX_KEY_LENGTH} characters, "
            f"not {len(key)} ({key[:40]!r}...)"
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

#: Canonical kwargs up to this long are their own digest (cheaper than hashing).
_SHORT = 64


class Signature(NamedTuple):
    """What a keyed fire is: its key, its trigger, and a digest of its kwargs
    (their canonical JSON, or its BLAKE2b hash when longer than 64 characters)."""

    key: str
    trigger: str
    digest: str


def signature(key: object, trigger: str, kwargs: Mapping[str, Any]) -> Signature:
    """The signature of a fire with idempotency key `key` (checked here:
    `InvalidInput` if it is not one); `kwargs` are already checked."""
    if not (type(key) is str and 0 < len(key) <= MAX_KEY_LENGTH and key.isascii() and not key.isspace()):
        key = check_key(key)  # the rare key: not ASCII, or not a key at all (raises)
    if _sorted_encode is None:  # pragma: no cover - CPython has the C encoder
        text = json.dumps(kwargs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    else:
        text = "".join(_sorted_encode(kwargs, 0))
    if len(text) > _SHORT:
        # Canonical JSON starts with "{": a hash cannot be mistaken for it.
        text = "b2:" + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
    return Signature(key, trigger, text)


class FireKey(NamedTuple):
    """A stored key: what the first fire with it was and what it scheduled.
    (A named tuple: one is built, and stored as a JSON array, per keyed fire.)"""

    key: str
    trigger: str
    #: `Signature.digest` of the first fire's kwargs.
    digest: str
    #: When that fire was stored: epoch milliseconds, the storage's clock.
    at: int
    #: Names of the instances it scheduled (none for a delayed fire).
    instances: tuple[str, ...]
    #: Order among the session's keys (stored), and where it is stored (the row).
    seq: int
    slot: int


class FireKeys:
    """The keys a session holds, as of one snapshot (`SessionState.fire_keys`).

    A keyed fire must cost the same however many keys the session holds, so the
    snapshots of a session that follow one another in a process share one index
    (key -> record and slot -> record), each seeing only the records older than
    its `next_seq`; a fire adds to it instead of copying it. Only the newest
    snapshot of a session is ever written from, and that is safe even when the
    index is ahead of the stored state (a write that did not land): a fire that
    finds its key changes nothing, which `TriggerManager` confirms on a fresh
    read, and one that does not find it writes with compare-and-swap. A snapshot
    read from storage builds an index of its own.
    """

    __slots__ = ("_held", "next_seq", "oldest_at")

    # `_held` holds the records in the order they were made (by `seq`): pruning
    # walks it from the oldest and stops at the first record still kept.

    def __init__(
        self, held: dict[str | int, FireKey] | None = None, next_seq: int = 0, oldest_at: float = float("inf")
    ) -> None:
        # Each record twice: under its key (a str) and under its slot (an int).
        self._held: dict[str | int, FireKey] = held if held is not None else {}
        #: The next record's `FireKey.seq`.
        self.next_seq = next_seq
        #: No record is older than this (a lower bound: a pruning pass makes it exact).
        self.oldest_at = oldest_at

    def get(self, key: str) -> FireKey | None:
        """The record of `key`, expired or not."""
        record = self._held.get(key)
        return record if record is not None and record.seq < self.next_seq else None

    def at_slot(self, slot: int) -> FireKey | None:
        record = self._held.get(slot)
        return record if record is not None and record.seq < self.next_seq else None

    def records(self) -> list[FireKey]:
        """Every record, oldest first."""
        found = [r for k, r in self._held.items() if isinstance(k, str) and r.seq < self.next_seq]
        found.sort(key=lambda r: r.seq)
        return found

    def __len__(self) -> int:
        return len(self.records())

    def __repr__(self) -> str:
        return f"<FireKeys {len(self)} held, next seq {self.next_seq}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FireKeys):
            return NotImplemented
        return self.next_seq == other.next_seq and self.records() == other.records()

    def __hash__(self) -> int:
        return hash(self.next_seq)


NO_KEYS = FireKeys()


def encode_row(record: FireKey | None) -> str:
    """The stored JSON of a key slot: ``[key, trigger, digest, at, instances,
    seq]``, or ``{}`` for an empty slot."""
    if record is None:
        return "{}"
    # As `dumps(record[:6])` would write it, at a third of the cost (one per keyed fire).
    key, trigger, digest, at, instances, seq, _ = record
    text = encode_basestring
    names = ",".join(map(text, instances))
    return f"[{text(key)},{text(trigger)},{text(digest)},{at},[{names}],{seq}]"


def decode_rows(rows: Iterable[tuple[str, str]]) -> FireKeys:
    """The keys of stored key rows (``(name, json)``); a malformed row raises
    ValueError (the codec reports the session as corrupt)."""
    by_key: dict[str, FireKey] = {}
    next_seq = 0
    oldest = float("inf")
    for name, text in rows:
        parsed = None if text == "{}" else _parse_record(name, text)
        if parsed is None:
            continue  # an empty slot
        key, trigger, digest, at, instances, seq = parsed
        record = _new_tuple(FireKey, (key, trigger, digest, at, instances, seq, _slot_of(name)))
        next_seq = max(next_seq, seq + 1)
        oldest = min(oldest, at)
        known = by_key.get(key)
        if known is None or known.seq < seq:
            by_key[key] = record
    held: dict[str | int, FireKey] = {}
    # In the order they were made, as `fire_once` keeps them (it prunes oldest first).
    for record in sorted(by_key.values(), key=_seq_of):
        held[record.key] = held[record.slot] = record
    return FireKeys(held, next_seq, oldest)


def _seq_of(record: FireKey) -> int:
    return record.seq


#: A stored key record: key, trigger, digest, at, instances, seq.
_Record = tuple[str, str, str, int, tuple[str, ...], int]


def _parse_record_generic(name: str, text: str) -> _Record | None:
    """The record of a key row (None: an empty slot), or ValueError."""
    data = loads(text)
    if not data:
        return None
    if isinstance(data, list) and len(data) == 6:
        key, trigger, digest, at, instances, seq = data
        if (
            isinstance(key, str)
            and isinstance(trigger, str)
            and isinstance(digest, str)
            and type(at) is int
            and type(seq) is int
            and isinstance(instances, list)
            and all(isinstance(n, str) for n in instances)
        ):
            return key, trigger, digest, at, tuple(instances), seq
    raise ValueError(f"key slot {_slot_of(name)} is not a key record: {text[:100]!r}")


if msgspec is not None:
    # A record checked field by field in C: a session read with it may hold
    # thousands of keys (a third of the cost of parsing, then checking in Python).
    _decode_record = msgspec.json.Decoder(_Record).decode

    def _parse_record(name: str, text: str) -> _Record | None:
        try:
            return _decode_record(text)
        except (msgspec.DecodeError, UnicodeEncodeError):
            return _parse_record_generic(name, text)  # (the same record, or the same error)

else:  # pragma: no cover - depends on the installation
    _parse_record = _parse_record_generic


# -- the rule -------------------------------------------------------------------------

_new_tuple = tuple.__new__
_new_object = object.__new__


class Fired(NamedTuple):
    """What a keyed fire did: it was new (`instances` it scheduled) or it
    `repeated` a stored one (`names` of the instances the first one scheduled)."""

    instances: list[TaskInstance]
    repeated: bool = False
    names: tuple[str, ...] = ()


def _conflict(record: FireKey, signature: Signature) -> IdempotencyConflict:
    if record.trigger != signature.trigger:
        return IdempotencyConflict(
            signature.key,
            "trigger",
            f"idempotency key {signature.key!r} was used for trigger {record.trigger!r}, "
            f"not {signature.trigger!r}: nothing was written",
        )
    return IdempotencyConflict(
        signature.key,
        "kwargs",
        f"idempotency key {signature.key!r} was used for trigger {record.trigger!r} with "
        f"other kwargs: nothing was written",
    )


def fire_once(
    draft: Draft,
    signature: Signature,
    fire: Callable[[Draft], list[TaskInstance]],
    retention: int,
    max_keys: int,
) -> Fired:
    """Apply `fire` to `draft` unless the key of `signature` is held (for
    `retention` milliseconds): then change nothing. Raises `IdempotencyConflict`
    if it is held for another fire. A new key is recorded in the draft, so that
    it is stored with the fire; the session keeps at most `max_keys`."""
    keys = draft.fire_keys
    now = int(draft.at * 1000)
    held, next_seq = keys._held, keys.next_seq  # (`get` and `at_slot`, inlined: hot)
    found = held.get(signature.key)
    if found is not None and found.seq >= next_seq:
        found = None
    if found is not None:
        if found.at + retention > now:
            if found.trigger == signature.trigger and found.digest == signature.digest:
                return Fired([], True, found.instances)
            raise _conflict(found, signature)
        dropped = [found]  # the same key, forgotten: its old row goes
    else:
        dropped = []
    ready = fire(draft)
    seq = next_seq
    slot = seq % max_keys
    occupant = held.get(slot)
    if occupant is not None and occupant is not found and occupant.seq < next_seq:
        dropped.append(occupant)  # the oldest key, when the session holds max_keys
    oldest = keys.oldest_at
    if oldest + retention <= now:
        # Some record expired: blank the expired rows, oldest first, up to the
        # first record still kept. The index holds its records in the order they
        # were made (a key is added last, after its old record is deleted), so
        # this costs what expired, not a pass over every key. (A record made
        # later but stamped earlier, by a process whose clock lags, is blanked
        # on a later pass: kept a little longer, never less.)
        oldest = now
        for name, record in held.items():
            if type(name) is not str or record.seq >= next_seq or record is occupant:
                continue
            if record.at + retention > now:
                oldest = record.at
                break
            if record is not found:
                dropped.append(record)
    elif oldest > now:
        oldest = now
    names = tuple([i.name for i in ready]) if ready else ()
    if not held:
        held = {}  # an empty index may be `NO_KEYS`'s, which every new session shares
    added = _new_tuple(FireKey, (signature.key, signature.trigger, signature.digest, now, names, seq, slot))
    # The index and the rows to write: `added` replaces `dropped`.
    rows: dict[int, FireKey | None] = {}
    for record in dropped:
        rows[record.slot] = None
        if held.get(record.key) is record:
            del held[record.key]
        if held.get(record.slot) is record:
            del held[record.slot]
    rows[slot] = held[signature.key] = held[slot] = added
    updated = _new_object(FireKeys)  # (without __init__: once per keyed fire)
    updated._held, updated.next_seq, updated.oldest_at = held, seq + 1, oldest
    draft.fire_keys = updated
    if draft.key_rows:
        draft.key_rows.update(rows)
    else:
        draft.key_rows = rows
    return _new_tuple(Fired, (ready, False, ()))  # (without __new__: once per keyed fire)
