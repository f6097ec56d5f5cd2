"""`LambdaRunner`: run trigger tasks as asynchronous AWS Lambda invocations.

App side: register a `LambdaRunner` around a boto-compatible Lambda client and
configure tasks with ``using: "lambda"``. Dispatching an instance is one
``invoke(FunctionName=..., InvocationType="Event", Payload=...)`` whose payload is
a `RunRequest` (storage URL, uid, instance, manager name: a few hundred bytes
whatever the trigger kwargs, which the function reads from storage).

Function side: build a handler with `make_handler` at module level of the
function's handler module (or use the ready `handler`). It rebuilds storage and
manager from the request and runs the instance through
`TriggerManager.run_instance`, like every other runner, storing the outcome and
cascading.

Needs the ``lambda`` extra (botocore): ``pip install 'atriggers[lambda]'``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import anyio.to_thread

try:
    from botocore.exceptions import (  # type: ignore[import-untyped, unused-ignore]
        BotoCoreError,
        ClientError,
    )
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "atriggers.runners.aws_lambda needs botocore: install the 'lambda' extra "
        "(pip install 'atriggers[lambda]')"
    ) from exc

from ..context import exception_metadata
from ..errors import ConfigurationError, DispatchError, InvalidInput, Problem, TriggerError
from ..instance import Meta, Status
from ..manager import get_manager_class
from ..remote import RunRequest, StoragePool, execute_request
from .base import BaseRunner

if TYPE_CHECKING:
    from ..instance import TaskInstance
    from ..manager import TriggerManager

__all__ = [
    "DEFAULT_START_WITHIN",
    "FUNCTION_DIRECTIVE",
    "MAX_EVENT_PAYLOAD",
    "NOT_BEFORE_KEY",
    "LambdaClient",
    "LambdaCooldownError",
    "LambdaHandler",
    "LambdaInvokeError",
    "LambdaRunner",
    "LambdaTimeoutError",
    "handler",
    "make_handler",
]

log = logging.getLogger("atriggers.lambda")

#: The custom directive naming a task's function (overrides the runner's default).
FUNCTION_DIRECTIVE = "lambdaFunction"
#: Lambda's limit on the payload of an asynchronous (``Event``) invocation, bytes.
MAX_EVENT_PAYLOAD = 256 * 1024
#: Default `LambdaRunner.start_within`: Lambda keeps an asynchronous event for at
#: most six hours (its maximum event age), then drops it; a quarter hour of margin.
DEFAULT_START_WITHIN = 6 * 3600 + 900.0
#: Payload key: epoch seconds before which the handler must not run the instance.
NOT_BEFORE_KEY = "notBefore"


class LambdaClient(Protocol):
    """What `LambdaRunner` needs of a client: boto3/botocore's ``invoke``, or
    aiobotocore's (which returns an awaitable)."""

    def invoke(self, **kwargs: Any) -> Any: ...


class LambdaInvokeError(DispatchError):
    """Lambda (or the way to it) rejected an invocation: throttled, unknown
    function, access denied, endpoint unreachable, no credentials.

    Raised by `LambdaRunner.run`, so the instance is stored ``failed`` (and can be
    replayed); its ``exceptionContext`` holds `code`, `message`, the function
    name and the HTTP status. The botocore exception is the ``__cause__``.
    """

    def __init__(
        self,
        function_name: str,
        instance: str,
        code: str,
        message: str,
        http_status: int | None = None,
    ) -> None:
        self.function_name = function_name
        self.instance = instance
        #: AWS error code (``Error.Code``, e.g. ``TooManyRequestsException``), or
        #: the botocore exception class for errors without a response
        #: (``EndpointConnectionError``).
        self.code = code
        #: AWS error message (``Error.Message``).
        self.message = message
        self.http_status = http_status
        status = f" (HTTP {http_status})" if http_status is not None else ""
        super().__init__(
            f"Lambda did not accept the invocation of function {function_name!r} for "
            f"instance {instance!r}: {code}{status}: {message}"
        )
        self.context = {
            "awsErrorCode": code,
            "awsErrorMessage": message,
            "lambdaFunction": function_name,
            "httpStatus": http_status,
        }


class LambdaCooldownError(TriggerError):
    """The instance's ``cooldown`` does not fit in what is left of the Lambda
    invocation's time: it is stored failed rather than cut off mid-wait."""


