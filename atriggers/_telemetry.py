"""OpenTelemetry spans and metrics (the ``otel`` extra: opentelemetry-api): the hooks.

The public part is `atriggers.telemetry`.

atriggers only talks to the OpenTelemetry *API*; which SDK, exporters and
sampling are used is the application's choice. The hooks below are what the
manager, the runners and the sweeper call. Each first asks `_active()`, which
costs two attribute reads: without opentelemetry-api (nothing is imported
after the first, failed, attempt), or with the API but no SDK configured (its
proxy providers), every hook returns at once, allocating nothing, and a fire
costs what it costs without this module.

Spans follow OpenTelemetry's messaging conventions (``messaging.system`` is
``atriggers``, the destination a trigger or task name):

- ``fire {trigger}`` (PRODUCER, operation ``create``): one per fire, cascades
  included; its context is stored with the trigger's kwargs in the session
  state (`atriggers._tracecontext`).
- ``dispatch {task}`` (PRODUCER, ``send``): handing an instance to its runner;
  its context travels in Celery and Lambda payloads.
- ``run {task}`` (CONSUMER, ``process``): running an instance; its parent is the
  dispatch (in this process or from the payload) and it links to the span of
  every fire whose kwargs the instance received (the fan-in of an ``after``).
- ``replay {instance}``, ``skip {instance}``, ``recover {instance}`` (INTERNAL).

Metrics are listed in `METRICS`. `configure` points atriggers at providers other
than the global ones (tests, or an application with several).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Coroutine, Iterator
from contextvars import ContextVar
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from ._tracecontext import TracedKwargs, is_traceparent
from .instance import Meta, Status, TaskInstance

if TYPE_CHECKING:
    from .state import Draft

__all__ = [
    "METRICS",
    "Note",
    "committed",
    "configure",
    "conflict",
    "current_traceparent",
    "dispatch",
    "enabled",
    "fire",
    "operation",
    "prepare",
    "prepare_again",
    "recovery",
    "remote_parent",
    "run",
]

T = TypeVar("T")

_SYSTEM = "atriggers"
_SCOPE = "atriggers"

#: Metric name -> (kind, unit, description).
METRICS: dict[str, tuple[str, str, str]] = {
    "atriggers.fires": ("counter", "{fire}", "Triggers fired (cascades included), by trigger"),
    "atriggers.fire.duration": ("histogram", "s", "Time of a fire as its caller sees it, by trigger"),
    "atriggers.dispatches": (
        "counter",
        "{dispatch}",
        "Instances handed to a runner, by runner (error.type when the runner refused)",
    ),
    "atriggers.outcomes": (
        "counter",
        "{instance}",
        "Instances reaching finished, failed, abandoned, replayed or skipped, by task and status",
    ),
    "atriggers.cas.conflicts": (
        "counter",
        "{conflict}",
        "Compare-and-swap writes that found the session changed by another writer",
    ),
    "atriggers.cas.retries": ("counter", "{retry}", "Operations re-applied after a conflict"),
    "atriggers.instances.lost": ("counter", "{instance}", "Instances found lost, by task"),
    "atriggers.instances.recovered": (
        "counter",
        "{instance}",
        "Due entries acted on by recovery, by verdict (expired, released, lost)",
    ),
    "atriggers.run.delay": (
        "histogram",
        "s",
        "From an instance's move to scheduled to the start of its run, by task and runner",
    ),
    "atriggers.run.duration": ("histogram", "s", "Run time of an instance, by task and final status"),
}

_OUTCOMES = frozenset({Status.FINISHED, Status.FAILED, Status.ABANDONED, Status.REPLAYED, Status.SKIPPED})


class _Instruments:
    __slots__ = (
        "conflicts",
        "dispatches",
        "fire_duration",
        "fires",
        "lost",
        "outcomes",
        "recovered",
        "retries",
        "run_delay",
        "run_duration",
    )

    def __init__(self, meter: Any) -> None:
        def make(name: str) -> Any:
            kind, unit, description = METRICS[name]
            factory = meter.create_counter if kind == "counter" else meter.create_histogram
            return factory(name, unit=unit, description=description)

        self.fires = make("atriggers.fires")
        self.fire_duration = make("atriggers.fire.duration")
        self.dispatches = make("atriggers.dispatches")
        self.outcomes = make("atriggers.outcomes")
        self.conflicts = make("atriggers.cas.conflicts")
        self.retries = make("atriggers.cas.retries")
        self.lost = make("atriggers.instances.lost")
        self.recovered = make("atriggers.instances.recovered")
        self.run_delay = make("atriggers.run.delay")
        self.run_duration = make("atriggers.run.duration")


class _Active:
    """What is on: a tracer (None: no tracing) and instruments (None: no metrics)."""

    __slots__ = ("api", "instruments", "tracer")

    def __init__(self, api: _Api, tracer: Any, instruments: _Instruments | None) -> None:
        self.api = api
        self.tracer = tracer
        self.instruments = instruments


class _Api:
    """The OpenTelemetry API modules, imported once."""

    def __init__(self) -> None:
        from opentelemetry import context, metrics, trace
        from opentelemetry.metrics import NoOpMeterProvider
        from opentelemetry.trace import (
            Link,
            NonRecordingSpan,
            ProxyTracerProvider,
            SpanContext,
            SpanKind,
            StatusCode,
            TraceFlags,
        )

        self.trace, self.metrics, self.context = trace, metrics, context
        self.Link, self.SpanContext, self.SpanKind = Link, SpanContext, SpanKind
        self.NonRecordingSpan, self.StatusCode, self.TraceFlags = NonRecordingSpan, StatusCode, TraceFlags
        self.ProxyTracerProvider, self.NoOpMeterProvider = ProxyTracerProvider, NoOpMeterProvider
        metrics_internal: Any
        try:
            from opentelemetry.metrics import _internal as metrics_internal
        except ImportError:  # pragma: no cover - a future API layout
            metrics_internal = None
        self.metrics_internal = metrics_internal
        # The API keeps the global providers in module attributes, set once: reading
        # them is the cheap per-call check (through the public getters if they move).
        self.fast = hasattr(trace, "_TRACER_PROVIDER") and hasattr(metrics_internal, "_METER_PROVIDER")
        # Providers named by environment variables are loaded on first get.
        trace.get_tracer_provider()
        metrics.get_meter_provider()

    def providers(self) -> tuple[Any, Any]:
        if self.fast:
            return self.trace._TRACER_PROVIDER, self.metrics_internal._METER_PROVIDER
        return self.trace.get_tracer_provider(), self.metrics.get_meter_provider()

    def is_proxy_meter_provider(self, provider: Any) -> bool:
        proxy = getattr(self.metrics_internal, "_ProxyMeterProvider", None)
        return isinstance(provider, self.NoOpMeterProvider) or (
            proxy is not None and isinstance(provider, proxy)
        )


_api: _Api | None = None
_missing = False
_current: _Active | None = None
#: The global providers `_current` was resolved for (the module attributes of
#: the API, read on every call), and whether it still holds (`configure`).
_seen_tracer: Any = None
_seen_meter: Any = None
_resolved = False
#: The API modules holding the global providers, once imported (fast path).
_trace_globals: Any = None
_meter_globals: Any = None
_explicit: tuple[Any, Any] = (None, None)


def _load() -> _Api | None:
    global _api, _missing, _trace_globals, _meter_globals
    try:
        _api = _Api()
    except ImportError:
        _missing = True
        return None
    if _api.fast:
        _trace_globals, _meter_globals = _api.trace, _api.metrics_internal
    return _api


def _active() -> _Active | None:
    """What is on now (None: nothing), cheaply: two attribute reads, and the
    providers resolved again only when a global one was set since the last
    call, or `configure` was called."""
    trace_globals = _trace_globals
    if trace_globals is not None:
        tracer_provider = trace_globals._TRACER_PROVIDER
        meter_provider = _meter_globals._METER_PROVIDER
        if _resolved and tracer_provider is _seen_tracer and meter_provider is _seen_meter:
            return _current
        assert _api is not None
        return _resolve(_api, tracer_provider, meter_provider)
    if _missing:
        return None
    api = _api or _load()
    if api is None:
        return None
    if api.fast:
        return _active()
    tracer_provider, meter_provider = api.providers()  # pragma: no cover - an API without them
    if _resolved and tracer_provider is _seen_tracer and meter_provider is _seen_meter:  # pragma: no cover
        return _current
    return _resolve(api, tracer_provider, meter_provider)  # pragma: no cover


def _resolve(api: _Api, tracer_provider: Any, meter_provider: Any) -> _Active | None:
    global _current, _seen_tracer, _seen_meter, _resolved
    from . import __version__

    _seen_tracer, _seen_meter, _resolved = tracer_provider, meter_provider, True
    tracer_provider = _explicit[0] or api.trace.get_tracer_provider()
    meter_provider = _explicit[1] or api.metrics.get_meter_provider()
    tracer = None
    if not isinstance(tracer_provider, (api.ProxyTracerProvider, api.trace.NoOpTracerProvider)):
        tracer = tracer_provider.get_tracer(_SCOPE, __version__)
    instruments = None
    if not api.is_proxy_meter_provider(meter_provider):
        instruments = _Instruments(meter_provider.get_meter(_SCOPE, __version__))
    _current = _Active(api, tracer, instruments) if tracer is not None or instruments is not None else None
    return _current


def configure(*, tracer_provider: Any = None, meter_provider: Any = None) -> None:
    """Use these providers instead of the global ones (None: the global one).

    Without it, atriggers uses whatever the application set with
    ``opentelemetry.trace.set_tracer_provider`` and
    ``opentelemetry.metrics.set_meter_provider``. ``configure()`` with no
    arguments goes back to the globals.
    """
    global _explicit, _resolved
    _explicit = (tracer_provider, meter_provider)
    _resolved = False  # resolve again on the next call


def enabled() -> bool:
    """Whether any span or metric is recorded (an SDK provider is configured)."""
    return _active() is not None


# -- trace context as stored -------------------------------------------------------------


def _format(context: Any) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def _parse(api: _Api, traceparent: object) -> Any:
    if not is_traceparent(traceparent):
        return None
    assert isinstance(traceparent, str)
    _, trace_id, span_id, flags = traceparent.split("-")
    context = api.SpanContext(int(trace_id, 16), int(span_id, 16), True, api.TraceFlags(int(flags, 16)))
    return context if context.is_valid else None


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span (None: tracing is off or no
    valid span is current)."""
    active = _active()
    if active is None or active.tracer is None:
        return None
    context = active.api.trace.get_current_span().get_span_context()
    return _format(context) if context.is_valid else None


