"""The stored JSON forms of a session's parts, shared by every backend.

A session is stored as four parts, so that a write touches only what changed:
its configuration (one JSON object), its instance counts (one JSON object), the
latest kwargs of each trigger (one JSON object per trigger) and its instances
(one JSON object per instance, see `TaskInstance.to_dict`). The idempotency keys
of its recent keyed fires ride in the triggers part, one row per key slot under
names no trigger can have (see `atriggers.idempotency`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .._json import dumps, dumps_checked, loads, msgspec  # msgspec: None without the ``fast`` extra
from .._table import InstanceTable, Row
from .._tracecontext import TRACE_KEY, traced, untraced
from ..config import TaskConfig
from ..due import Due
from ..errors import StorageError
from ..idempotency import NO_KEYS, decode_rows, encode_row, is_key_row, key_row_name
from ..instance import NO_TRIGGERS, RESOLVED, STATUS_OF, VALUE_OF, Status, TaskInstance
from ..state import Change, SessionState

_R = TypeVar("_R", bound=Row)

__all__ = [
    "ConfigCache",
    "EncodedChange",
    "corrupt",
    "decode_state",
    "decode_tasks",
    "encode_change",
    "encode_tasks",
]


def encode_tasks(tasks: Mapping[str, TaskConfig]) -> str:
    return dumps({name: task.to_dict() for name, task in tasks.items()})


@dataclass(frozen=True, slots=True)
class EncodedChange:
    """A `Change` as the JSON texts a backend writes."""

    version: int
    #: New configuration, or None when unchanged.
    tasks: str | None
    #: New instance counts, or None when unchanged.
    counts: str | None
    #: ``(trigger, kwargs json)`` for each trigger fired.
    triggers: list[tuple[str, str]]
    #: ``(name, task, status, resolved, json)`` for each instance written.
    instances: list[tuple[str, str, str, bool, str]]
    #: ``(key, entry)`` for each due-index entry written (None: deleted).
    due: list[tuple[str, Due | None]] = field(default_factory=list)


def encode_change(change: Change) -> EncodedChange:
    """Encode everything first, so that a backend writes all of it or nothing."""
    # (Everything in a change was checked on the way in: `dumps_checked`.)
    triggers = [(name, dumps_checked(traced(kwargs))) for name, kwargs in change.triggers.items()]
    if change.keys:
        triggers += [(key_row_name(slot), encode_row(record)) for slot, record in change.keys.items()]
    return EncodedChange(
        version=change.state.version,
        tasks=encode_tasks(change.tasks) if change.tasks is not None else None,
        counts=dumps_checked(change.instance_counts) if change.instance_counts is not None else None,
        triggers=triggers,
        instances=[
            (i.name, i.task_name, VALUE_OF[i.status], i.status in RESOLVED, dumps_checked(i.to_dict()))
            for i in change.instances
        ],
        due=list(change.due.items()),
    )


class ConfigCache:
    """Parsed configurations keyed by their JSON text.

    Sessions of one application usually share one configuration: parsing it once
    saves time per load, and memory for every cached session.
    """

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._parsed: OrderedDict[str, Mapping[str, TaskConfig]] = OrderedDict()
        # Backends may decode in a worker thread while the loop decodes too.
        self._lock = threading.Lock()

    def decode(self, text: str) -> Mapping[str, TaskConfig]:
        with self._lock:
            tasks = self._parsed.get(text)
            if tasks is not None:
                self._parsed.move_to_end(text)
                return tasks
        tasks = {name: TaskConfig.from_dict(name, body) for name, body in loads(text).items()}
        with self._lock:
            self._parsed[text] = tasks
            if len(self._parsed) > self._size:
                self._parsed.popitem(last=False)
        return tasks


def decode_state(
    uid: str,
    version: int,
    tasks: Mapping[str, TaskConfig],
    counts: str | Mapping[str, int],
    triggers: Iterable[tuple[str, str]],
    instances: Iterable[tuple[str, str]],
    *,
    complete: bool,
) -> SessionState:
    """Build a snapshot from stored parts (`triggers` and `instances` as
    ``(name, json)`` pairs). Data that does not decode (bad JSON, a wrong shape,
    an unknown status) raises `StorageError` naming the session and the part."""
    decoded: dict[str, TaskInstance] = {}
    texts: dict[str, Any] = {}  # (one or the other is filled)
    part = "instance counts"
    try:
        instance_counts = loads(counts) if isinstance(counts, str) else dict(counts)
        if type(instance_counts) is not dict:
            raise ValueError("not an object of task name -> count")
        for count in instance_counts.values():
            if type(count) is not int:
                raise ValueError("not an object of task name -> count")
        # One instance per unresolved instance of the session: the part is
        # named only if one turns out corrupt.
        part, name = "instance", ""
        config_of = tasks.get
        # A working view keeps each instance as text until a rule asks for its
        # task's instances, then parses them as far as the indexes need, and
        # the rest when a rule asks for the instance itself (see `Undecoded`).
        if complete:
            for name, text in instances:
                decoded[name] = _decode_instance(name, text, config_of)
        else:
            texts = dict(instances)  # (C loops: this read may hold thousands)
            if not set(map(type, texts.values())) <= {str}:
                texts = {name: text if type(text) is str else _as_text(text) for name, text in texts.items()}
        latest: dict[str, Any] = {}
        keys: list[tuple[str, str]] = []
        for name, text in triggers:
            if is_key_row(name):
                keys.append((name, text))
                continue
            part = f"kwargs of trigger {name!r}"
            kwargs = loads(text)
            if not isinstance(kwargs, dict):
                raise ValueError("not a JSON object")
            # The fire's trace context, stored with the kwargs when tracing was on.
            latest[name] = untraced(kwargs) if TRACE_KEY in kwargs else kwargs
        part = "idempotency keys"
        fire_keys = decode_rows(keys) if keys else NO_KEYS
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise corrupt(uid, f"instance {name!r}" if part == "instance" else part, exc) from exc
    return SessionState(
        uid=uid,
        version=version,
        tasks=tasks,
        # A working view is indexed for the rules (once, when a fire first asks).
        instances=decoded if complete else InstanceTable(texts, _Reader(uid, config_of)),
        latest_kwargs=latest,
        instance_counts=instance_counts,
        complete=complete,
        fire_keys=fire_keys,
    )


def _as_text(data: object) -> str:
    # (A backend may hand over bytes: both JSON parsers read them too.)
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data).decode()
    raise TypeError(f"not JSON text but {type(data).__name__}")


class _Reader:
    """Parses the instances of a working view as they are used (`Reader`)."""

    __slots__ = ("config_of", "uid")

    def __init__(self, uid: str, config_of: Callable[[str], TaskConfig | None]) -> None:
        self.uid = uid
        self.config_of = config_of

    def peek(self, name: str, text: str) -> Row:
        try:
            row = _read_instance(self.uid, name, text, self.config_of)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise corrupt(self.uid, f"instance {name!r}", exc) from exc
        return self._named(name, row)

    def decode(self, name: str, text: str) -> TaskInstance:
        try:
            instance = _decode_instance(name, text, self.config_of)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise corrupt(self.uid, f"instance {name!r}", exc) from exc
        return self._named(name, instance)

    def _named(self, name: str, row: _R) -> _R:
        # The table found the row among its task's by its name, ``<task>#<n>``.
        task = name.rpartition("#")[0]
        if row.task_name != task:
            raise corrupt(
                self.uid,
                f"instance {name!r}",
                ValueError(f"its task is {row.task_name!r}, its name says {task!r}"),
            )
        return row


def _decode_generic(name: str, text: str, config_of: Callable[[str], TaskConfig | None]) -> TaskInstance:
    data: dict[str, Any] = loads(text)
    return TaskInstance.from_dict(name, data, config_of(data["task"]))


if msgspec is not None:

    class _Stored(msgspec.Struct):  # type: ignore[misc, unused-ignore]  # (Any when not installed)
        """An instance as stored (`TaskInstance.to_dict`), for msgspec to parse
        straight into fields: a third cheaper than a dict and `from_dict`."""

        task: str
        status: str
        kwargs: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
        abandonState: list[str] = msgspec.field(default_factory=list)  # noqa: N815 - the stored key
        metadata: dict[str, Any] = msgspec.field(default_factory=dict)

    _parse_stored = msgspec.json.Decoder(_Stored).decode

    class _Undecoded(msgspec.Struct, gc=False):  # type: ignore[misc, unused-ignore]
        """A stored instance read as far as the indexes need (see `Undecoded`).
        The JSON is checked whole, its task, status, kwargs (an object) and
        abandon state fully; each trigger's kwargs and the metadata are left as
        text until decoded, and found corrupt only then. Nothing of it is
        tracked by the garbage collector (a cold read would otherwise wake it
        several times): kwargs of `Raw` are atoms, and a struct of
        ``gc=False`` makes no reference cycles."""

        task_name: str = msgspec.field(name="task")
        status: Status
        kwargs: dict[str, msgspec.Raw] = msgspec.field(default_factory=dict)
        abandon_state: frozenset[str] = msgspec.field(default=NO_TRIGGERS, name="abandonState")
        # Set after parsing (what a stored row may say under these names is
        # overwritten, whatever it is).
        name: str = msgspec.field(default="", name="(name)")
        text: str = msgspec.field(default="", name="(text)")
        uid: str = msgspec.field(default="", name="(uid)")
        config: Any = msgspec.field(default=None, name="(config)")

        def decode(self) -> TaskInstance:
            config = self.config
            try:
                return _decode_instance(self.name, self.text, lambda _task: config)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise corrupt(self.uid, f"instance {self.name!r}", exc) from exc

    _parse_undecoded = msgspec.json.Decoder(_Undecoded).decode

    def _read_instance(
        uid: str, name: str, text: str, config_of: Callable[[str], TaskConfig | None]
    ) -> TaskInstance | _Undecoded:
        try:
            row = _parse_undecoded(text)
        except (msgspec.DecodeError, UnicodeEncodeError):
            return _decode_generic(name, text, config_of)  # (as `_decode_instance` does)
        row.name = name
        row.text = text
        row.uid = uid
        row.config = config_of(row.task_name)
        return row

    def _decode_instance(name: str, text: str, config_of: Callable[[str], TaskConfig | None]) -> TaskInstance:
        try:
            row = _parse_stored(text)
        except (msgspec.DecodeError, UnicodeEncodeError):
            # Anything unusual (null kwargs, an abandonState of numbers, NaN,
            # a corrupt row...) takes the general path: the same result, or
            # the same error, as without msgspec.
            return _decode_generic(name, text, config_of)
        status = STATUS_OF.get(row.status)
        if status is None:
            return _decode_generic(name, text, config_of)
        abandon = row.abandonState
        return TaskInstance(
            name,
            row.task,
            status,
            row.kwargs,
            frozenset(abandon) if abandon else NO_TRIGGERS,
            row.metadata,
            config_of(row.task),
        )

else:  # pragma: no cover - depends on the installation
    _decode_instance = _decode_generic

    def _read_instance(
        uid: str, name: str, text: str, config_of: Callable[[str], TaskConfig | None]
    ) -> TaskInstance:
        return _decode_generic(name, text, config_of)


def decode_tasks(configs: ConfigCache, text: str, uid: str) -> Mapping[str, TaskConfig]:
    """A session's stored configuration, or `StorageError` if it is corrupt."""
    try:
        return configs.decode(text)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise corrupt(uid, "configuration", exc) from exc


def corrupt(uid: str, part: str, exc: BaseException) -> StorageError:
    """The error for stored data that cannot be read back."""
    return StorageError(f"session {uid!r}: the stored {part} is corrupt ({type(exc).__name__}: {exc})")
