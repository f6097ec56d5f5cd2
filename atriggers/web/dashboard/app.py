"""`dashboard()`: the operator dashboard as an ASGI app (Starlette + Jinja2)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute

from ...clock import Clock
from ...errors import StorageError
from ...manager import TriggerManager
from ...storage import Storage, open_storage
from .graphs import GraphRenderer
from .security import CSRF_COOKIE, Authorize, Guard
from .views import visible

__all__ = ["Dashboard", "MakeManager", "dashboard"]

#: ``make_manager(storage, uid)``: the manager that repairs a session.
MakeManager = Callable[[Storage, str], TriggerManager]

#: Security headers on every page: nothing from elsewhere, no inline script, no framing.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


class Dashboard:
    """What every page handler shares: the storage, the checks, the templates."""

    def __init__(
        self,
        storage: Storage,
        *,
        authorize: Authorize | None,
        make_manager: MakeManager | None,
        refresh: float,
        secret: bytes | None,
        title: str,
        clock: Clock | None,
    ) -> None:
        self.storage = storage
        self.guard = Guard(authorize, secret)
        self.make_manager: MakeManager = make_manager or TriggerManager
        self.refresh = refresh
        self.title = title
        self.clock = clock or storage.clock
        self.graphs = GraphRenderer()
        self._opened_here = False
        self._opening = asyncio.Lock()
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("atriggers.web.dashboard", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["visible"] = visible

    async def open_storage(self) -> Storage:
        """The storage, opened on first use (a mounted app gets no lifespan
        events: it cannot count on being opened at startup)."""
        if not self.storage.is_open:
            async with self._opening:
                if not self.storage.is_open:
                    await self.storage.open()
                    self._opened_here = True
        return self.storage

    async def close(self) -> None:
        """Close the storage if the dashboard opened it."""
        if self._opened_here:
            self._opened_here = False
            await self.storage.aclose()

    def now(self) -> float:
        return self.clock.time()

    # -- rendering ---------------------------------------------------------------------

    def url(self, request: Request, name: str, query: Mapping[str, Any] | None = None) -> str:
        """The path of route `name` (under the mount point), with a query string."""
        path = request.url_for(name).path
        params = {k: v for k, v in (query or {}).items() if v not in (None, "", False)}
        return path + ("?" + urlencode(params) if params else "")

    async def render(
        self, request: Request, template: str, status_code: int = 200, /, **context: Any
    ) -> Response:
        token = self.guard.token_for(request)
        html = self.templates.get_template(template).render(
            request=request,
            url=lambda name, **query: self.url(request, name, query),
            static=lambda path: request.url_for("static", path=path).path,
            csrf=token,
            allowed=await self.guard.allowed(request),
            read_only=self.guard.read_only,
            title=self.title,
            refresh_ms=int(self.refresh * 1000),
            storage_url=self.storage.safe_url,
            **context,
        )
        response = HTMLResponse(html, status_code)
        return self.finish(request, response, token)

    def finish(self, request: Request, response: Response, token: str | None = None) -> Response:
        """Security headers, and the CSRF cookie when the request had none."""
        response.headers.update(_HEADERS)
        if token is not None and request.cookies.get(CSRF_COOKIE) != token:
            root = request.url_for("sessions").path
            response.set_cookie(
                CSRF_COOKIE,
                token,
                path=root,
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
        return response


def dashboard(
    storage_or_url: Storage | str,
    *,
    authorize: Authorize | None = None,
    make_manager: MakeManager | None = None,
    refresh: float = 2.0,
    secret: bytes | None = None,
    title: str = "atriggers",
    clock: Clock | None = None,
) -> Starlette:
    """The operator dashboard for the sessions in `storage_or_url` (a `Storage`,
    or a storage URL that the dashboard opens itself), as an ASGI app to mount
    anywhere (``app.mount("/triggers", dashboard(storage, authorize=...))``).

    Read-only unless ``authorize(request, action)`` (sync or async) returns True
    for an action (``replay``, ``skip``, ``resolve-logs``, ``set-status``,
    ``bulk-replay``, ``bulk-skip``); put the dashboard behind the application's
    own authentication and let `authorize` decide who may repair what.
    `make_manager(storage, uid)` makes the manager that repairs a session
    (default: `TriggerManager`; replayed instances run where their runner runs
    them, in this process for ``asyncio``). Pages refresh every `refresh`
    seconds. `secret` signs CSRF tokens (default: random per process).
    """
    from .pages import storage_error
    from .routes import build_routes

    storage = open_storage(storage_or_url) if isinstance(storage_or_url, str) else storage_or_url
    if not isinstance(storage, Storage):
        raise TypeError(f"dashboard() needs a Storage or a storage URL, not {storage_or_url!r}")
    if not refresh > 0:
        raise ValueError(f"refresh must be a positive number of seconds, not {refresh!r}")
    state = Dashboard(
        storage,
        authorize=authorize,
        make_manager=make_manager,
        refresh=refresh,
        secret=secret,
        title=title,
        clock=clock,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.open_storage()
        try:
            yield
        finally:
            await state.close()

    routes: list[BaseRoute] = build_routes(state)
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={StorageError: storage_error})
    app.state.dashboard = state
    return app