class LambdaTimeoutError(TriggerError):
    """The instance was still running when the Lambda invocation neared its
    timeout: it was cancelled and stored failed rather than killed mid-run."""


class LambdaRunner(BaseRunner):
    """Dispatches each instance as one asynchronous invocation of a Lambda function.

    `client` is a boto3/botocore Lambda client (its blocking ``invoke`` runs in a
    worker thread) or an aiobotocore one (awaited on the running loop); without
    one, a botocore client is created on first use from the environment's
    region and credentials. `function_name` is the default function (a name, an
    ARN, or ``name:alias``); a task's ``lambdaFunction`` directive overrides it.

    An invocation Lambda rejects raises `LambdaInvokeError`, and the instance is
    stored ``failed`` with the AWS error code and message. botocore's own retries
    (for throttling, per the client's ``retries`` config) happen before that.

    ``cooldown`` (a task's ``retry(cooldown=...)``) is honoured in the function:
    the invocation is sent at once with ``notBefore`` in the payload, and the
    handler waits until then before running the instance (see `LambdaHandler`).
    The wait is thus durable (the event sits in Lambda's queue, not in this
    process) but billed, and bounded by the function's timeout.

    `aclose` closes the client the runner created itself (a later dispatch
    creates a new one); a client passed in is the caller's to close.
    """

    name: ClassVar[str] = "lambda"

    def __init__(
        self,
        client: LambdaClient | None = None,
        function_name: str | None = None,
        *,
        asynchronous: bool | None = None,
        start_within: float | None = DEFAULT_START_WITHIN,
    ) -> None:
        if function_name is not None and (not isinstance(function_name, str) or not function_name.strip()):
            raise ValueError(f"function_name must be a non-empty string, not {function_name!r}")
        if client is not None and not callable(getattr(client, "invoke", None)):
            raise TypeError(f"client must have an invoke() method like a boto3 Lambda client, not {client!r}")
        if start_within is not None and not start_within > 0:
            raise ValueError(
                f"start_within must be a positive number of seconds or None, not {start_within!r}"
            )
        self.client = client
        self.function_name = function_name
        #: An instance not started this long after it was sent is lost (Lambda
        #: dropped the event, or gave up retrying it): a sweeper recovers it.
        self.start_within = start_within
        # Only a client made by `_default_client` is closed by `aclose`.
        self._owns_client = False
        #: Whether ``client.invoke`` is awaited on the loop (True) or called in a
        #: worker thread (False); guessed from the client when None.
        self.asynchronous = _is_async_client(client) if asynchronous is None else asynchronous
        self._client_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} function={self.function_name!r} client={self.client!r}>"

    def function_for(self, instance: TaskInstance) -> str:
        """The function `instance` is sent to: its ``lambdaFunction`` directive,
        else the runner's `function_name`. Raises `ConfigurationError` if neither."""
        config = instance.config
        configured = config.extras.get(FUNCTION_DIRECTIVE) if config is not None else None
        if configured is not None:
            if not isinstance(configured, str) or not configured.strip():
                raise ConfigurationError(
                    [
                        Problem(
                            instance.task_name,
                            FUNCTION_DIRECTIVE,
                            f"must be a non-empty Lambda function name or ARN, not {configured!r}",
                        )
                    ]
                )
            return configured
        if self.function_name is None:
            raise ConfigurationError(
                [
                    Problem(
                        instance.task_name,
                        FUNCTION_DIRECTIVE,
                        "is required: this LambdaRunner has no default function_name",
                    )
                ]
            )
        return self.function_name

    @staticmethod
    def payload_for(manager: TriggerManager, instance: TaskInstance) -> bytes:
        """The invocation payload: the `RunRequest` of `instance` as JSON. (A
        retry's cooldown waits in the due index: the clone is sent once it is
        over, so the function is not billed for waiting.)"""
        request = RunRequest.for_instance(manager, instance)
        data: dict[str, Any] = request.to_dict()
        payload = json.dumps(data, separators=(",", ":")).encode()
        if len(payload) > MAX_EVENT_PAYLOAD:
            # Only a pathologically long storage URL or uid can get here.
            raise InvalidInput(
                f"the run request of {instance.name!r} is {len(payload)} bytes, over Lambda's "
                f"{MAX_EVENT_PAYLOAD}-byte limit for asynchronous invocations"
            )
        return payload

    async def run(self, manager: TriggerManager, instance: TaskInstance) -> None:
        function = self.function_for(instance)
        payload = self.payload_for(manager, instance)
        try:
            response = await self._invoke(FunctionName=function, InvocationType="Event", Payload=payload)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            meta = exc.response.get("ResponseMetadata", {})
            raise LambdaInvokeError(
                function,
                instance.name,
                str(error.get("Code") or "Unknown"),
                str(error.get("Message") or exc),
                meta.get("HTTPStatusCode"),
            ) from exc
        except BotoCoreError as exc:
            raise LambdaInvokeError(function, instance.name, type(exc).__name__, str(exc)) from exc
        except (TimeoutError, OSError) as exc:
            # Clients that are not botocore underneath may let these through.
            raise LambdaInvokeError(function, instance.name, type(exc).__name__, str(exc)) from exc
        status = response.get("StatusCode") if isinstance(response, Mapping) else None
        if isinstance(response, Mapping) and response.get("FunctionError"):
            # Emulators and proxies may run an Event invocation at once and answer
            # X-Amz-Function-Error: keep the function's own error type and message.
            code, message = await _function_error(response)
            raise LambdaInvokeError(function, instance.name, code, message, status)
        if status != 202:
            raise LambdaInvokeError(
                function,
                instance.name,
                "UnexpectedResponse",
                f"an asynchronous invocation answers HTTP 202, this one {status!r}",
                status,
            )
        log.debug(
            "%s/%s sent to Lambda function %r",
            manager.uid,
            instance.name,
            function,
            extra={"uid": manager.uid, "instance": instance.name},
        )

    async def _invoke(self, **kwargs: Any) -> Any:
        client = self.client
        if client is None:
            client = await anyio.to_thread.run_sync(self._default_client)
        if self.asynchronous:
            return await client.invoke(**kwargs)
        result = await anyio.to_thread.run_sync(lambda: client.invoke(**kwargs))
        if inspect.isawaitable(result):
            return await result
        return result

    def _default_client(self) -> LambdaClient:
        with self._client_lock:
            if self.client is None:
                import botocore.session  # type: ignore[import-untyped, unused-ignore]

                self.client = botocore.session.get_session().create_client("lambda")
                self.asynchronous = False
                self._owns_client = True
            return self.client

    async def aclose(self) -> None:
        """Close the botocore client this runner created (none is created until
        the first dispatch without a client). A client given to the constructor
        is left open: whoever made it closes it (an aiobotocore client, for
        instance, with the ``async with`` that opened it)."""
        with self._client_lock:
            client = self.client if self._owns_client else None
            if client is not None:
                self.client, self._owns_client = None, False
        if client is not None:
            client.close()  # type: ignore[attr-defined]


