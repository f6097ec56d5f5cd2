"""Lambda invocations that never report back: the function process dies
mid-run, or the endpoint accepts the event and never runs it.

A running Lambda instance is bounded by the invocation's end (the function's
timeout), its deadline in storage: after it, a sweeper in any process finds it
lost and applies its task's ``onLost`` policy. An accepted event that is never
run leaves the instance ``scheduled``, with the runner's ``start_within`` as its
deadline: past it, it is lost too."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from lambda_fixtures import FUNCTION_TIMEOUT, WORKER, LambdaEndpoint, botocore_client, wait_for

from atriggers import Status, Sweeper, TriggerManager
from atriggers.clock import from_iso
from atriggers.runners import register_runner
from atriggers.runners.aws_lambda import FUNCTION_DIRECTIVE, LambdaRunner
from atriggers.storage import SQLiteStorage

pytestmark = pytest.mark.slow

#: A function with a 2-second timeout, and one whose events are dropped.
SHORT = "atriggers-short"
DROPPED = "atriggers-dropped"
INTERVAL = 0.2
SLACK = 0.8


@pytest.fixture(scope="module")
def endpoint() -> Iterator[LambdaEndpoint]:
    # Three execution environments: two die, one is left for the retry.
    endpoint = LambdaEndpoint(
        *("--app", "lambda_functions", "--containers", "3", "--timeout", str(FUNCTION_TIMEOUT)),
        *("--function", f"{WORKER}=handler", "--function", f"{SHORT}=handler@2"),
        *("--function", f"{DROPPED}=handler", "--drop", DROPPED),
    )
    endpoint.start()
    try:
        yield endpoint
    finally:
        endpoint.stop()


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    async with SQLiteStorage(tmp_path / "state.db") as store:
        yield store


@pytest.fixture
def runner(endpoint: LambdaEndpoint) -> Iterator[LambdaRunner]:
    client = botocore_client(endpoint.url)
    registered = register_runner(LambdaRunner(client, WORKER))
    assert isinstance(registered, LambdaRunner)
    try:
        yield registered
    finally:
        client.close()


def on(function: str, run: str, **directives: Any) -> dict[str, Any]:
    return {"after": ["start"], "run": run, "using": "lambda", FUNCTION_DIRECTIVE: function, **directives}


async def test_a_function_that_dies_mid_run_is_lost_at_the_invocations_end(
    runner: LambdaRunner, storage: SQLiteStorage, endpoint: LambdaEndpoint
) -> None:
    manager = TriggerManager(storage, "died")
    await manager.update_configuration(
        {
            "die_fail": on(SHORT, "lambda.die", onLost="fail"),
            "die_retry": on(SHORT, "lambda.die", onLost="retry"),
        }
    )
    async with Sweeper(storage, interval=INTERVAL) as sweeper:
        await manager.fire("start", {})
        failed = await wait_for(storage, "died", "die_fail#0", within=15)
        lost = await wait_for(storage, "died", "die_retry#0", (Status.REPLAYED,), within=15)
        clone = await wait_for(storage, "died", "die_retry#1", within=15)
    # Both ran (and died) in the endpoint: no owner, a deadline at the invocation's end.
    records = {r["payload"]["instance"]: r for r in endpoint.invocations("died")}
    assert records["die_fail#0"]["status"] == records["die_retry#0"]["status"] == "queued"  # never answered
    for instance in (failed, lost):
        assert instance.metadata["exceptionType"] == "atriggers.errors.InstanceLost"
        assert instance.owner is None
        deadline = from_iso(instance.metadata["deadline"])
        running = from_iso(instance.timestamps["running"])
        assert deadline - running == pytest.approx(2.0, abs=0.3)  # the function's timeout
        late = from_iso(instance.timestamps["failed"]) - deadline
        assert 0 <= late <= INTERVAL + SLACK, late
    assert failed.status is Status.FAILED
    assert clone.status is Status.FINISHED and clone.parent == "die_retry#0"
    assert records.get("die_retry#1") is not None  # the clone went back to Lambda
    assert sweeper.counts.get("lost") == 2, sweeper.counts
    after_start = {
        n: from_iso(i.timestamps["failed"]) - from_iso(i.timestamps["running"])
        for n, i in (("die_fail#0", failed), ("die_retry#0", lost))
    }
    print(
        "\n[lambda] lost after the run started (function timeout 2 s): "
        + ", ".join(f"{n} {s:.2f}s" for n, s in after_start.items())
    )


async def test_an_accepted_event_that_never_runs_is_recovered(
    endpoint: LambdaEndpoint, storage: SQLiteStorage
) -> None:
    # The runner's start_within (by default Lambda's six-hour maximum event age)
    # bounds how long a sent instance may wait to start: past it, it is lost.
    client = botocore_client(endpoint.url)
    try:
        register_runner(LambdaRunner(client, WORKER, start_within=1.0))
        manager = TriggerManager(storage, "dropped")
        await manager.update_configuration({"gone": on(DROPPED, "lambda.add")})
        async with Sweeper(storage, interval=INTERVAL) as sweeper:
            [scheduled] = await manager.fire("start", {"a": 1, "b": 2})
            assert [r["status"] for r in endpoint.invocations("dropped")] == ["dropped"]
            lost = await wait_for(storage, "dropped", scheduled.name, within=10)
    finally:
        client.close()
    assert lost.status is Status.FAILED, lost.metadata
    assert lost.metadata["exceptionType"] == "atriggers.errors.InstanceLost"
    assert "did not start by" in lost.metadata["exceptionInfo"]
    late = from_iso(lost.timestamps["failed"]) - from_iso(lost.timestamps["scheduled"])
    assert 1.0 <= late <= 1.0 + INTERVAL + SLACK, late
    assert sweeper.counts == {"lost": 1}
