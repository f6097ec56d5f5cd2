"""ASGI integration: one storage per process, opened and closed with the app.

::

    from typing import Annotated
    from fastapi import FastAPI
    from atriggers import TriggerManager
    from atriggers.web import Triggers

    triggers = Triggers("sqlite:///app.db")
    app = FastAPI(lifespan=triggers.lifespan)
    Manager = Annotated[TriggerManager, triggers.depends("uid")]

    @app.post("/sessions/{uid}/pages")
    async def page(page: dict, manager: Manager):
        await manager.fire("pageReceived", page)

`Triggers.lifespan` is a plain lifespan context manager (Starlette, FastAPI,
Litestar, ...); `Triggers.wrap` adds the same to any raw ASGI app through the
ASGI lifespan protocol. `Triggers.manager(uid)` works in any handler;
`Triggers.depends()` is the FastAPI dependency (FastAPI is imported only then).

While the app runs, a `Sweeper` (by default) acts on what is due: runs lost
with a crashed process, cooldowns that ended, delayed fires, expired windows.

On shutdown the sweeper stops, then the storage drains the runs the in-process
(``asyncio``) runner started: it waits up to ``close_timeout`` seconds for them
and their cascades, then cancels the rest, which are stored as ``failed``
(replayable) before the storage closes; then the runners are closed. Instances
dispatched to other runners (Celery, Lambda) are not affected: they already left
the process.

This module needs no web framework; FastAPI helpers need the ``web`` extra.
"""

from __future__ import annotations

import inspect
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import ModuleType, TracebackType
from typing import Any, Self

from ..errors import (
    ConcurrencyError,
    DispatchError,
    IdempotencyConflict,
    InstanceNotFound,
    InvalidInput,
    InvalidStatus,
    StorageError,
    TriggerError,
)
from ..manager import TriggerManager
from ..runners import RunnerRegistry
from ..runners import runners as default_runners
from ..storage.base import Storage
from ..storage.registry import open_storage
from ..sweeper import Sweeper
from ..tasks import TaskRegistry

