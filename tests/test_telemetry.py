"""OpenTelemetry spans and metrics, recorded with the SDK's in-memory exporters.

The cross-process fan-in (three fires from three OS processes, a run on the
asyncio runner and in a real Celery worker) is in tests/runners/test_telemetry_processes.py.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from atriggers import Status, Sweeper, TaskContext, TriggerManager, task, telemetry
from atriggers._tracecontext import TRACE_KEY, TracedKwargs
from atriggers.clock import FakeClock
from atriggers.remote import RunRequest
from atriggers.runners import RunnerRegistry
from atriggers.storage import MemoryStorage, SQLiteStorage
from atriggers.storage.base import Storage

ROOT = Path(__file__).resolve().parents[1]


@task("otel.echo")
async def echo(context: TaskContext) -> dict[str, Any]:
    return {"got": sorted(context.trigger_kwargs)}


@task("otel.boom")
async def boom(context: TaskContext) -> dict[str, Any]:
    raise RuntimeError("boom")


@task("otel.hang")
async def hang(context: TaskContext) -> dict[str, Any]:
    await asyncio.Event().wait()
    return {}


@dataclass
class Recorded:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader

    def finished(self, name: str | None = None) -> list[ReadableSpan]:
        found = list(self.spans.get_finished_spans())
        return [s for s in found if name is None or s.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.finished(name)
        assert len(found) == 1, [s.name for s in self.finished()]
        return found[0]

    def points(self, metric: str) -> dict[frozenset[tuple[str, Any]], Any]:
        """Attributes -> value (counters) or count (histograms) of `metric`."""
        data = self.metrics.get_metrics_data()
        found: dict[frozenset[tuple[str, Any]], Any] = {}
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for item in scope.metrics:
                    if item.name == metric:
                        for point in item.data.data_points:
                            value = getattr(point, "value", None)
                            found[frozenset((point.attributes or {}).items())] = (
                                value if value is not None else point.count  # type: ignore[union-attr]
                            )
        return found

    def total(self, metric: str, **attributes: Any) -> Any:
        wanted = {(f"atriggers.{k}" if "." not in k else k, v) for k, v in attributes.items()}
        return sum(v for k, v in self.points(metric).items() if wanted <= k)


@pytest.fixture
def otel() -> Iterator[Recorded]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    metrics = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[metrics])
    telemetry.configure(tracer_provider=tracer_provider, meter_provider=meter_provider)
    try:
        yield Recorded(spans, metrics)
    finally:
        telemetry.configure()
        tracer_provider.shutdown()
        meter_provider.shutdown()


@pytest.fixture
async def storage() -> AsyncIterator[Storage]:
    async with MemoryStorage() as store:
        yield store


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    found: int = span.context.span_id
    return found


def linked(span: ReadableSpan) -> dict[str, int]:
    return {str((link.attributes or {})["atriggers.trigger"]): link.context.span_id for link in span.links}


# -- spans ------------------------------------------------------------------------------


async def test_a_join_run_links_to_every_fire_that_fed_it(otel: Recorded, storage: Storage) -> None:
    manager = TriggerManager(storage, "join")
    await manager.update_configuration({"t_join": {"after": ["a", "b", "c"], "run": "otel.echo"}})
    for trigger in ("a", "b", "c"):
        await manager.fire(trigger, {"by": trigger})
    await manager.join()

    fires = {name: otel.one(f"fire {name}") for name in "abc"}
    run = otel.one("run t_join")
    assert run.kind is SpanKind.CONSUMER
    assert linked(run) == {name: span_id(span) for name, span in fires.items()}
    assert run.attributes is not None
    assert run.attributes["atriggers.instance"] == "t_join#0"
    assert run.attributes["atriggers.runner"] == "asyncio"
    assert run.attributes["atriggers.attempt"] == 1
    assert run.attributes["atriggers.status"] == "finished"
    assert run.attributes["messaging.operation.type"] == "process"

    fire_c = fires["c"]
    assert fire_c.kind is SpanKind.PRODUCER
    assert fire_c.attributes is not None
    assert fire_c.attributes["atriggers.uid"] == "join"
    assert fire_c.attributes["messaging.destination.name"] == "c"
    assert fire_c.attributes["atriggers.instances.scheduled"] == 1
    assert fires["a"].attributes is not None and fires["a"].attributes["atriggers.instances.scheduled"] == 0
    # The run is the dispatch's child, the dispatch the completing fire's.
    dispatch = otel.one("dispatch t_join")
    assert dispatch.parent is not None and dispatch.parent.span_id == span_id(fire_c)
    assert run.parent is not None and run.parent.span_id == span_id(dispatch)
    # The cascade (the task's own name) is a fire too, inside the run.
    cascade = otel.one("fire t_join")
    assert cascade.parent is not None and cascade.parent.span_id == span_id(run)


async def test_a_new_instance_links_to_the_earlier_fire_whose_kwargs_it_took(
    otel: Recorded, storage: Storage
) -> None:
    manager = TriggerManager(storage, "every")
    await manager.update_configuration(
        {"t_page": {"after": ["subject"], "andEvery": "page", "run": "otel.echo"}}
    )
    await manager.fire("subject", {"id": 1})
    await manager.fire("page", {"n": 1})  # takes the waiting t_page#0
    await manager.fire("page", {"n": 2})  # a new instance, with subject's latest kwargs
    await manager.join()

    subject = span_id(otel.one("fire subject"))
    pages = [span_id(s) for s in otel.finished("fire page")]
    runs = sorted(otel.finished("run t_page"), key=lambda s: str((s.attributes or {})["atriggers.instance"]))
    assert [linked(r) for r in runs] == [
        {"subject": subject, "page": pages[0]},
        {"subject": subject, "page": pages[1]},
    ]


async def test_trace_context_is_stored_as_json_and_older_states_still_load(
    otel: Recorded, tmp_path: Path
) -> None:
    path = tmp_path / "traced.db"
    async with SQLiteStorage(path) as store:
        manager = TriggerManager(store, "stored")
        await manager.update_configuration({"t": {"after": ["a", "b"], "run": "otel.echo"}})
        await manager.fire("a", {"x": 1})
    # A state written before tracing existed: kwargs without the trace key.
    with sqlite3.connect(path) as db:
        rows = dict(db.execute("SELECT name, kwargs FROM atriggers_triggers WHERE uid = 'stored'").fetchall())
        db.execute(
            "INSERT INTO atriggers_triggers (uid, name, kwargs) VALUES ('stored', 'old', '{\"y\": 2}')"
        )
    db.close()  # (`with` commits, it does not close: Python 3.13 warns of the leak)
    assert TRACE_KEY in rows["a"]  # the fire's context, inside the kwargs' JSON object
    fire_a = otel.one("fire a")

    async with SQLiteStorage(path) as store:
        manager = TriggerManager(store, "stored")
        state = await manager.get_state()
        assert state.latest_kwargs == {"a": {"x": 1}, "old": {"y": 2}}  # the key is taken out
        assert isinstance(state.latest_kwargs["a"], TracedKwargs)
        assert state.debug_repr()["latestKwargs"] == {"a": {"x": 1}, "old": {"y": 2}}
        waiting = state.instances["t#0"]
        assert waiting.kwargs == {"a": {"x": 1}}
        assert waiting.metadata["trace"] == {"a": state.latest_kwargs["a"].trace}
        assert state.latest_kwargs["a"].trace.split("-")[2] == f"{span_id(fire_a):016x}"
        [scheduled] = await manager.fire("b", {"z": 3})
        # Handed out as scheduled (its run started in the same write), with the
        # trace stamps of the kwargs it received, as stored.
        assert scheduled.status is Status.SCHEDULED
        assert scheduled.metadata["trace"]["b"].split("-")[2] == f"{span_id(otel.one('fire b')):016x}"
        await manager.join()
        finished = await manager.get_instance("t#0")
    assert finished.status is Status.FINISHED
    assert finished.metadata["actualKwargs"] == {"a": {"x": 1}, "b": {"z": 3}}  # the task saw no trace key
    assert linked(otel.one("run t")) == {"a": span_id(fire_a), "b": span_id(otel.one("fire b"))}


async def test_replay_skip_and_failures_have_spans(otel: Recorded, storage: Storage) -> None:
    manager = TriggerManager(storage, "repairs")
    await manager.update_configuration(
        {"t_boom": {"after": ["go"], "run": "otel.boom"}, "t_skip": {"after": ["go2"], "run": "otel.boom"}}
    )
    await manager.fire("go")
    await manager.join()
    failed_run = otel.one("run t_boom")
    assert failed_run.status.status_code is StatusCode.ERROR
    assert failed_run.attributes is not None
    assert failed_run.attributes["error.type"] == "builtins.RuntimeError"

    clone = await manager.replay_failed_instance("t_boom#0")
    await manager.join()
    replay = otel.one("replay t_boom#0")
    runs = otel.finished("run t_boom")
    assert len(runs) == 2
    second = next(r for r in runs if (r.attributes or {})["atriggers.instance"] == clone.name)
    assert (second.attributes or {})["atriggers.attempt"] == 2
    # The clone received the failed instance's kwargs: it links to the same fire.
    assert linked(second) == {"go": span_id(otel.one("fire go"))}
    dispatch = next(
        s for s in otel.finished("dispatch t_boom") if s.parent and s.parent.span_id == span_id(replay)
    )
    assert second.parent is not None and second.parent.span_id == span_id(dispatch)

    await manager.fire("go2")
    await manager.join()
    await manager.skip_failed_instance("t_skip#0", cascade=True, result={"r": 1})
    skip = otel.one("skip t_skip#0")
    assert skip.attributes is not None and skip.attributes["atriggers.uid"] == "repairs"

    assert otel.total("atriggers.outcomes", task="t_boom", status="failed") == 2
    assert otel.total("atriggers.outcomes", task="t_boom", status="replayed") == 1
    assert otel.total("atriggers.outcomes", task="t_skip", status="failed") == 1
    assert otel.total("atriggers.outcomes", task="t_skip", status="skipped") == 1


# -- metrics ----------------------------------------------------------------------------


async def test_metrics_count_the_work_done(otel: Recorded, storage: Storage) -> None:
    runners = RunnerRegistry()
    manager = TriggerManager(storage, "metrics", runners=runners)
    await manager.update_configuration(
        {
            "t_ok": {"after": ["a"], "andEvery": "tick", "run": "otel.echo"},
            "t_gone": {"after": ["tick"], "unless": ["stop"], "run": "otel.echo", "using": "nowhere"},
        }
    )
    await manager.fire("stop")
    await manager.fire("a")
    for _ in range(3):
        await manager.fire("tick")
    await manager.join()

    # 5 application fires, 3 t_ok cascades (t_ok#0 waits for "tick").
    assert otel.total("atriggers.fires") == 8
    assert otel.total("atriggers.fires", trigger="tick") == 3
    assert otel.total("atriggers.fires", trigger="t_ok") == 3
    assert otel.total("atriggers.fire.duration") == 8
    assert otel.total("atriggers.dispatches", runner="asyncio") == 3
    assert otel.total("atriggers.outcomes", task="t_ok", status="finished") == 3
    # "stop" made t_gone#0, abandoned at once (its unless is all there).
    assert otel.total("atriggers.outcomes", task="t_gone", status="abandoned") == 1
    assert otel.total("atriggers.run.duration", task="t_ok", status="finished") == 3
    assert otel.total("atriggers.run.delay", task="t_ok", runner="asyncio") == 3
    assert otel.total("atriggers.cas.conflicts") == 0
    stop = otel.one("fire stop")
    assert stop.attributes is not None
    assert stop.attributes["atriggers.instances.abandoned"] == 1


async def test_a_runner_that_refuses_is_counted_as_a_failed_dispatch(
    otel: Recorded, storage: Storage
) -> None:
    manager = TriggerManager(storage, "refused")
    await manager.update_configuration({"t": {"after": ["go"], "run": "otel.echo", "using": "nowhere"}})
    await manager.fire("go")
    assert (await manager.get_instance("t#0")).status is Status.FAILED
    # An unknown runner is refused before a dispatch span starts; the failure is an outcome.
    assert otel.total("atriggers.outcomes", task="t", status="failed") == 1


async def test_compare_and_swap_conflicts_are_counted(otel: Recorded, tmp_path: Path) -> None:
    path = tmp_path / "conflicts.db"
    async with SQLiteStorage(path) as first, SQLiteStorage(path) as second:
        here = TriggerManager(first, "cas")
        await here.update_configuration({"t": {"after": ["a", "b"], "run": "otel.echo"}})
        await here.fire("a", {"n": 1})  # `first` caches the session at this version
        await TriggerManager(second, "cas").fire("a", {"n": 2})  # another writer moves it on
        await here.fire("b")  # found changed: applied again to the newer state
        await here.join()
        assert (await here.get_instance("t#0")).status is Status.FINISHED
    # (At least `here`'s second fire; each conflict here was re-applied.)
    assert otel.total("atriggers.cas.conflicts") >= 1
    assert otel.total("atriggers.cas.retries") == otel.total("atriggers.cas.conflicts")
    # Re-applied in storage's thread, the fire still stamped its own context.
    assert linked(otel.one("run t"))["b"] == span_id(otel.one("fire b"))


async def test_recoveries_have_spans_and_are_counted(otel: Recorded) -> None:
    clock = FakeClock()
    async with MemoryStorage(clock=clock, close_timeout=1) as store:
        manager = TriggerManager(store, "recover")
        await manager.update_configuration(
            {
                "t_wait": {"after": ["a", "never"], "run": "otel.echo", "within": 60},
                "t_hang": {"after": ["go"], "run": "otel.hang", "timeout": 5},
            }
        )
        await manager.fire("a")
        await manager.fire("go")
        for _ in range(5):
            await asyncio.sleep(0)
        await clock.advance(61)  # t_hang's deadline passes: lost here; t_wait's window closes
        await manager.join()
        assert await Sweeper(store).run_once() == 1
        state = await manager.get_state()
    assert state.instances["t_wait#0"].status is Status.ABANDONED
    assert state.instances["t_hang#0"].status is Status.FAILED
    verdicts = {
        (s.attributes or {})["atriggers.instance"]: (s.attributes or {})["atriggers.verdict"]
        for s in otel.finished()
        if s.name.startswith("recover ")
    }
    assert verdicts == {"t_wait#0": "expired", "t_hang#0": "lost"}
    assert otel.total("atriggers.instances.recovered", verdict="expired") == 1
    assert otel.total("atriggers.instances.recovered", verdict="lost") == 1
    assert otel.total("atriggers.instances.lost", task="t_hang") == 1
    assert otel.total("atriggers.outcomes", task="t_hang", status="failed") == 1
    assert otel.total("atriggers.outcomes", task="t_wait", status="abandoned") == 1
    assert otel.total("atriggers.run.duration", task="t_hang", status="lost") == 1


# -- off ----------------------------------------------------------------------------------


async def test_without_a_configured_sdk_nothing_is_recorded_or_stored(storage: Storage) -> None:
    telemetry.configure()  # the global providers, which no test sets
    assert not telemetry.enabled()
    assert telemetry.current_traceparent() is None
    manager = TriggerManager(storage, "off")
    await manager.update_configuration({"t": {"after": ["a"], "run": "otel.echo"}})
    await manager.fire("a", {"x": 1})
    await manager.join()
    state = await manager.get_state()
    assert "trace" not in state.instances["t#0"].metadata
    assert type(state.latest_kwargs["a"]) is dict


def test_without_opentelemetry_nothing_is_imported(tmp_path: Path) -> None:
    blocker = tmp_path / "block"
    (blocker / "opentelemetry").mkdir(parents=True)
    (blocker / "opentelemetry" / "__init__.py").write_text("raise ImportError('not installed')\n")
    script = textwrap.dedent(
        """
        import asyncio, sys
        from atriggers import TaskContext, TriggerManager, task, telemetry
        from atriggers.storage import MemoryStorage

        @task("off.echo")
        async def echo(context: TaskContext) -> dict:
            return {}

        async def main() -> None:
            async with MemoryStorage() as store:
                manager = TriggerManager(store, "u")
                await manager.update_configuration({"t": {"after": ["a"], "run": "off.echo"}})
                await manager.fire("a")
                await manager.join()
                assert (await manager.get_instance("t#0")).status == "finished"

        asyncio.run(main())
        assert not telemetry.enabled()
        loaded = [m for m in sys.modules if m.startswith("opentelemetry.")]
        assert not loaded, loaded
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={"PYTHONPATH": f"{blocker}:{ROOT}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# -- payloads and logs ----------------------------------------------------------------------


def test_run_requests_carry_the_dispatch_context() -> None:
    traceparent = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    request = RunRequest("sqlite:///x.db", "u", "t#0", traceparent=traceparent)
    assert request.to_dict()["traceparent"] == traceparent
    assert RunRequest.from_dict(request.to_dict()) == request
    # Trace context never fails a run: a malformed one is left out.
    garbled = {**request.to_dict(), "traceparent": "nonsense"}
    assert RunRequest.from_dict(garbled).traceparent is None
    assert "traceparent" not in RunRequest("sqlite:///x.db", "u", "t#0").to_dict()


async def test_log_records_carry_the_session_and_instance(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    @task("otel.logs")
    async def logs(context: TaskContext) -> dict[str, Any]:
        with context.get_logger_context({"step": 1}) as log:
            log.warning("inside the task")
        return {}

    manager = TriggerManager(storage, "logged")
    await manager.update_configuration(
        {
            "t": {"after": ["go"], "run": "otel.logs"},
            "t_bad": {"after": ["go"], "run": "otel.echo", "using": "nowhere"},
        }
    )
    with caplog.at_level(logging.INFO, logger="atriggers"):
        await manager.fire("go")
        await manager.join()
    records = [r for r in caplog.records if r.name.startswith("atriggers")]
    assert {r.getMessage() for r in records} >= {"inside the task"}
    by_message = {r.getMessage(): r for r in records}
    task_record = by_message["inside the task"]
    assert (task_record.uid, task_record.instance) == ("logged", "t#0")  # type: ignore[attr-defined]
    dispatch = next(r for r in records if r.getMessage().startswith("dispatching logged/t_bad#0 failed"))
    assert (dispatch.uid, dispatch.instance) == ("logged", "t_bad#0")  # type: ignore[attr-defined]


async def test_a_delayed_fire_feeds_its_runs_with_its_own_context(otel: Recorded) -> None:
    clock = FakeClock()
    async with MemoryStorage(clock=clock, close_timeout=1) as store:
        manager = TriggerManager(store, "later")
        await manager.update_configuration({"t": {"after": ["a", "b"], "run": "otel.echo"}})
        await manager.fire("a")
        assert await manager.fire("b", {"n": 1}, delay=30) == []
        await clock.advance(31)
        await manager.join()
        assert (await manager.get_instance("t#0")).status is Status.FINISHED
    fire_b = otel.one("fire b")
    run = otel.one("run t")
    assert linked(run) == {"a": span_id(otel.one("fire a")), "b": span_id(fire_b)}
    assert run.context is not None and fire_b.context is not None
    assert run.context.trace_id == fire_b.context.trace_id  # its dispatch is in the fire's trace