@contextlib.contextmanager
def remote_parent(traceparent: str | None) -> Iterator[None]:
    """Make the span `traceparent` (from a Celery or Lambda payload) the parent
    of the spans started inside."""
    active = _active() if traceparent else None
    parent = _parse(active.api, traceparent) if active is not None and active.tracer is not None else None
    if parent is None:
        yield
        return
    assert active is not None
    api = active.api
    token = api.context.attach(api.trace.set_span_in_context(api.NonRecordingSpan(parent)))
    try:
        yield
    finally:
        api.context.detach(token)


# -- operations ------------------------------------------------------------------------


class _Operation:
    """Counts gathered while an operation's span is current."""

    __slots__ = ("abandoned", "scheduled")

    def __init__(self) -> None:
        self.scheduled = 0
        self.abandoned = 0


_operation: ContextVar[_Operation | None] = ContextVar("atriggers_telemetry_operation", default=None)


class Note:
    """What one write changes, worked out before it (`prepare`) and counted once
    it is stored (`committed`)."""

    __slots__ = ("active", "here", "transitions")

    def __init__(self, active: _Active, here: str | None, transitions: list[tuple[str, Status]]) -> None:
        self.active = active
        #: The ``traceparent`` of the span current when the operation began.
        self.here = here
        self.transitions = transitions


