"""Instances and sessions described in words, for people reading a failure.

One rendering serves both the ``atriggers`` command (``show``, ``fire``, ...) and
the assertion messages of `atriggers.testing`, so an operator and a test author
see a failed instance the same way.
"""

from __future__ import annotations

import json

from .clock import from_iso
from .due import due_of
from .instance import Meta, Status, TaskInstance
from .state import SessionState

__all__ = ["STUCK_AFTER", "compact_json", "describe_instance", "describe_session", "held_by", "trouble"]

#: Seconds after which an instance that nothing will recover by itself (scheduled
#: or running with neither an owner, a deadline nor a timer) counts as stuck.
STUCK_AFTER = 600.0

_LOST = "atriggers.errors.InstanceLost"


def describe_instance(instance: TaskInstance) -> str:
    """A multi-line account of `instance`: status, parent, result, and for a
    failure its exception type, context and traceback."""
    lines = [f"{instance.name}: {instance.status.value}"]
    meta = instance.metadata
    if instance.parent:
        lines.append(f"  parent: {instance.parent}")
    if Meta.RESULT in meta:
        lines.append(f"  result: {compact_json(meta[Meta.RESULT])}")
    if Meta.EXCEPTION_TYPE in meta:
        lines.append(f"  exception: {meta[Meta.EXCEPTION_TYPE]}")
        if meta.get(Meta.EXCEPTION_CONTEXT):
            lines.append(f"  context: {compact_json(meta[Meta.EXCEPTION_CONTEXT])}")
        logs = meta.get(Meta.ERROR_LOGS)
        if isinstance(logs, list) and logs:
            lines.append("  logged:")
            lines += [f"    {line}" for record in logs for line in str(record).splitlines()]
        info = str(meta.get(Meta.EXCEPTION_INFO) or "").rstrip()
        if info:
            lines.append("  traceback:")
            lines += [f"    {line}" for line in info.splitlines()]
    lines.append(f"  triggers applied: {', '.join(sorted(instance.kwargs)) or 'none'}")
    return "\n".join(lines)


def held_by(instance: TaskInstance) -> str:
    """Who has an instance in flight: its runner, its owner, its deadline or the
    end of its cooldown ("" when it is not in flight)."""
    meta = instance.metadata
    if instance.status not in (Status.SCHEDULED, Status.RUNNING):
        return ""
    parts = [instance.runner or "?"]
    if isinstance(meta.get(Meta.NOT_BEFORE), str):
        parts.append(f"cooldown until {meta[Meta.NOT_BEFORE][:19].replace('T', ' ')}Z")
    if instance.owner:
        parts.append(f"owner {instance.owner}")
    if instance.status is Status.RUNNING and isinstance(meta.get(Meta.DEADLINE), str):
        parts.append(f"deadline {meta[Meta.DEADLINE][:19].replace('T', ' ')}Z")
    return ", ".join(parts)


def trouble(instance: TaskInstance, now: float, stuck_after: float = STUCK_AFTER) -> str | None:
    """Why an instance needs a look, in a few words, or None:

    - ``"lost"``: it failed because it was lost (``InstanceLost``);
    - ``"overdue"``: its deadline or cooldown passed and no sweeper acted yet
      (is one running?);
    - ``"stuck"``: scheduled or running for more than `stuck_after` seconds with
      nothing that will recover it by itself (no owner, deadline or timer: a
      broker that lost its message, say): a person must look.
    """
    if instance.status is Status.FAILED and instance.metadata.get(Meta.EXCEPTION_TYPE) == _LOST:
        return "lost"
    if instance.status not in (Status.SCHEDULED, Status.RUNNING):
        return None
    entry = due_of(instance)
    if entry is not None:
        return "overdue" if entry.at is not None and entry.at + stuck_after / 10 < now else None
    since = instance.timestamps.get(instance.status.value)
    if since is not None and from_iso(since) + stuck_after < now:
        return "stuck"
    return None


def describe_session(state: SessionState) -> str:
    """One line per instance of the session (name, status, exception type)."""
    if not state.instances:
        return f"session {state.uid!r} has no instances"
    lines = [f"instances of session {state.uid!r}:"]
    for name, instance in sorted(state.instances.items()):
        error = instance.metadata.get(Meta.EXCEPTION_TYPE)
        suffix = f" ({error})" if instance.status is Status.FAILED and error else ""
        lines.append(f"  {name}: {instance.status.value}{suffix}")
    return "\n".join(lines)


def compact_json(value: object) -> str:
    """`value` as one line of JSON (keys sorted), else its ``repr``."""
    # Metadata set by hand (update_instance_metadata) may hold anything: a
    # description must never fail where the assertion it explains would not.
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        return repr(value)