async def _function_error(response: Mapping[str, Any]) -> tuple[str, str]:
    """The error type and message a function reported (``X-Amz-Function-Error``
    and the ``errorType``/``errorMessage`` of its payload)."""
    payload = response.get("Payload")
    raw: object = b""
    if payload is not None and callable(getattr(payload, "read", None)):
        raw = payload.read()
        if inspect.isawaitable(raw):
            raw = await raw
    try:
        body = json.loads(raw) if isinstance(raw, (bytes, str)) and raw else {}
    except ValueError:
        body = {}
    if not isinstance(body, Mapping):
        body = {}
    code = str(body.get("errorType") or response.get("FunctionError"))
    message = str(body.get("errorMessage") or raw or "the function reported an error")
    return code, message


def _is_async_client(client: object) -> bool:
    if client is None:
        return False
    if inspect.iscoroutinefunction(getattr(client, "invoke", None)):
        return True
    # aiobotocore's generated methods are plain functions returning coroutines;
    # the coroutine function underneath gives it away.
    return inspect.iscoroutinefunction(getattr(type(client), "_make_api_call", None))


# -- the function side --------------------------------------------------------------


class LambdaHandler:
    """A Lambda handler running the instances `LambdaRunner` sends.

    One event loop and one `StoragePool` live as long as the handler, that is
    as long as the Lambda execution environment (the "container"): a warm
    invocation reuses the open storage connections instead of reopening them.
    `startup` (a coroutine function) runs on that loop before the first
    invocation: create loop-bound clients there (an aiobotocore client for
    cascades, a Redis pool) and register runners. `shutdown` runs in `close`.

    Invocations are handled one at a time (Lambda's Python runtime calls the
    handler sequentially; a lock enforces it). The handler returns
    ``{"uid", "instance", "status"}``; a task's failure is stored on the
    instance and is not an invocation error. Errors that leave the instance
    untouched (storage unreachable, malformed event) are raised, so Lambda
    retries the event and, after its retries, sends it to the function's
    dead-letter queue or on-failure destination. A duplicate delivery is
    harmless: only a ``scheduled`` instance runs.

    Deadline: when the context tells the invocation's remaining time
    (``context.get_remaining_time_in_millis()``), the run gets that time less
    `margin` seconds (at most a quarter of it), kept to store the outcome.
    A run that overruns is cancelled and stored failed with
    `LambdaTimeoutError`, as are the in-process cascades it started, rather
    than being killed by Lambda and left ``running`` for ever.

    Cooldown: an instance with ``cooldown`` (a retry) is invoked at once, with
    ``notBefore`` in its payload; the handler sleeps until then if that leaves
    time to run it, else stores it failed with `LambdaCooldownError`
    (replayable). Sleeping is billed time: keep cooldowns of Lambda tasks short.
    """

    def __init__(
        self,
        *,
        startup: Callable[[], Awaitable[None]] | None = None,
        shutdown: Callable[[], Awaitable[None]] | None = None,
        margin: float = 2.0,
        storages: Collection[str] | None = None,
    ) -> None:
        if margin < 0:
            raise ValueError(f"margin must be >= 0 seconds, not {margin}")
        self.startup = startup
        self.shutdown = shutdown
        self.margin = margin
        #: The storage URLs this function serves (None: any that exists): an
        #: event naming another is refused, whoever forged it.
        self.storages = frozenset(storages) if storages is not None else None
        self.pool = StoragePool()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._lock = threading.Lock()

    def __call__(self, event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
        """The Lambda entry point: ``handler(event, context)``."""
        with self._lock:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pass
            else:
                raise RuntimeError(
                    "LambdaHandler was called from a running event loop; "
                    "use 'await handler.handle(event, context)' there"
                )
            loop = self._loop
            if loop is None or loop.is_closed():
                loop = self._loop = asyncio.new_event_loop()
            return loop.run_until_complete(self.handle(event, context))

    async def handle(self, event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
        """Handle one event on the running loop (for async hosts and tests)."""
        loop = asyncio.get_running_loop()
        remaining = _remaining_seconds(context)
        deadline = None
        if remaining is not None:
            deadline = loop.time() + remaining - min(self.margin, remaining / 4)
        if not self._started:
            if self.startup is not None:
                await self.startup()
            self._started = True
        data = _decode_event(event)
        request = RunRequest.from_dict(data)
        if self.storages is not None and request.storage_url not in self.storages:
            raise InvalidInput(f"this function does not serve the storage of {request.uid!r}")
        not_before = data.get(NOT_BEFORE_KEY)
        if not_before is not None and (
            not isinstance(not_before, (int, float)) or isinstance(not_before, bool)
        ):
            raise InvalidInput(f"run request field {NOT_BEFORE_KEY!r} must be a number, got {not_before!r}")
        wait = max(0.0, not_before - time.time()) if not_before is not None else 0.0
        if wait > 0:
            if deadline is not None and loop.time() + wait >= deadline:
                return await self._fail(
                    request,
                    LambdaCooldownError(
                        f"instance {request.instance!r} must wait {wait:.1f}s more for its "
                        f"cooldown but the invocation has {deadline - loop.time():.1f}s left "
                        f"to run it: raise the function's timeout or shorten the cooldown"
                    ),
                )
            log.info(
                "%s/%s: waiting %.1fs of cooldown",
                request.uid,
                request.instance,
                wait,
                extra={"uid": request.uid, "instance": request.instance},
            )
            await asyncio.sleep(wait)
        # A Lambda invocation cannot renew a lease: its run is bounded by the
        # function's own timeout instead, after which a sweeper finds it lost.
        ends = None if remaining is None else time.time() + remaining
        if deadline is None:
            instance = await execute_request(request, self.pool, deadline=ends, owned=False)
            return _answer(request, instance)
        return await self._run_until(request, deadline, ends)

    async def _run_until(self, request: RunRequest, deadline: float, ends: float | None) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        run = loop.create_task(execute_request(request, self.pool, deadline=ends, owned=False))
        done, _ = await asyncio.wait({run}, timeout=max(0.0, deadline - loop.time()))
        if run in done:
            return _answer(request, run.result())
        # Out of time: cancel the run, then the in-process runs it started
        # (cascades on the asyncio runner). Each stores its instance failed.
        run.cancel()
        storage = await self.pool.get(request.storage_url)
        await storage.drain(0)
        await asyncio.wait({run}, timeout=max(self.margin / 2, 0.5))
        if run.done() and not run.cancelled() and run.exception() is not None:
            log.warning(
                "%s/%s: run ended with %r after its deadline",
                request.uid,
                request.instance,
                run.exception(),
                extra={"uid": request.uid, "instance": request.instance},
            )
        return await self._fail(
            request,
            LambdaTimeoutError(
                f"instance {request.instance!r} did not finish before the Lambda invocation's "
                f"deadline (its timeout less a {self.margin}s margin) and was cancelled: raise "
                f"the function's timeout or make the task shorter"
            ),
        )

    async def _fail(self, request: RunRequest, error: TriggerError) -> dict[str, Any]:
        """Store the instance failed because of `error` (if it is still scheduled
        or running, or failed by the cancellation `error` explains)."""
        storage = await self.pool.get(request.storage_url)
        manager = get_manager_class(request.manager)(storage, request.uid)
        instance = await manager.record_failure(request.instance, error)
        if instance is None:
            instance = await manager.get_instance(request.instance)
            cancelled = f"{asyncio.CancelledError.__module__}.{asyncio.CancelledError.__qualname__}"
            if instance.status is Status.FAILED and instance.metadata.get(Meta.EXCEPTION_TYPE) == cancelled:
                instance = await manager.update_instance_metadata(request.instance, exception_metadata(error))
        return _answer(request, instance)

    def close(self) -> None:
        """Run `shutdown`, close the pooled storages and the loop."""
        with self._lock:
            loop = self._loop
            if loop is None or loop.is_closed():
                return
            try:
                loop.run_until_complete(self._aclose())
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
                self._loop = None

    async def _aclose(self) -> None:
        try:
            if self._started and self.shutdown is not None:
                await self.shutdown()
        finally:
            self._started = False
            await self.pool.aclose()


def _answer(request: RunRequest, instance: TaskInstance | None) -> dict[str, Any]:
    return {
        "uid": request.uid,
        "instance": request.instance,
        "status": instance.status.value if instance is not None else "notScheduled",
    }


def _decode_event(event: object) -> Mapping[str, Any]:
    # Lambda hands over the JSON payload already decoded; accept raw JSON too
    # (bytes or str) for hosts that do not.
    if isinstance(event, (bytes, bytearray, str)):
        try:
            event = json.loads(event)
        except ValueError as exc:
            raise InvalidInput(f"the Lambda event is not JSON: {exc}") from exc
    if not isinstance(event, Mapping):
        raise InvalidInput(f"the Lambda event must be a run request object, not {type(event).__name__}")
    return event


def _remaining_seconds(context: Any) -> float | None:
    get_remaining = getattr(context, "get_remaining_time_in_millis", None)
    if get_remaining is None:
        return None
    return float(get_remaining()) / 1000.0


def make_handler(
    *,
    startup: Callable[[], Awaitable[None]] | None = None,
    shutdown: Callable[[], Awaitable[None]] | None = None,
    margin: float = 2.0,
    storages: Collection[str] | None = None,
) -> LambdaHandler:
    """Build a handler; create it at module level of the deployed handler module
    so it lives (with its loop and storage pool) as long as the container.
    `storages`: the storage URLs the function serves (events naming any other
    are refused)."""
    return LambdaHandler(startup=startup, shutdown=shutdown, margin=margin, storages=storages)


#: A ready handler (``Handler: atriggers.runners.aws_lambda.handler``) for
#: functions whose tasks, storages and managers are all declared in entry-point
#: groups, so nothing needs importing first. Otherwise build one with
#: `make_handler` in a module that imports the task modules.
handler: LambdaHandler = make_handler()


# Stored as ``exceptionType`` of failed instances: pinned (see atriggers.errors).
for _error in (LambdaInvokeError, LambdaCooldownError, LambdaTimeoutError):
    _error.__module__ = "atriggers.runners.aws_lambda"
del _error