def prepare(draft: Draft) -> Note | None:
    """Called with an operation's draft before it is written: stamps the trace
    context of the current span on what the draft fires and on the instances
    that receive those kwargs. None (and nothing done) when telemetry is off."""
    active = _active()
    if active is None:
        return None
    here = None
    if active.tracer is not None:
        context = active.api.trace.get_current_span().get_span_context()
        here = _format(context) if context.is_valid else None
    return _prepare(draft, Note(active, here, []))


def prepare_again(draft: Draft, first: Note) -> Note:
    """`prepare` for the operation re-applied to a newer state (a conflict),
    perhaps in a storage's thread, where the operation's span is not current.
    Counts the conflict."""
    _count_conflict(first.active, retried=True)
    return _prepare(draft, Note(first.active, first.here, []))


def _prepare(draft: Draft, note: Note) -> Note:
    base = draft.base.instances
    started = draft.started
    for instance in draft.edited():
        before = base.get(instance.name)
        if started is not None and instance.name in started:
            # Started by the write that scheduled it: it was scheduled too.
            note.transitions.append((instance.task_name, Status.SCHEDULED))
        if before is None or before.status is not instance.status:
            note.transitions.append((instance.task_name, instance.status))
    if note.here is not None:
        _stamp(draft, note.here)
    return note


