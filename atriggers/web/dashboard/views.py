"""What the pages show, worked out from sessions and summaries: pure functions,
no I/O, no HTML (the templates escape everything they are given)."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ...clock import from_iso
from ...graph import STATUS_PRIORITY
from ...instance import Meta, Status, TaskInstance
from ...state import SessionState
from ...storage.index import SessionSummary

__all__ = [
    "InstanceView",
    "SessionRow",
    "Stamp",
    "duration",
    "instance_views",
    "pretty_json",
    "session_row",
    "utc_text",
    "visible",
]

#: Statuses an operator may set on a stuck (scheduled or running) instance.
SETTABLE: tuple[str, ...] = tuple(s.value for s in STATUS_PRIORITY)

#: Unicode categories shown as escapes: controls, format characters (bidi
#: overrides, zero-width joiners...), line and paragraph separators, unassigned.
_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def visible(text: str) -> str:
    """`text` with every invisible or direction-changing character written as an
    escape (``\\u202e``), so that a uid or name cannot disguise itself."""
    if text.isprintable() and text.isascii():
        return text
    return "".join(
        (f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}")
        if unicodedata.category(c) in _HIDDEN and c not in "\n\t"
        else c
        for c in text
    )


def _json_escape(c: str) -> str:
    code = ord(c)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    high, low = divmod(code - 0x10000, 0x400)
    return f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04x}"


def pretty_json(value: Any) -> str:
    """Indented JSON with keys sorted, that reads back as `value`: invisible
    characters (see `visible`) written as JSON escapes."""
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    if text.isascii():
        return text
    # Only the newlines of the indentation are left: json.dumps escaped the rest.
    return "".join(_json_escape(c) if c != "\n" and unicodedata.category(c) in _HIDDEN else c for c in text)


def utc_text(when: float | None) -> str:
    """``2026-12-07 04:01:02.123 UTC`` (times are shown in UTC, and say so)."""
    if when is None:
        return "-"
    stamp = datetime.fromtimestamp(when, UTC)
    return stamp.strftime("%Y-%m-%d %H:%M:%S.") + f"{stamp.microsecond // 1000:03d} UTC"


def duration(seconds: float) -> str:
    """A short human duration: ``850 ms``, ``4.2 s``, ``3 min 5 s``, ``2 h 10 min``, ``3 d 4 h``."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


@dataclass(frozen=True, slots=True)
class Stamp:
    """One timestamp of an instance: what happened, when, and how long ago."""

    label: str
    iso: str
    text: str
    ago: str


@dataclass(frozen=True, slots=True)
class InstanceView:
    name: str
    task: str
    status: str
    stamps: tuple[Stamp, ...]
    #: How long it waited to start, and how long it ran (None: not applicable).
    waited: str | None
    ran: str | None
    runner: str | None
    owner: str | None
    parent: str | None
    clones: tuple[str, ...]
    depth: int
    kwargs: str
    result: str | None
    exception_type: str | None
    traceback: str | None
    exception_context: str | None
    log_level: str | None
    logs_resolved: bool
    metadata: str
    can_replay: bool
    can_skip: bool
    #: Scheduled or running: an operator may set its status by hand.
    in_flight: bool
    #: The kwargs a replay starts from, as editable JSON (trigger -> kwargs).
    replay_kwargs: str


#: Metadata shown in sections of their own, left out of "metadata".
_SHOWN_APART = frozenset(
    {Meta.EXCEPTION_TYPE, Meta.EXCEPTION_INFO, Meta.EXCEPTION_CONTEXT, Meta.TIMESTAMPS, Meta.RESULT}
)


def _seconds(stamps: Mapping[str, str], key: str) -> float | None:
    text = stamps.get(key)
    if not isinstance(text, str):
        return None
    try:
        return from_iso(text)
    except ValueError:
        return None


def _view(instance: TaskInstance, clones: Sequence[str], now: float) -> InstanceView:
    meta = instance.metadata
    raw = instance.timestamps
    stamps = []
    for label, text in raw.items():
        at = _seconds(raw, label)
        if at is not None:
            stamps.append(Stamp(label, text, utc_text(at), duration(now - at) + " ago"))
    stamps.sort(key=lambda s: s.iso)
    created = _seconds(raw, Meta.CREATED)
    started = _seconds(raw, Status.RUNNING.value)
    scheduled = _seconds(raw, Status.SCHEDULED.value)
    ended = next(
        (
            at
            for key in (Status.FINISHED.value, Status.FAILED.value, Status.SKIPPED.value)
            if (at := _seconds(raw, key)) is not None and started is not None and at >= started
        ),
        None,
    )
    waited = None
    if started is not None and (scheduled or created) is not None:
        waited = duration(started - (scheduled or created or started))
    ran = None
    if started is not None:
        running = instance.status is Status.RUNNING
        ran = duration((now if running else (ended or started)) - started) + (" so far" if running else "")
    result = instance.result
    level = instance.log_level
    return InstanceView(
        name=instance.name,
        task=instance.task_name,
        status=instance.status.value,
        stamps=tuple(stamps),
        waited=waited,
        ran=ran,
        runner=instance.runner,
        owner=instance.owner,
        parent=instance.parent,
        clones=tuple(clones),
        depth=instance.depth,
        kwargs=pretty_json(instance.kwargs),
        result=pretty_json(result) if result is not None else None,
        exception_type=meta.get(Meta.EXCEPTION_TYPE),
        traceback=visible(str(meta[Meta.EXCEPTION_INFO])) if meta.get(Meta.EXCEPTION_INFO) else None,
        exception_context=pretty_json(meta[Meta.EXCEPTION_CONTEXT])
        if meta.get(Meta.EXCEPTION_CONTEXT)
        else None,
        log_level=instance.log_level_name if level else None,
        logs_resolved=instance.logs_resolved,
        metadata=pretty_json({k: v for k, v in meta.items() if k not in _SHOWN_APART}),
        can_replay=instance.can_replay,
        can_skip=instance.can_skip,
        in_flight=instance.status in (Status.SCHEDULED, Status.RUNNING),
        replay_kwargs=pretty_json(instance.kwargs),
    )


def instance_views(state: SessionState, now: float) -> list[InstanceView]:
    """The session's instances in configuration order, each with its clones
    (the instances whose ``parent`` it is)."""
    clones: dict[str, list[str]] = {}
    for instance in state.instances.values():
        if instance.parent is not None:
            clones.setdefault(instance.parent, []).append(instance.name)
    return [_view(i, sorted(clones.get(i.name, ())), now) for i in state.ordered_instances()]


@dataclass(frozen=True, slots=True)
class SessionRow:
    uid: str
    counts: Mapping[str, int]
    instances: int
    last_activity: str
    #: The same as ISO 8601 (for ``<time datetime>``).
    iso: str
    ago: str
    failed: bool
    stuck: bool
    waiting: bool


def session_row(summary: SessionSummary, now: float) -> SessionRow:
    at = summary.last_activity
    return SessionRow(
        uid=summary.uid,
        counts=summary.counts,
        instances=summary.instances,
        last_activity=utc_text(at),
        iso=datetime.fromtimestamp(at, UTC).isoformat() if at is not None else "",
        ago=duration(now - at) + " ago" if at is not None else "",
        failed=summary.failed,
        stuck=summary.stuck,
        waiting=summary.waiting,
    )