__all__ = ["ASGIApp", "Message", "Receive", "Scope", "Send", "Triggers", "status_code_for"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
#: An ASGI 3 application.
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _import_fastapi() -> ModuleType:
    try:
        import fastapi
    except ImportError as exc:
        raise ImportError(
            "atriggers.web's FastAPI helpers need FastAPI: pip install 'atriggers[web]'"
        ) from exc
    return fastapi


def status_code_for(exc: TriggerError) -> int:
    """The HTTP status that best reports `exc` to a client.

    Bad input (including configuration) is 422, an unknown instance 404, an
    operation the instance's status does not allow or an idempotency key reused
    for another request (`IdempotencyConflict`) 409, a runner that refused
    or is unknown (`DispatchError`) 502, lost races under heavy contention 503
    (retry later); anything else is the server's fault, 500.
    """
    if isinstance(exc, InstanceNotFound):
        return 404
    if isinstance(exc, InvalidStatus | IdempotencyConflict):
        return 409
    if isinstance(exc, ValueError):  # InvalidInput, ConfigurationError
        return 422
    if isinstance(exc, DispatchError):
        return 502
    if isinstance(exc, ConcurrencyError):
        return 503
    return 500


class Triggers:
    """The storage of one process, bound to an app's lifespan, and the managers
    of its sessions.

    `storage` is a URL for `open_storage` (``sqlite:///app.db``,
    ``redis://...``) or a `Storage` object; either way the lifespan opens it at
    startup and closes it (after draining in-process runs) at shutdown.
    `close_timeout` overrides the storage's (seconds to wait for in-process runs
    before cancelling them). `manager_class`, `default_runner`, `tasks` and
    `runners` are what `manager` builds `TriggerManager` objects with; at
    shutdown the runners of `runners` (default: the global registry) are closed
    (`BaseRunner.aclose`: broker connections, clients). With `sweeper` (the
    default) the lifespan also runs a `Sweeper` every `sweep_interval` seconds:
    runs lost by a crashed process, retries whose cooldown ended and delayed
    fires are acted on by whichever app process gets to them first.

    Create it once per app, at import time; every worker process then opens its
    own storage when its app starts.
    """

    def __init__(
        self,
        storage: str | Storage,
        *,
        manager_class: type[TriggerManager] = TriggerManager,
        default_runner: str | None = None,
        tasks: TaskRegistry | None = None,
        runners: RunnerRegistry | None = None,
        close_timeout: float | None = None,
        sweeper: bool = True,
        sweep_interval: float = 1.0,
    ) -> None:
        if not isinstance(storage, str | Storage):
            raise TypeError(f"storage must be a storage URL or a Storage, not {storage!r}")
        if not (isinstance(manager_class, type) and issubclass(manager_class, TriggerManager)):
            raise TypeError(f"manager_class must be a TriggerManager subclass, not {manager_class!r}")
        if close_timeout is not None and close_timeout < 0:
            raise ValueError(f"close_timeout must be >= 0 seconds, not {close_timeout}")
        self._source = storage
        self._storage: Storage | None = None
        # Built now so that a bad URL fails at import time, not at startup; a URL
        # source gets a fresh storage object for every later lifespan.
        self._next: Storage = open_storage(storage) if isinstance(storage, str) else storage
        self.manager_class = manager_class
        self.default_runner = default_runner
        self.tasks = tasks
        self.runners = runners
        self.close_timeout = close_timeout
        #: Whether the lifespan runs a `Sweeper` (every `sweep_interval` seconds)
        #: so that lost runs, ended cooldowns and delayed fires are acted on.
        self.sweeper = sweeper
        self.sweep_interval = sweep_interval
        self._sweeper: Sweeper | None = None

    def __repr__(self) -> str:
        where = self._source if isinstance(self._source, str) else repr(self._source)
        state = "open" if self._storage is not None else "closed"
        return f"<Triggers {where} ({state})>"

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._storage is not None

    @property
    def storage(self) -> Storage:
        """The open storage. `StorageError` outside the app's lifespan."""
        if self._storage is None:
            raise StorageError(
                f"{self!r} is not open: pass `lifespan=triggers.lifespan` to your app "
                f"(or wrap it with `triggers.wrap(app)`, or `await triggers.open()`)"
            )
        return self._storage

    async def open(self) -> None:
        """Open the storage (idempotent)."""
        if self._storage is not None:
            return
        storage = self._next
        if self.close_timeout is not None:
            storage.close_timeout = self.close_timeout
        await storage.open()
        self._storage = storage
        if self.sweeper:
            self._sweeper = Sweeper(
                storage,
                interval=self.sweep_interval,
                manager_class=self.manager_class,
                tasks=self.tasks,
                runners=self.runners,
                default_runner=self.default_runner,
            )
            self._sweeper.start()

    async def aclose(self) -> None:
        """Drain in-process runs (up to ``close_timeout`` seconds, then cancel
        the stragglers, which are stored as failed), close the storage, then the
        runners (their broker connections and clients)."""
        storage = self._storage
        if storage is None:
            return
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            await sweeper.aclose()
        try:
            # Still reachable while draining: a task may fire into another
            # session through `triggers.manager(...)`.
            await storage.aclose()
        finally:
            self._storage = None
            if isinstance(self._source, str):
                self._next = open_storage(self._source)
            await self._close_runners()

    async def _close_runners(self) -> None:
        await (self.runners if self.runners is not None else default_runners).aclose_all()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def lifespan(self, app: object = None) -> AbstractAsyncContextManager[None]:
        """A lifespan context manager: ``FastAPI(lifespan=triggers.lifespan)``,
        ``Starlette(lifespan=...)``; or inside your own lifespan::

            @asynccontextmanager
            async def lifespan(app):
                async with triggers.lifespan(app):
                    yield
        """
        return self._lifespan()

    @asynccontextmanager
    async def _lifespan(self) -> AsyncIterator[None]:
        await self.open()
        try:
            yield
        finally:
            await self.aclose()

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """`app` with the storage bound to its ASGI lifespan, for frameworks
        without a lifespan parameter. The app's own lifespan (if it has one) runs
        inside: its startup after the storage opened, its shutdown before the
        storage closes."""
        return _LifespanMiddleware(app, self)

    # -- in handlers ----------------------------------------------------------------------

    def manager(self, uid: str) -> TriggerManager:
        """A manager for session `uid` (cheap: make one per request)."""
        return self.manager_class(self.storage, uid, default_runner=self.default_runner, tasks=self.tasks)

    def depends(self, uid: str | Callable[..., Any] = "uid") -> Any:
        """FastAPI dependency giving the `TriggerManager` of the request's session::

            Manager = Annotated[TriggerManager, triggers.depends("uid")]

            @app.post("/sessions/{uid}/done")
            async def done(manager: Manager): ...

        `uid` names the path (or query) parameter holding the session uid, or is
        itself a dependency returning it (from a cookie, a header, the user).
        An empty uid answers 422.
        """
        fastapi = _import_fastapi()

        def build(value: str) -> TriggerManager:
            try:
                return self.manager(value)
            except InvalidInput as exc:
                raise fastapi.HTTPException(status_code=422, detail=str(exc)) from exc

        dependency: Callable[..., TriggerManager]
        if isinstance(uid, str):
            if not uid.isidentifier():
                raise ValueError(f"uid must name a parameter (an identifier), not {uid!r}")

            def by_name(**params: str) -> TriggerManager:
                return build(params[uid])

            by_name.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
                [inspect.Parameter(uid, inspect.Parameter.KEYWORD_ONLY, annotation=str)],
                return_annotation=TriggerManager,
            )
            dependency = by_name
        elif callable(uid):

            def by_dependency(value: str = fastapi.Depends(uid)) -> TriggerManager:
                return build(value)

            dependency = by_dependency
        else:
            raise TypeError(f"uid must be a parameter name or a dependency, not {uid!r}")
        return fastapi.Depends(dependency)

    def idempotency_key(self) -> Any:
        """FastAPI dependency giving the request's ``Idempotency-Key`` header (None
        without one), for ``manager.fire(..., key=key)``; a malformed key answers
        422. With `exception_handlers`, a key reused for another request answers
        409; a retry gets what the first fire scheduled (see `atriggers.web.keys`)::

            Key = Annotated[str | None, triggers.idempotency_key()]

            @app.post("/sessions/{uid}/orders")
            async def order(order: dict, manager: Manager, key: Key):
                scheduled = await manager.fire("orderPlaced", order, key=key)
                return {"scheduled": [i.name for i in scheduled]}
        """
        fastapi = _import_fastapi()
        from .keys import idempotency_key

        def dependency(request: Any) -> str | None:
            try:
                return idempotency_key(request.headers)
            except InvalidInput as exc:
                raise fastapi.HTTPException(status_code=422, detail=str(exc)) from exc

        # The annotation FastAPI reads to pass the request (fastapi is imported here only).
        dependency.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [
                inspect.Parameter(
                    "request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=fastapi.Request
                )
            ],
            return_annotation=str | None,
        )
        return fastapi.Depends(dependency)

    def fire_endpoint(self) -> ASGIApp:
        """A raw ASGI app firing triggers with idempotency keys: ``POST
        .../{uid}/{trigger}`` with the kwargs as a JSON body and an optional
        ``Idempotency-Key`` header (see `atriggers.web.keys.FireEndpoint`)."""
        from .keys import FireEndpoint

        return FireEndpoint(self)

    def exception_handlers(self) -> dict[Any, Any]:
        """Starlette/FastAPI exception handlers answering atriggers errors as JSON
        with `status_code_for` (``FastAPI(exception_handlers=...)``)."""
        try:
            from starlette.responses import JSONResponse
        except ImportError as exc:
            raise ImportError(
                "Triggers.exception_handlers needs Starlette: pip install 'atriggers[web]'"
            ) from exc

        async def handle(request: Any, exc: Exception) -> JSONResponse:
            assert isinstance(exc, TriggerError)
            return JSONResponse(
                {"error": type(exc).__name__, "detail": str(exc)},
                status_code=status_code_for(exc),
            )

        return {TriggerError: handle}