def _stamp(draft: Draft, here: str) -> None:
    fired = draft.fired
    for trigger, kwargs in list(fired.items()):
        if getattr(kwargs, "trace", None) != here:
            draft.record_fire(trigger, TracedKwargs(kwargs, here))
    latest = draft.latest_kwargs
    base = draft.base.instances
    for instance in draft.edited():
        before = base.get(instance.name)
        received = [t for t in instance.kwargs if before is None or t not in before.kwargs]
        if not received:
            continue
        stamps = dict(instance.metadata.get(Meta.TRACE) or {})
        inherited: dict[str, Any] = {}
        parent = instance.metadata.get(Meta.PARENT) if before is None else None
        if isinstance(parent, str) and (failed := draft.find(parent)) is not None:
            inherited = failed.metadata.get(Meta.TRACE) or {}  # a replay or retry clone
        for trigger in received:
            if trigger in fired:
                stamps[trigger] = here
            elif trigger in inherited:
                stamps[trigger] = inherited[trigger]
            elif (earlier := getattr(latest.get(trigger), "trace", None)) is not None:
                stamps[trigger] = earlier  # a new instance took an earlier fire's kwargs
        if stamps:
            instance.metadata[Meta.TRACE] = stamps


def committed(note: Note) -> None:
    """The write `note` was prepared for is stored: count its outcomes."""
    instruments = note.active.instruments
    operation = _operation.get()
    for task, status in note.transitions:
        if operation is not None:
            if status is Status.SCHEDULED:
                operation.scheduled += 1
            elif status is Status.ABANDONED:
                operation.abandoned += 1
        if instruments is not None and status in _OUTCOMES:
            instruments.outcomes.add(1, {"atriggers.task": task, "atriggers.status": status.value})


def conflict(retried: bool) -> None:
    """A compare-and-swap write met a newer version (`retried`: the operation
    is applied again)."""
    active = _active()
    if active is not None:
        _count_conflict(active, retried)


def _count_conflict(active: _Active, retried: bool) -> None:
    if active.instruments is not None:
        active.instruments.conflicts.add(1)
        if retried:
            active.instruments.retries.add(1)


def fire(uid: str, trigger: str, operation: Coroutine[Any, Any, T]) -> Coroutine[Any, Any, T]:
    """`operation` (a fire) inside a ``fire`` span, counted."""
    active = _active()
    if active is None:
        return operation
    return _fire(active, uid, trigger, operation)


async def _fire(active: _Active, uid: str, trigger: str, operation: Coroutine[Any, Any, T]) -> T:
    started = time.perf_counter()
    counts = _Operation()
    token = _operation.set(counts)
    try:
        if active.tracer is None:
            return await operation
        api = active.api
        with active.tracer.start_as_current_span(f"fire {trigger}", kind=api.SpanKind.PRODUCER) as span:
            if span.is_recording():
                span.set_attributes(
                    {
                        "messaging.system": _SYSTEM,
                        "messaging.operation.type": "create",
                        "messaging.operation.name": "fire",
                        "messaging.destination.name": trigger,
                        "atriggers.uid": uid,
                        "atriggers.trigger": trigger,
                    }
                )
            result = await operation
            if span.is_recording():
                span.set_attribute("atriggers.instances.scheduled", counts.scheduled)
                span.set_attribute("atriggers.instances.abandoned", counts.abandoned)
            return result
    finally:
        _operation.reset(token)
        instruments = active.instruments
        if instruments is not None:
            attributes = {"atriggers.trigger": trigger}
            instruments.fires.add(1, attributes)
            instruments.fire_duration.record(time.perf_counter() - started, attributes)


def dispatch(
    runner: str, instance: TaskInstance, operation: Coroutine[Any, Any, T]
) -> Coroutine[Any, Any, T]:
    """`operation` (handing `instance` to `runner`) inside a ``dispatch`` span."""
    active = _active()
    if active is None:
        return operation
    return _dispatch(active, runner, instance, operation)


async def _dispatch(
    active: _Active, runner: str, instance: TaskInstance, operation: Coroutine[Any, Any, T]
) -> T:
    error: str | None = None
    try:
        if active.tracer is None:
            return await operation
        name = f"dispatch {instance.task_name}"
        with active.tracer.start_as_current_span(name, kind=active.api.SpanKind.PRODUCER) as span:
            if span.is_recording():
                span.set_attributes(
                    {
                        "messaging.system": _SYSTEM,
                        "messaging.operation.type": "send",
                        "messaging.operation.name": "dispatch",
                        "messaging.destination.name": instance.task_name,
                        "atriggers.instance": instance.name,
                        "atriggers.runner": runner,
                    }
                )
            return await operation
    except Exception as exc:
        error = type(exc).__qualname__
        raise
    finally:
        if active.instruments is not None:
            attributes = {"atriggers.runner": runner}
            if error is not None:
                attributes["error.type"] = error
            active.instruments.dispatches.add(1, attributes)


