"""LambdaRunner end to end: real botocore/aiobotocore clients sign and send
invocations over HTTP to a local Lambda endpoint process, which runs the
handler; both processes share the session state in one SQLite file."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from lambda_fixtures import (
    ACCESS_KEY,
    DENIED,
    REGION,
    SECRET_KEY,
    THROTTLED,
    WORKER,
    WORKER_AIO,
    WORKER_SHORT,
    LambdaEndpoint,
    aio_client_context,
    botocore_client,
    closed_port_url,
    wait_for,
)

from atriggers import ConfigurationError, Status, Sweeper, TaskInstance, TriggerManager
from atriggers.runners import get_runner, register_runner, unregister_runner
from atriggers.runners.aws_lambda import (
    FUNCTION_DIRECTIVE,
    LambdaInvokeError,
    LambdaRunner,
    make_handler,
)
from atriggers.storage import SQLiteStorage
from atriggers.testing.conformance import RunnerConformance, RunnerHarness
from atriggers.testing.conformance.tasks import BLOCK

pytestmark = pytest.mark.slow

INVOKE_ERROR = f"{LambdaInvokeError.__module__}.{LambdaInvokeError.__qualname__}"


@pytest.fixture(scope="module")
def lambda_endpoint() -> Iterator[LambdaEndpoint]:
    endpoint = LambdaEndpoint()
    endpoint.start()
    try:
        yield endpoint
    finally:
        endpoint.stop()
    # The handlers closed their clients, storages and loops without complaint.
    stderr = "".join(endpoint.stderr_lines)
    assert endpoint.returncode == 0, stderr
    for complaint in ("Unclosed", "Exception ignored", "was destroyed", "Error in atexit"):
        assert complaint not in stderr, stderr


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    async with SQLiteStorage(tmp_path / "state.db") as store:
        yield store


@pytest.fixture
def runner(lambda_endpoint: LambdaEndpoint) -> Iterator[LambdaRunner]:
    """The app side: a botocore client, registered as the "lambda" runner."""
    client = botocore_client(lambda_endpoint.url)
    registered = register_runner(LambdaRunner(client, WORKER))
    assert isinstance(registered, LambdaRunner)
    try:
        yield registered
    finally:
        client.close()


def lambda_task(run: str, after: list[str], **directives: Any) -> dict[str, Any]:
    return {"after": after, "run": run, "using": "lambda", **directives}


async def test_success_sends_a_small_payload_whatever_the_kwargs(
    runner: LambdaRunner, storage: SQLiteStorage, lambda_endpoint: LambdaEndpoint
) -> None:
    manager = TriggerManager(storage, "success")
    await manager.update_configuration({"add": lambda_task("lambda.add", ["start"])})
    blob = "x" * 600_000  # far over Lambda's 256 KiB asynchronous payload limit
    scheduled = await manager.fire("start", {"a": 2, "b": 3, "blob": blob})
    assert [i.name for i in scheduled] == ["add#0"]

    done = await wait_for(storage, "success", "add#0")
    assert done.status is Status.FINISHED, done.metadata
    assert done.result is not None
    assert done.result["sum"] == 5
    assert done.result["blobLength"] == len(blob)
    assert done.result["pid"] != os.getpid()  # ran in the endpoint's process

    [invocation] = await lambda_endpoint.answered("success")
    assert invocation["function"] == WORKER
    assert invocation["invocationType"] == "Event"
    assert invocation["payload"] == {
        "storage": storage.url,
        "uid": "success",
        "instance": "add#0",
        "manager": "default",
    }
    assert len(json.dumps(invocation["payload"])) < 1024
    assert invocation["outcome"] == {"uid": "success", "instance": "add#0", "status": "finished"}


async def test_cascade_dispatches_through_configured_runners_in_the_function(
    runner: LambdaRunner, storage: SQLiteStorage, lambda_endpoint: LambdaEndpoint
) -> None:
    manager = TriggerManager(storage, "cascade")
    await manager.update_configuration(
        {
            "add": lambda_task("lambda.add", ["start"]),
            # Sent by the function itself, through its own signing client.
            "double": lambda_task("lambda.double", ["add"]),
            # Runs inside the function's process, on the handler's loop.
            "tally": {"after": ["double"], "run": "lambda.tally", "using": "asyncio"},
        }
    )
    await manager.fire("start", {"a": 20, "b": 1})

    tally = await wait_for(storage, "cascade", "tally#0")
    assert tally.status is Status.FINISHED, tally.metadata
    assert tally.result == {"total": 43}
    state = await manager.get_state()
    assert {n: i.status for n, i in state.instances.items()} == {
        "add#0": Status.FINISHED,
        "double#0": Status.FINISHED,
        "tally#0": Status.FINISHED,
    }
    invoked = [r["payload"]["instance"] for r in lambda_endpoint.invocations("cascade")]
    assert invoked == ["add#0", "double#0"]  # tally ran in-process, not invoked


async def test_task_failure_is_stored_and_replayable(
    runner: LambdaRunner, storage: SQLiteStorage, lambda_endpoint: LambdaEndpoint
) -> None:
    manager = TriggerManager(storage, "failure")
    await manager.update_configuration({"boom": lambda_task("lambda.boom", ["start"])})
    await manager.fire("start", {"a": 7})

    failed = await wait_for(storage, "failure", "boom#0")
    assert failed.status is Status.FAILED
    assert failed.metadata["exceptionType"] == "builtins.ValueError"
    assert "boom: the task failed on purpose" in failed.metadata["exceptionInfo"]
    assert failed.metadata["exceptionContext"] == {"a": 7}
    # A task's failure is data, not an invocation error (Lambda must not retry it).
    [invocation] = await lambda_endpoint.answered("failure")
    assert invocation["status"] == "ok"
    assert invocation["outcome"]["status"] == "failed"

    clone = await manager.replay_failed_instance("boom#0", {"start": {"explode": False}})
    assert clone.name == "boom#1"
    replayed = await wait_for(storage, "failure", "boom#1")
    assert replayed.status is Status.FINISHED
    assert replayed.result == {"survived": True}
    assert replayed.parent == "boom#0"


@pytest.mark.parametrize(
    ("function", "code", "http_status", "message"),
    [
        ("atriggers-no-such-function", "ResourceNotFoundException", 404, "Function not found"),
        (THROTTLED, "TooManyRequestsException", 429, "Rate Exceeded."),
        (DENIED, "AccessDeniedException", 403, "not authorized to perform: lambda:InvokeFunction"),
    ],
)
async def test_rejected_invoke_fails_the_instance_with_the_aws_error(
    runner: LambdaRunner,
    storage: SQLiteStorage,
    lambda_endpoint: LambdaEndpoint,
    function: str,
    code: str,
    http_status: int,
    message: str,
) -> None:
    uid = f"rejected-{code}"
    manager = TriggerManager(storage, uid)
    await manager.update_configuration(
        {
            "add": lambda_task("lambda.add", ["start"], **{FUNCTION_DIRECTIVE: function}),
        }
    )
    scheduled = await manager.fire("start", {"a": 1, "b": 1})  # does not raise
    assert [i.name for i in scheduled] == ["add#0"]

    failed = await manager.get_instance("add#0")
    assert failed.status is Status.FAILED
    assert failed.metadata["exceptionType"] == INVOKE_ERROR
    context = failed.metadata["exceptionContext"]
    assert context["awsErrorCode"] == code
    assert message in context["awsErrorMessage"]
    assert context["httpStatus"] == http_status
    assert context["lambdaFunction"] == function
    assert code in failed.metadata["exceptionInfo"]
    assert "botocore" in failed.metadata["exceptionInfo"]  # the cause, kept
    assert lambda_endpoint.invocations(uid) == []  # nothing ran


async def test_unreachable_endpoint_fails_the_instance(storage: SQLiteStorage) -> None:
    client = botocore_client(closed_port_url())
    register_runner(LambdaRunner(client, WORKER))
    try:
        manager = TriggerManager(storage, "unreachable")
        await manager.update_configuration({"add": lambda_task("lambda.add", ["start"])})
        await manager.fire("start", {"a": 1, "b": 1})
        failed = await manager.get_instance("add#0")
    finally:
        client.close()
    assert failed.status is Status.FAILED
    assert failed.metadata["exceptionType"] == INVOKE_ERROR
    assert failed.metadata["exceptionContext"]["awsErrorCode"] == "EndpointConnectionError"
    assert "Could not connect to the endpoint URL" in failed.metadata["exceptionInfo"]


async def test_bad_signature_is_rejected_by_the_endpoint(
    storage: SQLiteStorage, lambda_endpoint: LambdaEndpoint
) -> None:
    # The endpoint checks SigV4 signatures: a wrong secret cannot invoke.
    client = botocore_client(lambda_endpoint.url, secret="not-the-secret")
    register_runner(LambdaRunner(client, WORKER))
    try:
        manager = TriggerManager(storage, "signature")
        await manager.update_configuration({"add": lambda_task("lambda.add", ["start"])})
        await manager.fire("start", {"a": 1, "b": 1})
        failed = await manager.get_instance("add#0")
    finally:
        client.close()
    assert failed.status is Status.FAILED
    assert failed.metadata["exceptionContext"]["awsErrorCode"] == "InvalidSignatureException"


@pytest.fixture
async def aio_runner(lambda_endpoint: LambdaEndpoint) -> AsyncIterator[LambdaRunner]:
    async with aio_client_context(lambda_endpoint.url) as client:
        runner = LambdaRunner(client, WORKER_AIO)
        register_runner(runner, "lambda-aio")
        yield runner


async def test_aiobotocore_client_success_and_cascade(
    aio_runner: LambdaRunner, storage: SQLiteStorage, lambda_endpoint: LambdaEndpoint
) -> None:
    assert aio_runner.asynchronous
    manager = TriggerManager(storage, "aio")
    await manager.update_configuration(
        {
            "add": {"after": ["start"], "run": "lambda.add", "using": "lambda-aio"},
            # The function's handler sends this one with its own aiobotocore client,
            # created on the handler's long-lived loop.
            "double": {"after": ["add"], "run": "lambda.double", "using": "lambda-aio"},
        }
    )
    await manager.fire("start", {"a": 4, "b": 5})
    double = await wait_for(storage, "aio", "double#0")
    assert double.status is Status.FINISHED, double.metadata
    assert double.result is not None and double.result["doubled"] == 18
    records = lambda_endpoint.invocations("aio")
    assert [(r["function"], r["payload"]["instance"]) for r in records] == [
        (WORKER_AIO, "add#0"),
        (WORKER_AIO, "double#0"),
    ]


async def test_aiobotocore_client_rejected_invoke(aio_runner: LambdaRunner, storage: SQLiteStorage) -> None:
    manager = TriggerManager(storage, "aio-throttled")
    await manager.update_configuration(
        {
            "add": {
                "after": ["start"],
                "run": "lambda.add",
                "using": "lambda-aio",
                FUNCTION_DIRECTIVE: THROTTLED,
            },
        }
    )
    await manager.fire("start", {"a": 1, "b": 1})
    failed = await manager.get_instance("add#0")
    assert failed.status is Status.FAILED
    assert failed.metadata["exceptionContext"]["awsErrorCode"] == "TooManyRequestsException"
    assert failed.metadata["exceptionContext"]["httpStatus"] == 429


async def test_each_container_keeps_its_loop_across_invocations(
    runner: LambdaRunner, storage: SQLiteStorage
) -> None:
    manager = TriggerManager(storage, "container")
    await manager.update_configuration(
        {
            "who": {**lambda_task("lambda.whoami", []), "andEvery": "ping"},
        }
    )
    results = []
    for n in range(4):  # one at a time: 4 invocations over the endpoint's 2 containers
        await manager.fire("ping")
        done = await wait_for(storage, "container", f"who#{n}")
        assert done.status is Status.FINISHED
        assert done.result is not None
        results.append(done.result)
    loops_by_pid: dict[int, set[int]] = {}
    for result in results:
        loops_by_pid.setdefault(result["pid"], set()).add(result["loop"])
    assert all(len(loops) == 1 for loops in loops_by_pid.values()), loops_by_pid
    assert len(loops_by_pid) < len(results)  # some container was reused


async def test_fan_in_across_containers_dispatches_exactly_once(
    runner: LambdaRunner, storage: SQLiteStorage, lambda_endpoint: LambdaEndpoint
) -> None:
    # Two instances of each session run at once in two function processes and
    # both cascade into "total": compare-and-swap on the shared SQLite file
    # must schedule (and invoke) it exactly once per session.
    configuration = {
        "left": lambda_task("lambda.add", ["start"]),
        "right": lambda_task("lambda.add", ["start"]),
        "total": lambda_task("lambda.fan_in", ["left", "right"]),
    }
    uids = [f"fan-in-{n}" for n in range(8)]

    async def session(uid: str) -> None:
        manager = TriggerManager(storage, uid)
        await manager.update_configuration(configuration)
        await manager.fire("start", {"a": len(uid), "b": 1})

    await asyncio.gather(*(session(uid) for uid in uids))
    for uid in uids:
        total = await wait_for(storage, uid, "total#0")
        assert total.status is Status.FINISHED, total.metadata
        expected = 2 * (len(uid) + 1)
        assert total.result == {"total": expected}
        state = await storage.load_all(uid)
        assert sorted(state.instances) == ["left#0", "right#0", "total#0"]
        invoked = [r["payload"]["instance"] for r in lambda_endpoint.invocations(uid)]
        assert sorted(invoked) == ["left#0", "right#0", "total#0"]
    containers = {r["container"] for uid in uids for r in await lambda_endpoint.answered(uid)}
    assert len(containers) == 2  # both execution environments took part


async def test_a_cooldown_waits_in_the_due_index_not_in_the_function(
    runner: LambdaRunner, storage: SQLiteStorage, lambda_endpoint: LambdaEndpoint
) -> None:
    # The clone is sent once its cooldown is over, by whichever live process acts
    # on the due index first (here, this one's sweeper): the function is not billed
    # for the wait, and the payload holds no notBefore to sleep on.
    manager = TriggerManager(storage, "cooldown")
    await manager.update_configuration({"flaky": lambda_task("lambda.flaky", ["start"])})
    async with Sweeper(storage, interval=0.05):
        await manager.fire("start", {"cooldown": 1.0})
        retried = await wait_for(storage, "cooldown", "flaky#1")
    assert retried.status is Status.FINISHED, retried.metadata
    scheduled_at = datetime.fromisoformat(retried.timestamps["scheduled"]).timestamp()
    started_at = datetime.fromisoformat(retried.timestamps["running"]).timestamp()
    assert started_at >= scheduled_at + 1.0
    payload = lambda_endpoint.invocations("cooldown")[1]["payload"]
    assert payload["instance"] == "flaky#1" and "notBefore" not in payload


async def test_run_overrunning_the_function_timeout_is_stored_failed(
    runner: LambdaRunner, storage: SQLiteStorage
) -> None:
    manager = TriggerManager(storage, "overrun")
    await manager.update_configuration(
        {
            "sleepy": lambda_task("lambda.sleepy", ["start"], **{FUNCTION_DIRECTIVE: WORKER_SHORT}),
            "quick": lambda_task("lambda.add", ["start"], **{FUNCTION_DIRECTIVE: WORKER_SHORT}),
            # An in-process cascade still running at the deadline is cancelled too.
            "after_quick": {"after": ["quick"], "run": "lambda.sleepy", "using": "asyncio"},
        }
    )
    started = time.monotonic()
    await manager.fire("start", {"sleep": 30, "a": 1, "b": 2})
    overran = await wait_for(storage, "overrun", "sleepy#0")
    cascaded = await wait_for(storage, "overrun", "after_quick#0")
    assert time.monotonic() - started < 10  # 2s timeout each, not 30s of sleep
    assert overran.status is Status.FAILED
    # The cancelled run stores itself failed first; the handler then names the
    # reason (a moment later on a slow machine).
    for _ in range(100):
        if overran.metadata["exceptionType"].endswith("LambdaTimeoutError"):
            break
        await asyncio.sleep(0.05)
        overran = (await storage.load_all("overrun")).instances["sleepy#0"]
    assert overran.metadata["exceptionType"].endswith("LambdaTimeoutError")
    assert "did not finish before the Lambda invocation's deadline" in (overran.metadata["exceptionInfo"])
    assert (await manager.get_instance("quick#0")).status is Status.FINISHED
    assert cascaded.status is Status.FAILED
    assert cascaded.metadata["exceptionType"] == "asyncio.exceptions.CancelledError"


async def test_a_long_cooldown_invokes_nothing_until_it_is_over(
    runner: LambdaRunner, storage: SQLiteStorage, lambda_endpoint: LambdaEndpoint
) -> None:
    manager = TriggerManager(storage, "long-cooldown")
    await manager.update_configuration({"flaky": lambda_task("lambda.flaky", ["start"])})
    await manager.fire("start", {"cooldown": 3600})
    await wait_for(storage, "long-cooldown", "flaky#0", (Status.REPLAYED,))
    clone = (await storage.load_all("long-cooldown")).instances["flaky#1"]
    assert clone.status is Status.SCHEDULED
    not_before = datetime.fromisoformat(clone.metadata["notBefore"]).timestamp()
    assert not_before == pytest.approx(time.time() + 3600, abs=60)
    assert [i["payload"]["instance"] for i in lambda_endpoint.invocations("long-cooldown")] == ["flaky#0"]


async def test_task_without_a_function_fails_naming_the_directive(
    lambda_endpoint: LambdaEndpoint, storage: SQLiteStorage
) -> None:
    client = botocore_client(lambda_endpoint.url)
    register_runner(LambdaRunner(client))  # no default function
    try:
        manager = TriggerManager(storage, "no-function")
        await manager.update_configuration({"add": lambda_task("lambda.add", ["start"])})
        await manager.fire("start", {"a": 1, "b": 1})
        failed = await manager.get_instance("add#0")
    finally:
        client.close()
    assert failed.status is Status.FAILED
    assert failed.metadata["exceptionType"] == (
        f"{ConfigurationError.__module__}.{ConfigurationError.__qualname__}"
    )
    assert "'lambdaFunction'" in failed.metadata["exceptionInfo"]


def test_entry_point_gives_a_lambda_runner() -> None:
    unregister_runner("lambda")
    runner = get_runner("lambda")
    assert isinstance(runner, LambdaRunner)
    assert runner.client is None  # created from the environment on first use


async def test_malformed_event_is_an_invocation_error(lambda_endpoint: LambdaEndpoint) -> None:
    client = botocore_client(lambda_endpoint.url)
    try:
        response = client.invoke(FunctionName=WORKER, Payload=b'{"uid": "x"}')
        answer = json.loads(response["Payload"].read())
    finally:
        client.close()
    # Raised, so that Lambda retries the event and then hands it to the
    # function's dead-letter queue or on-failure destination.
    assert response["FunctionError"] == "Unhandled"
    assert answer["errorType"] == "InvalidInput"
    assert "'storage' must be a non-empty string" in answer["errorMessage"]


async def test_handler_called_on_a_running_loop_points_to_handle() -> None:
    handler = make_handler()
    with pytest.raises(RuntimeError, match=r"await handler\.handle"):
        handler({"storage": "memory://", "uid": "u", "instance": "t#0"})
    handler.close()


def test_core_never_imports_botocore_and_a_missing_extra_is_named() -> None:
    script = """
