"""`CeleryRunner`: trigger tasks run on Celery workers (``pip install 'atriggers[celery]'``).

Sender side (the process that fires triggers)::

    app = Celery("myapp", broker="redis://127.0.0.1:6379/0")
    register_runner(CeleryRunner(app))          # or the "celery" entry point

Each instance is sent as the Celery task named by its configuration's ``run``,
with one small JSON argument, a `RunRequest` (storage URL, session uid, instance
name, manager name). A retry's cooldown is not a ``countdown``: the clone waits in
the due index, durably, and is sent when it is over. Celery routing
(``task_routes``, a locally registered task's ``queue``) applies as usual.

Worker side (the process running ``celery worker``)::

    @celery_task(app, "questionnaire.import_subject")
    async def import_subject(context: TaskContext) -> dict[str, Any]: ...

registers the async body in the atriggers task registry *and* a Celery task of
the same name. That Celery task rebuilds storage and manager from the request and
runs `atriggers.remote.execute_request`, i.e. ``TriggerManager.run_instance``: the
code path of the asyncio runner, so outcome, metadata and cascades are identical.

How the async body runs inside a worker: each worker process keeps one asyncio
event loop alive in a daemon thread (created on the first task, after any fork),
with one `StoragePool`, so database connections are opened once per process, not
per task. The Celery task blocks its pool slot until its run, and the in-process
cascades it started, are finished. Any Celery pool works: ``solo`` and
``prefork`` (one loop per child), ``threads`` (concurrent tasks share the loop).

Retries go through atriggers (``raise context.retry(...)``: a new instance,
history in the session), never Celery's. Eager mode is refused: an eager task
would run inside the caller's event loop, which is busy awaiting the dispatch.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

try:
    import celery  # type: ignore[import-untyped]
    from celery import signals
    from kombu.exceptions import KombuError
    from kombu.utils.url import maybe_sanitize_url
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "atriggers.runners.celery needs Celery: install the extra with pip install 'atriggers[celery]'"
    ) from exc

import anyio
import anyio.to_thread

from ..errors import DispatchError, InvalidInput, TriggerError
from ..remote import RunRequest, StoragePool, execute_request
from ..tasks import TaskDefinition, registry
from .base import DEFAULT_START_WITHIN, BaseRunner

if TYPE_CHECKING:
    from ..instance import TaskInstance
    from ..manager import TriggerManager

__all__ = [
    "CeleryDispatchError",
    "CeleryRunner",
    "EagerModeError",
    "WorkerLoop",
    "celery_task",
    "expose_tasks",
    "worker_loop",
]

log = logging.getLogger("atriggers.celery")

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


class EagerModeError(TriggerError, RuntimeError):
    """Raised when a Celery app runs tasks eagerly (``task_always_eager``, or
    ``task.apply()``): an eager trigger task would run inside the dispatching
    event loop, which is waiting for the dispatch, so it could only deadlock."""


class CeleryDispatchError(DispatchError):
    """Raised by `CeleryRunner.run` when the message cannot be handed to the
    broker (down, unreachable, too slow). The instance is stored as ``failed``
    with this error and can be replayed once the broker is back."""


def _refuse_eager(app: Any) -> None:
    if app.conf.task_always_eager:
        raise EagerModeError(
            f"Celery app {app.main!r} has task_always_eager=True; atriggers refuses to run "
            f"trigger tasks eagerly (the task would need the event loop that is waiting "
            f"for it). Use a real broker and worker, or the 'asyncio' runner in tests."
        )


class CeleryRunner(BaseRunner):
    """Dispatch instances as Celery tasks.

    `app` defaults to Celery's current app at dispatch time (so the runner can be
    built with no argument by the ``atriggers.runners`` entry point); pass it
    explicitly when a process has several apps.

    Sending never hangs for long: messages go through the runner's own broker
    connections with `socket_timeout` seconds for connecting and for every socket
    operation (the app's configuration is not touched), a bounded publish retry
    (`publish_retries` more attempts), and an overall `dispatch_timeout`. A send
    that fails or times out raises `CeleryDispatchError`, so the manager stores
    the instance as ``failed`` with the reason (replayable, never lost). If a
    timed-out send reaches the broker anyway, the worker finds the instance
    ``failed`` rather than ``scheduled`` and does not run it.

    `send_options` are passed to ``app.send_task`` for every message (for
    example ``queue="triggers"`` or ``priority=5``); routing configured on the
    app (``task_routes``, task options) applies as usual.
    """

    name: ClassVar[str] = "celery"

    def __init__(
        self,
        app: celery.Celery | None = None,
        *,
        dispatch_timeout: float = 10.0,
        socket_timeout: float = 3.0,
        publish_retries: int = 2,
        pool_limit: int = 10,
        start_within: float | None = DEFAULT_START_WITHIN,
        **send_options: Any,
    ) -> None:
        if dispatch_timeout <= 0 or socket_timeout <= 0:
            raise ValueError("dispatch_timeout and socket_timeout must be positive")
        if publish_retries < 0 or pool_limit < 1:
            raise ValueError("publish_retries must be >= 0 and pool_limit >= 1")
        if app is not None:
            _refuse_eager(app)
        self._app = app
        self.dispatch_timeout = dispatch_timeout
        self.socket_timeout = socket_timeout
        self.publish_retries = publish_retries
        self.pool_limit = pool_limit
        self.send_options = send_options
        #: Seconds a sent instance may wait in the queue before it counts as
        #: lost (a broker that dropped the message): six hours by default;
        #: None: no limit (a durable broker trusted to keep every message).
        self.start_within = start_within
        self._pools: dict[int, tuple[Any, Any]] = {}
        self._pools_lock = threading.Lock()

    @property
    def app(self) -> celery.Celery:
        if self._app is not None:
            return self._app
        return celery.current_app._get_current_object()

    def __repr__(self) -> str:
        return f"<CeleryRunner app={self.app.main!r}>"

    async def run(self, manager: TriggerManager, instance: TaskInstance) -> None:
        app = self.app
        _refuse_eager(app)
        task_name = instance.config.run if instance.config else instance.task_name
        payload = RunRequest.for_instance(manager, instance).to_dict()
        try:
            with anyio.fail_after(self.dispatch_timeout):
                # kombu is synchronous; a worker thread keeps the event loop free.
                # abandon_on_cancel: on timeout we stop waiting (the socket
                # timeouts end the thread soon after).
                await anyio.to_thread.run_sync(self._send, app, task_name, payload, abandon_on_cancel=True)
        except TimeoutError as exc:
            raise CeleryDispatchError(
                f"sending Celery task {task_name!r} for {manager.uid}/{instance.name} took "
                f"more than {self.dispatch_timeout:g}s (broker {self._broker(app)} unreachable?)"
            ) from exc
        except (KombuError, OSError) as exc:
            raise CeleryDispatchError(
                f"cannot send Celery task {task_name!r} for {manager.uid}/{instance.name} "
                f"to broker {self._broker(app)}: {exc}"
            ) from exc

    def _send(self, app: Any, task_name: str, payload: dict[str, str]) -> None:
        retry_policy = {
            "max_retries": self.publish_retries,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        }
        with self._connections(app).acquire(block=True, timeout=self.dispatch_timeout) as conn:
            app.send_task(
                task_name,
                args=[payload],
                connection=conn,
                retry=True,
                retry_policy=retry_policy,
                ignore_result=True,
                **self.send_options,
            )

    def _connections(self, app: Any) -> Any:
        with self._pools_lock:
            entry = self._pools.get(id(app))
            # The app is kept with its pool, so its id cannot be reused.
            pool = entry[1] if entry is not None and entry[0] is app else None
            if pool is None:
                connection = app.connection_for_write(
                    connect_timeout=self.socket_timeout,
                    transport_options={
                        "socket_timeout": self.socket_timeout,
                        "socket_connect_timeout": self.socket_timeout,
                    },
                )
                pool = connection.Pool(limit=self.pool_limit)
                self._pools[id(app)] = (app, pool)
            return pool

    @staticmethod
    def _broker(app: Any) -> str:
        return str(maybe_sanitize_url(app.conf.broker_write_url or app.conf.broker_url))

    def close(self) -> None:
        """Close the runner's broker connections (they reopen on next use).
        The blocking form of `aclose`, for synchronous shutdown code."""
        with self._pools_lock:
            pools, self._pools = self._pools, {}
        for _app, pool in pools.values():
            pool.force_close_all()

    async def aclose(self) -> None:
        """Close the runner's broker connection pools (they reopen on next use)."""
        # Closing a kombu connection may talk to the broker: keep the loop free.
        await anyio.to_thread.run_sync(self.close)


# -- worker side -------------------------------------------------------------------------


class WorkerLoop:
    """One asyncio event loop per worker process, running in a daemon thread, and
    one `StoragePool` living on it. Celery tasks submit coroutines and block
    until they are done.

    Created lazily in the process that runs the first task (a prefork child
    creates its own after the fork) and closed on worker shutdown, which drains
    in-process runs and closes the storages.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.pool = StoragePool()

    def _ensure(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="atriggers-celery-loop", daemon=True)
                thread.start()
                self._loop, self._thread, self._pid = loop, thread, os.getpid()
                self.pool = StoragePool()
            return self._loop

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the loop and wait for its result. If the waiting
        thread is interrupted (a soft time limit, a shutdown), the run is
        cancelled with the reason: a cancelled running instance is stored as
        failed, replayable."""
        loop = self._ensure()
        started: list[asyncio.Task[Any]] = []
        ended = threading.Event()

        async def wrapper() -> T:
            started.append(asyncio.current_task())  # type: ignore[arg-type]
            try:
                return await coroutine
            finally:
                ended.set()

        future: Future[T] = asyncio.run_coroutine_threadsafe(wrapper(), loop)
        try:
            return future.result()
        except BaseException as exc:
            if not future.done():
                reason = f"the Celery task was interrupted by {type(exc).__name__}: {exc}"
                if started:
                    loop.call_soon_threadsafe(started[0].cancel, reason)
                    # Give the cancelled run a moment to store its failure.
                    ended.wait(10)
                else:
                    future.cancel()
            raise

    def close(self, timeout: float = 30.0) -> None:
        """Drain and close the storages, stop the loop (idempotent)."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
            owned = self._pid == os.getpid()
        if loop is None or thread is None or not owned:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.pool.aclose(), loop).result(timeout)
        except (Exception, FutureTimeout):
            log.exception("closing the atriggers storages of this worker failed")
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
            if not thread.is_alive():
                loop.close()


#: The loop of this process (see `WorkerLoop`).
worker_loop = WorkerLoop()


def _shutdown(**_: Any) -> None:
    worker_loop.close()


# worker_process_shutdown: a prefork child exits; worker_shutdown: the main
# process (solo and threads pools run tasks there).
signals.worker_process_shutdown.connect(_shutdown, weak=False)
signals.worker_shutdown.connect(_shutdown, weak=False)
atexit.register(worker_loop.close)


async def _execute(payload: object) -> dict[str, Any]:
    request = RunRequest.from_dict(payload)  # type: ignore[arg-type]
    instance = await execute_request(request, worker_loop.pool)
    if instance is None:
        return {"instance": request.instance, "ran": False}
    return {"instance": instance.name, "ran": True, "status": instance.status.value}


_CELERY_RETRY_OPTIONS = frozenset(
    {
        "autoretry_for",
        "retry_backoff",
        "retry_backoff_max",
        "retry_jitter",
        "retry_kwargs",
        "max_retries",
        "default_retry_delay",
        "bind",
        "base",
        "name",
    }
)


def _check_options(options: Mapping[str, Any]) -> None:
    refused = sorted(_CELERY_RETRY_OPTIONS.intersection(options))
    if refused:
        raise InvalidInput(
            f"Celery task options {', '.join(refused)} are not for trigger tasks: retries go "
            f"through atriggers (max_retries=..., raise context.retry(...)) so the history "
            f"stays in the session, and the task's name and base are set by atriggers"
        )


def _make_celery_task(app: Any, name: str, options: Mapping[str, Any]) -> Any:
    def run_trigger_task(self: Any, request: object) -> dict[str, Any]:
        if self.request.is_eager or self.app.conf.task_always_eager:
            raise EagerModeError(
                f"trigger task {name!r} was called eagerly; atriggers runs trigger tasks "
                f"on real workers only (see CeleryRunner)"
            )
        return worker_loop.run(_execute(request))

    run_trigger_task.__name__ = name.rsplit(".", 1)[-1]
    run_trigger_task.__qualname__ = run_trigger_task.__name__
    run_trigger_task.__doc__ = f"Run an instance of the atriggers task {name!r}."
    settings = {"ignore_result": True, "max_retries": 0, **options}
    return app.task(name=name, bind=True, **settings)(run_trigger_task)


def celery_task(
    app: celery.Celery,
    name: str | None = None,
    *,
    max_retries: int = 0,
    **options: Any,
) -> Callable[[F], F]:
    """Register ``async def fn(context)`` as an atriggers task *and* as the Celery
    task of the same name (default: ``module.qualname``) that runs its instances.

    `max_retries` bounds atriggers retries (``raise context.retry(...)``).
    `options` go to ``app.task`` (``queue=...``, ``time_limit=...``, ...), except
    Celery retry options: retries belong to atriggers. Returns `fn` unchanged.
    """

    _check_options(options)

    def decorate(function: F) -> F:
        definition = registry.register(function, name, max_retries=max_retries)
        _make_celery_task(app, definition.name, options)
        return function

    return decorate


def expose_tasks(app: celery.Celery, *names: str, **options: Any) -> list[Any]:
    """Make Celery tasks for atriggers tasks already registered (with ``@task``
    or entry points), so a worker of `app` runs their instances. Returns the
    Celery tasks."""
    _check_options(options)
    definitions: list[TaskDefinition] = [registry.get(name) for name in names]
    return [_make_celery_task(app, d.name, options) for d in definitions]


# Stored as ``exceptionType`` of failed instances: pinned (see atriggers.errors).
for _error in (EagerModeError, CeleryDispatchError):
    _error.__module__ = "atriggers.runners.celery"
del _error