def run(
    uid: str, instance: TaskInstance, operation: Coroutine[Any, Any, TaskInstance | None]
) -> Coroutine[Any, Any, TaskInstance | None]:
    """`operation` (the run of `instance`, already ``running``) inside a ``run``
    span linked to the fires whose kwargs it received."""
    active = _active()
    if active is None:
        return operation
    return _run(active, uid, instance, operation)


def _seconds_between(timestamps: object, first: str, then: str) -> float | None:
    if not isinstance(timestamps, dict):
        return None
    try:
        start, end = timestamps[first], timestamps[then]
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except (KeyError, TypeError, ValueError):
        return None


async def _run(
    active: _Active, uid: str, instance: TaskInstance, operation: Coroutine[Any, Any, TaskInstance | None]
) -> TaskInstance | None:
    started = time.perf_counter()
    runner = instance.runner or ""
    status = "lost"
    token = _operation.set(_Operation())
    try:
        if active.tracer is None:
            result = await operation
        else:
            api = active.api
            links = []
            for trigger, traceparent in sorted((instance.metadata.get(Meta.TRACE) or {}).items()):
                context = _parse(api, traceparent)
                if context is not None:
                    links.append(api.Link(context, {"atriggers.trigger": trigger}))
            name = f"run {instance.task_name}"
            with active.tracer.start_as_current_span(name, kind=api.SpanKind.CONSUMER, links=links) as span:
                if span.is_recording():
                    span.set_attributes(
                        {
                            "messaging.system": _SYSTEM,
                            "messaging.operation.type": "process",
                            "messaging.operation.name": "run",
                            "messaging.destination.name": instance.task_name,
                            "atriggers.uid": uid,
                            "atriggers.task": instance.task_name,
                            "atriggers.instance": instance.name,
                            "atriggers.runner": runner,
                            "atriggers.attempt": instance.depth + 1,
                        }
                    )
                result = await operation
                if span.is_recording():
                    final = result.status.value if result is not None else "lost"
                    span.set_attribute("atriggers.status", final)
                    if result is not None and result.status is Status.FAILED:
                        error = str(result.metadata.get(Meta.EXCEPTION_TYPE) or "failed")
                        span.set_attribute("error.type", error)
                        span.set_status(api.StatusCode.ERROR, error)
        if result is not None:
            status = result.status.value
        return result
    finally:
        _operation.reset(token)
        instruments = active.instruments
        if instruments is not None:
            task = instance.task_name
            instruments.run_duration.record(
                time.perf_counter() - started, {"atriggers.task": task, "atriggers.status": status}
            )
            delay = _seconds_between(
                instance.metadata.get(Meta.TIMESTAMPS), Status.SCHEDULED.value, Status.RUNNING.value
            )
            if delay is not None:
                instruments.run_delay.record(
                    max(delay, 0.0), {"atriggers.task": task, "atriggers.runner": runner}
                )


def operation(kind: str, uid: str, name: str, work: Coroutine[Any, Any, T]) -> Coroutine[Any, Any, T]:
    """`work` (a ``replay`` or ``skip`` of instance `name`) inside its span."""
    active = _active()
    if active is None or active.tracer is None:
        return work
    return _operation_span(active, kind, uid, name, work)


async def _operation_span(active: _Active, kind: str, uid: str, name: str, work: Coroutine[Any, Any, T]) -> T:
    assert active.tracer is not None
    with active.tracer.start_as_current_span(f"{kind} {name}") as span:
        if span.is_recording():
            span.set_attributes({"atriggers.uid": uid, "atriggers.instance": name})
        return await work


def recovery(uid: str, name: str, work: Coroutine[Any, Any, str]) -> Coroutine[Any, Any, str]:
    """`work` (acting on the due entry of instance `name`) inside a ``recover``
    span; its verdict is counted."""
    active = _active()
    if active is None:
        return work
    return _recovery(active, uid, name, work)


async def _recovery(active: _Active, uid: str, name: str, work: Coroutine[Any, Any, str]) -> str:
    if active.tracer is None:
        verdict = await work
    else:
        with active.tracer.start_as_current_span(f"recover {name}") as span:
            if span.is_recording():
                span.set_attributes({"atriggers.uid": uid, "atriggers.instance": name})
            verdict = await work
            if span.is_recording():
                span.set_attribute("atriggers.verdict", verdict)
    instruments = active.instruments
    if instruments is not None and verdict in ("expired", "released", "lost"):
        instruments.recovered.add(1, {"atriggers.verdict": verdict})
        if verdict == "lost":
            instruments.lost.add(1, {"atriggers.task": name.rpartition("#")[0]})
    return verdict
