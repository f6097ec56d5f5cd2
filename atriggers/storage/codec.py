"""The stored JSON forms of a session's parts, shared by every backend.

A session is stored as four parts, so that a write touches only what changed:
its configuration (one JSON object), its instance counts (one JSON object), the
latest kwargs of each trigger (one JSON object per trigger) and its instances
(one JSON object per instance, see `TaskInstance.to_dict`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._json import dumps, loads
from ..config import TaskConfig
from ..due import Due
from ..instance import TaskInstance
from ..state import Change, SessionState

__all__ = ["ConfigCache", "EncodedChange", "decode_state", "encode_change", "encode_tasks"]


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
    return EncodedChange(
        version=change.version,
        tasks=encode_tasks(change.tasks) if change.tasks is not None else None,
        counts=dumps(change.instance_counts) if change.instance_counts is not None else None,
        triggers=[(name, dumps(kwargs)) for name, kwargs in change.triggers.items()],
        instances=[
            (i.name, i.task_name, i.status.value, i.is_resolved, dumps(i.to_dict())) for i in change.instances
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
    ``(name, json)`` pairs)."""
    decoded: dict[str, TaskInstance] = {}
    for name, text in instances:
        data: dict[str, Any] = loads(text)
        decoded[name] = TaskInstance.from_dict(name, data, tasks.get(data["task"]))
    return SessionState(
        uid=uid,
        version=version,
        tasks=tasks,
        instances=decoded,
        latest_kwargs={name: loads(text) for name, text in triggers},
        instance_counts=loads(counts) if isinstance(counts, str) else dict(counts),
        complete=complete,
    )
