"""The deployed side of the Lambda tests: what a function's handler module holds.

Loaded by `lambda_endpoint.py` in its own process (never by the test process):
it registers the tasks, and builds the handlers. Cascades configured with
``using: "lambda"`` (botocore) or ``using: "lambda-aio"`` (aiobotocore) are sent
back to the endpoint through a real, signing client.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

from aiobotocore.session import (  # type: ignore[import-untyped, unused-ignore]
    get_session as get_aio_session,
)
from botocore.config import Config  # type: ignore[import-untyped, unused-ignore]
from botocore.session import get_session  # type: ignore[import-untyped, unused-ignore]

import atriggers.testing.conformance.tasks  # noqa: F401  (the runner conformance suite's tasks)
from atriggers import TaskContext, task, with_context
from atriggers.runners import register_runner
from atriggers.runners.aws_lambda import LambdaRunner, make_handler

ACCESS_KEY = "AKIDATRIGGERSTEST"
SECRET_KEY = "atriggers-test-secret"
REGION = "us-east-1"
WORKER_FUNCTION = "atriggers-worker"

if os.environ.get("ATRIGGERS_TEST_SPANS"):  # the telemetry tests read this function's spans
    from otel_spans import record_spans

    record_spans(os.environ["ATRIGGERS_TEST_SPANS"])

CLIENT_CONFIG = Config(
    retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=2, read_timeout=20
)


def client_kwargs() -> dict[str, Any]:
    return {
        "region_name": REGION,
        "endpoint_url": os.environ["ATRIGGERS_TEST_LAMBDA_ENDPOINT"],
        "aws_access_key_id": ACCESS_KEY,
        "aws_secret_access_key": SECRET_KEY,
        "config": CLIENT_CONFIG,
    }


# -- tasks ------------------------------------------------------------------------


@task("lambda.add")
async def add(context: TaskContext) -> dict[str, Any]:
    start = context.trigger_kwargs["start"]
    blob = start.get("blob", "")
    return {"sum": start["a"] + start["b"], "blobLength": len(blob), "pid": os.getpid()}


@task("lambda.double")
async def double(context: TaskContext) -> dict[str, Any]:
    return {"doubled": context.trigger_kwargs["add"]["sum"] * 2, "pid": os.getpid()}


@task("lambda.fan_in")
async def fan_in(context: TaskContext) -> dict[str, Any]:
    return {"total": context.trigger_kwargs["left"]["sum"] + context.trigger_kwargs["right"]["sum"]}


@task("lambda.tally")
def tally(context: TaskContext) -> dict[str, Any]:
    # A plain function: runs in a worker thread of the handler's loop.
    return {"total": context.trigger_kwargs["double"]["doubled"] + 1}


@task("lambda.boom")
async def boom(context: TaskContext) -> dict[str, Any]:
    start = context.trigger_kwargs["start"]
    if start.get("explode", True):
        raise with_context(ValueError("boom: the task failed on purpose"), {"a": start.get("a")})
    return {"survived": True}


@task("lambda.whoami")
async def whoami(context: TaskContext) -> dict[str, Any]:
    return {"pid": os.getpid(), "loop": id(asyncio.get_running_loop())}


@task("lambda.flaky", max_retries=2)
async def flaky(context: TaskContext) -> dict[str, Any]:
    cooldown = float(context.trigger_kwargs["start"]["cooldown"])
    if context.instance.depth == 0:
        raise context.retry(RuntimeError("first try fails"), cooldown=cooldown)
    return {"ranAt": time.time()}


@task("lambda.die", max_retries=2)
async def die(context: TaskContext) -> dict[str, Any]:
    """A first run kills its execution environment (the function process dies
    mid-invocation, as on an out-of-memory kill); a retry returns."""
    if context.instance.depth == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return {"pid": os.getpid(), "depth": context.instance.depth}


@task("lambda.sleepy")
async def sleepy(context: TaskContext) -> dict[str, Any]:
    await asyncio.sleep(float(context.trigger_kwargs.get("start", {}).get("sleep", 30)))
    return {"slept": True}


# -- handlers ---------------------------------------------------------------------


async def start_sync() -> None:
    client = get_session().create_client("lambda", **client_kwargs())
    register_runner(LambdaRunner(client, WORKER_FUNCTION))


handler = make_handler(startup=start_sync)

# The aiobotocore client belongs to the handler's event loop, which lives as
# long as the container: created in startup, closed in shutdown.
_aio_clients: list[Any] = []


async def start_aio() -> None:
    context = get_aio_session().create_client("lambda", **client_kwargs())
    client = await context.__aenter__()
    _aio_clients.append(context)
    register_runner(LambdaRunner(client, WORKER_FUNCTION + "-aio"), "lambda-aio")


async def stop_aio() -> None:
    while _aio_clients:
        await _aio_clients.pop().__aexit__(None, None, None)


aio_handler = make_handler(startup=start_aio, shutdown=stop_aio)
