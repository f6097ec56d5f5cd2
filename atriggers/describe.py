"""Instances and sessions described in words, for people reading a failure.

One rendering serves both the ``atriggers`` command (``show``, ``fire``, ...) and
the assertion messages of `atriggers.testing`, so an operator and a test author
see a failed instance the same way.
"""

from __future__ import annotations

import json

from .instance import Meta, Status, TaskInstance
from .state import SessionState

__all__ = ["compact_json", "describe_instance", "describe_session"]


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
        info = str(meta.get(Meta.EXCEPTION_INFO) or "").rstrip()
        if info:
            lines.append("  traceback:")
            lines += [f"    {line}" for line in info.splitlines()]
    lines.append(f"  triggers applied: {', '.join(sorted(instance.kwargs)) or 'none'}")
    return "\n".join(lines)


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