class _LifespanMiddleware:
    """Speaks the ASGI lifespan protocol with the server, opening the storage
    before the wrapped app starts and closing it after the app shut down."""

    def __init__(self, app: ASGIApp, triggers: Triggers) -> None:
        self.app = app
        self.triggers = triggers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        try:
            await self.triggers.open()
        except Exception as exc:  # noqa: BLE001 - reported to the server
            await send({"type": "lifespan.startup.failed", "message": f"atriggers: {exc}"})
            return
        replay: list[Message] = [message]
        seen = {"started": False, "answered": False, "shutdown": False}

        async def app_receive() -> Message:
            incoming = replay.pop() if replay else await receive()
            if incoming["type"] == "lifespan.shutdown":
                seen["shutdown"] = True
            return incoming

        async def app_send(out: Message) -> None:
            kind = out["type"]
            if kind == "lifespan.startup.complete":
                seen["started"] = True
            elif kind in (
                "lifespan.startup.failed",
                "lifespan.shutdown.complete",
                "lifespan.shutdown.failed",
            ):
                seen["answered"] = True
                out = await self._close(out)
            await send(out)

        failure: str | None = None
        try:
            await self.app(scope, app_receive, app_send)
        except Exception as exc:
            if seen["answered"]:
                raise
            if seen["started"]:
                failure = "".join(traceback.format_exception(exc))
            # else: the app does not do lifespan at all
        if seen["answered"]:
            return
        # The app does not do lifespan, or its lifespan ended without answering:
        # finish the protocol alone so the storage still drains and closes.
        if not seen["started"]:
            await send({"type": "lifespan.startup.complete"})
        while not seen["shutdown"]:
            seen["shutdown"] = (await receive())["type"] == "lifespan.shutdown"
        answer = await self._close({"type": "lifespan.shutdown.complete"})
        if failure is not None:
            answer = {"type": "lifespan.shutdown.failed", "message": f"app lifespan: {failure}"}
        await send(answer)

    async def _close(self, message: Message) -> Message:
        try:
            await self.triggers.aclose()
        except Exception as exc:  # noqa: BLE001 - reported to the server
            if message["type"] == "lifespan.shutdown.complete":
                return {"type": "lifespan.shutdown.failed", "message": f"atriggers: {exc}"}
        return message