import sys
import atriggers, atriggers.runners, atriggers.remote, atriggers.storage
assert "botocore" not in sys.modules, "the core imported botocore"
sys.modules["botocore"] = None  # as if the extra were not installed
try:
    import atriggers.runners.aws_lambda
except ImportError as exc:
    print(exc)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "install the 'lambda' extra (pip install 'atriggers[lambda]')" in done.stdout


async def test_aclose_closes_the_client_it_made_and_leaves_a_given_one_open(
    lambda_endpoint: LambdaEndpoint, storage: SQLiteStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The runner's own client comes from the environment, as in a deployment.
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", lambda_endpoint.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    own = LambdaRunner(function_name=WORKER)
    given = botocore_client(lambda_endpoint.url)
    theirs = LambdaRunner(given, WORKER)
    manager = TriggerManager(storage, "aclose")
    await manager.update_configuration({"add": {**lambda_task("lambda.add", ["start"]), "andEvery": "start"}})
    try:
        register_runner(own)
        await manager.fire("start", {"a": 1, "b": 1})
        made = own.client
        assert made is not None
        await own.aclose()
        assert own.client is None
        await own.aclose()  # twice is fine
        await manager.fire("start", {"a": 2, "b": 2})  # a new client on next use
        assert own.client is not None and own.client is not made
        register_runner(theirs)
        await manager.fire("start", {"a": 3, "b": 3})
        await theirs.aclose()
        assert theirs.client is given
        await manager.fire("start", {"a": 4, "b": 4})  # still open: the caller's to close
        for n, total in enumerate([2, 4, 6, 8]):
            done = await wait_for(storage, "aclose", f"add#{n}")
            assert done.result is not None and done.result["sum"] == total
    finally:
        await own.aclose()
        given.close()


async def deliver_again(endpoint: LambdaEndpoint, manager: TriggerManager, instance: TaskInstance) -> None:
    """Lambda delivers asynchronous events at least once: deliver it again,
    synchronously, so the handler's answer says it is handled."""
    client = botocore_client(endpoint.url)
    try:
        payload = LambdaRunner.payload_for(manager, instance)
        response = await asyncio.to_thread(client.invoke, FunctionName=WORKER, Payload=payload)
        answer = json.loads(response["Payload"].read())
    finally:
        client.close()
    assert answer == {"uid": manager.uid, "instance": instance.name, "status": "notScheduled"}


async def cancelled_at_the_deadline(manager: TriggerManager, instance: TaskInstance) -> None:
    """Nothing to do: the handler cancels a run at the function's timeout."""


class TestLambdaRunnerConformance(RunnerConformance):
    @pytest.fixture
    async def runner_harness(
        self, lambda_endpoint: LambdaEndpoint, storage: SQLiteStorage
    ) -> AsyncIterator[RunnerHarness]:
        client = botocore_client(lambda_endpoint.url)
        nowhere = botocore_client(closed_port_url())
        yield RunnerHarness(
            LambdaRunner(client, WORKER),
            storage,
            unreachable=LambdaRunner(nowhere, WORKER),
            deliver_again=lambda manager, instance: deliver_again(lambda_endpoint, manager, instance),
            cancel=cancelled_at_the_deadline,
            # The function with a 2-second timeout: the suite's long task outlives it.
            directives={BLOCK: {FUNCTION_DIRECTIVE: WORKER_SHORT}},
        )
        client.close()
        nowhere.close()
