"""Trace context as stored in session state: W3C ``traceparent`` strings.

Pure data, no OpenTelemetry import: storage codecs use it whether or not the
``otel`` extra is installed, so states written with tracing on load anywhere.

- An instance's metadata key ``trace`` maps each trigger whose kwargs it
  received to the ``traceparent`` of the fire that carried them.
- The latest kwargs of a trigger remember the fire that set them as a
  `TracedKwargs` (a plain dict with a ``trace`` attribute), stored inside the
  kwargs' JSON object under `TRACE_KEY` and taken out again when read, so
  tasks, tools and states written without tracing never see it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["TRACE_KEY", "TracedKwargs", "is_traceparent", "traced", "untraced"]

#: Key of the fire's ``traceparent`` inside a trigger's stored latest kwargs.
TRACE_KEY = "@atriggers.traceparent"

_TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def is_traceparent(value: object) -> bool:
    """Whether `value` is a W3C ``traceparent`` of version 00."""
    return isinstance(value, str) and _TRACEPARENT.fullmatch(value) is not None


class TracedKwargs(dict[str, Any]):
    """Trigger kwargs (a plain dict to everything reading them) that remember
    the ``traceparent`` of the fire that set them."""

    __slots__ = ("trace",)

    def __init__(self, kwargs: Mapping[str, Any], trace: str) -> None:
        super().__init__(kwargs)
        self.trace = trace


def traced(kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
    """The JSON object to store for `kwargs` (with `TRACE_KEY` if traced)."""
    if type(kwargs) is not TracedKwargs:  # (cheaper than getattr on every fire)
        return kwargs
    return {**kwargs, TRACE_KEY: kwargs.trace}


def untraced(kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` as read back: `TRACE_KEY` taken out into a `TracedKwargs`."""
    trace = kwargs.get(TRACE_KEY)
    if trace is None or not is_traceparent(trace):
        return kwargs
    del kwargs[TRACE_KEY]
    return TracedKwargs(kwargs, trace)
