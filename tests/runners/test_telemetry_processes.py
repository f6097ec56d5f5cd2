"""A three-trigger join fired from three OS processes: its run's span links to
the three fire spans, whether it runs on the asyncio runner (in the process
whose fire completed the join) or in a real Celery worker process. Spans are
recorded with the OpenTelemetry SDK in each process (otel_spans)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from celery_helpers import WorkerFactory, purge, wait_for_state

from atriggers import Status, TriggerManager
from atriggers.storage import SQLiteStorage

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

pytestmark = pytest.mark.slow


def fire_from_processes(url: str, uid: str, spans: Path, runner: str, env: dict[str, str]) -> list[int]:
    """Fire a, b and c, each from its own process, one after the other."""
    pids = []
    for trigger in ("a", "b", "c"):
        done = subprocess.run(
            [sys.executable, str(HERE / "otel_fire_child.py"), url, uid, trigger, str(spans), runner],
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]), **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        pids.append(next(s["pid"] for s in read(spans) if s["name"] == f"fire {trigger}"))
    assert len(set(pids)) == 3
    return pids


def read(spans: Path) -> list[dict[str, Any]]:
    from otel_spans import read_spans

    return read_spans(spans)


def check_fan_in(spans: Path, fire_pids: list[int]) -> dict[str, Any]:
    recorded = read(spans)
    fires = {s["name"].split()[1]: s for s in recorded if s["name"] in ("fire a", "fire b", "fire c")}
    assert [fires[t]["pid"] for t in "abc"] == fire_pids
    (run,) = [s for s in recorded if s["name"] == "run t_join"]
    assert run["kind"] == "CONSUMER"
    assert {link["atriggers.trigger"]: link["span_id"] for link in run["links"]} == {
        t: fires[t]["span_id"] for t in "abc"
    }
    # Its parent is the dispatch, made by the fire that completed the join.
    (dispatch,) = [s for s in recorded if s["name"] == "dispatch t_join"]
    assert dispatch["parent"] == fires["c"]["span_id"] and dispatch["pid"] == fire_pids[2]
    assert run["parent"] == dispatch["span_id"] and run["trace_id"] == dispatch["trace_id"]
    return run


async def configure(path: Path, uid: str, using: str) -> None:
    async with SQLiteStorage(path) as storage:
        await TriggerManager(storage, uid).update_configuration(
            {"t_join": {"after": ["a", "b", "c"], "run": "otel.join", "using": using}}
        )


async def test_fan_in_across_processes_on_the_asyncio_runner(tmp_path: Path) -> None:
    db, spans = tmp_path / "fanin.db", tmp_path / "spans"
    spans.mkdir()
    await configure(db, "fan-in", "asyncio")
    pids = fire_from_processes(f"sqlite:///{db}", "fan-in", spans, "asyncio", {})
    run = check_fan_in(spans, pids)
    assert run["pid"] == pids[2]  # run here, by the process whose fire completed the join
    async with SQLiteStorage(db) as storage:
        instance = await TriggerManager(storage, "fan-in").get_instance("t_join#0")
    assert instance.status is Status.FINISHED
    assert instance.result == {"pids": pids, "ran": pids[2]}


@pytest.mark.celery
async def test_fan_in_across_processes_on_a_celery_worker(
    redis_url: str, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    broker = f"{redis_url}/5"
    purge(broker)
    db, spans = tmp_path / "fanin.db", tmp_path / "spans"
    spans.mkdir()
    await configure(db, "fan-in", "celery")
    worker = start_worker("celery_otel_app", broker, env={"ATRIGGERS_TEST_SPANS": str(spans)})
    pids = fire_from_processes(
        f"sqlite:///{db}", "fan-in", spans, "celery", {"ATRIGGERS_TEST_BROKER": broker}
    )
    async with SQLiteStorage(db) as storage:
        manager = TriggerManager(storage, "fan-in")
        state = await wait_for_state(
            manager,
            lambda s: s.instances["t_join#0"].status is Status.FINISHED,
            explain=worker.output,
        )
    assert state.instances["t_join#0"].result == {"pids": pids, "ran": worker.pid}
    run = check_fan_in(spans, pids)
    assert run["pid"] == worker.pid
    assert run["attributes"]["atriggers.runner"] == "celery"


async def test_the_dispatch_context_travels_in_the_lambda_event(tmp_path: Path) -> None:
    from lambda_fixtures import WORKER, LambdaEndpoint, botocore_client, wait_for
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from atriggers import telemetry
    from atriggers.runners import RunnerRegistry
    from atriggers.runners.aws_lambda import LambdaRunner
    from atriggers.testing.conformance.tasks import ECHO

    spans = tmp_path / "spans"
    spans.mkdir()
    endpoint = LambdaEndpoint(*LambdaEndpoint.TEST_ARGS, env={"ATRIGGERS_TEST_SPANS": str(spans)})
    endpoint.start()
    here = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(here))
    telemetry.configure(tracer_provider=provider)
    client = botocore_client(endpoint.url)
    try:
        runners = RunnerRegistry()
        runners.register(LambdaRunner(client, WORKER))
        async with SQLiteStorage(tmp_path / "state.db") as storage:
            manager = TriggerManager(storage, "via-lambda", runners=runners)
            await manager.update_configuration(
                {"t_join": {"after": ["a", "b", "c"], "run": ECHO, "using": "lambda"}}
            )
            for trigger in ("a", "b", "c"):
                await manager.fire(trigger)
            done = await wait_for(storage, "via-lambda", "t_join#0")
            assert done.status is Status.FINISHED, done.metadata
        [invocation] = endpoint.invocations("via-lambda")
    finally:
        telemetry.configure()
        client.close()
        endpoint.stop()
    fires = {
        s.name.split()[1]: f"{s.context.span_id:016x}"
        for s in here.get_finished_spans()
        if s.name.startswith("fire ")
    }
    (dispatch,) = [s for s in here.get_finished_spans() if s.name == "dispatch t_join"]
    assert dispatch.context is not None
    assert invocation["payload"]["traceparent"].split("-")[2] == f"{dispatch.context.span_id:016x}"
    (run,) = [s for s in read(spans) if s["name"] == "run t_join"]
    assert run["parent"] == f"{dispatch.context.span_id:016x}"
    assert run["attributes"]["atriggers.runner"] == "lambda"
    assert {link["atriggers.trigger"]: link["span_id"] for link in run["links"]} == {
        t: fires[t] for t in "abc"
    }
