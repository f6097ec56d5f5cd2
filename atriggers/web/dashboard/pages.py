"""The pages that read: the sessions list, a session, their live parts, the graph."""

from __future__ import annotations

import hashlib
from typing import Any

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ...errors import StorageError
from ...storage.index import SessionFilter, summarize_state
from .app import Dashboard
from .explain import explanations
from .requests import SHOWS, ListQuery
from .views import SETTABLE, instance_views, pretty_json, session_row

__all__ = ["Pages", "storage_error"]


class Pages:
    def __init__(self, dashboard: Dashboard) -> None:
        self.d = dashboard

    # -- the sessions list ---------------------------------------------------------------

    async def sessions(self, request: Request) -> Response:
        search = request.query_params.get("q", "").strip()
        query = ListQuery.read(request)
        if search:
            # A whole uid opens the session; anything else lists the uids it starts.
            storage = await self.d.open_storage()
            found = await storage.list_summaries(SessionFilter(prefix=search), limit=1)
            if found.summaries and found.summaries[0].uid == search:
                return self.d.finish(
                    request, RedirectResponse(self.d.url(request, "session", {"uid": search}), 303)
                )
            query = ListQuery(query.show, query.task, search, "", query.limit)
        body, _ = await self._list(request, query)
        return await self.d.render(request, "sessions.html", query=query, shows=SHOWS, listing=body)

    async def sessions_live(self, request: Request) -> Response:
        query = ListQuery.read(request)
        body, digest = await self._list(request, query)
        if request.query_params.get("digest") == digest:
            return self.d.finish(request, Response(status_code=204))
        return await self.d.render(request, "_sessions_live.html", query=query, listing=body, digest=digest)

    async def _list(self, request: Request, query: ListQuery) -> tuple[Markup, str]:
        storage = await self.d.open_storage()
        page = await storage.list_summaries(query.filter, after=query.after or None, limit=query.limit)
        counts = await storage.count_sessions()
        now = self.d.now()
        rows = [session_row(s, now) for s in page.summaries]
        digest = hashlib.sha256(
            repr((counts, [(s.uid, s.version, sorted(s.counts.items())) for s in page.summaries])).encode()
        ).hexdigest()[:16]
        html = self.d.templates.get_template("_sessions_table.html").render(
            url=lambda name, **q: self.d.url(request, name, q),
            query=query,
            rows=rows,
            counts=counts,
            next=page.next,
            digest=digest,
            refresh_ms=int(self.d.refresh * 1000),
        )
        return Markup(html), digest

    # -- one session ---------------------------------------------------------------------

    async def session(self, request: Request) -> Response:
        uid = request.query_params.get("uid", "")
        context = await self._session(request, uid)
        if context is None:
            return await self.d.render(request, "missing.html", 404, uid=uid)
        return await self.d.render(
            request,
            "session.html",
            done=request.query_params.get("done", ""),
            **context,
        )

    async def session_live(self, request: Request) -> Response:
        uid = request.query_params.get("uid", "")
        storage = await self.d.open_storage()
        # The working view's version is enough to know whether anything changed.
        if str((await storage.load(uid)).version) == request.query_params.get("version"):
            return self.d.finish(request, Response(status_code=204))
        context = await self._session(request, uid)
        if context is None:
            return await self.d.render(request, "missing.html", 404, uid=uid)
        return await self.d.render(request, "_session_live.html", **context)

    async def _session(self, request: Request, uid: str) -> dict[str, Any] | None:
        if not uid:
            return None
        storage = await self.d.open_storage()
        state = await storage.load_all(uid)
        if state.version == 0:
            return None
        now = self.d.now()
        return {
            "uid": uid,
            "state": state,
            "summary": summarize_state(state, None),
            "instances": instance_views(state, now),
            "latest": [
                (trigger, pretty_json(kwargs)) for trigger, kwargs in sorted(state.latest_kwargs.items())
            ],
            "has_dot": self.d.graphs.has_dot,
            "columns": None if self.d.graphs.has_dot else self.d.graphs.columns(state),
            "explanations": explanations(state, now),
            "settable": SETTABLE,
        }

    async def graph_svg(self, request: Request) -> Response:
        uid = request.query_params.get("uid", "")
        storage = await self.d.open_storage()
        state = await storage.load_all(uid) if uid else None
        if state is None or state.version == 0:
            return self.d.finish(request, Response("no such session", 404, media_type="text/plain"))
        svg = await self.d.graphs.svg(state)
        if svg is None:
            return self.d.finish(request, Response("Graphviz is not available", 404, media_type="text/plain"))
        response = Response(svg, media_type="image/svg+xml")
        self.d.finish(request, response)
        # Opened directly, the image may not run anything or load anything.
        response.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
        response.headers["Cache-Control"] = "private, max-age=3600"
        return response

    async def status_css(self, request: Request) -> Response:
        """The status colours, from the same table the CLI's graphs use."""
        from ...graph import COLOURS

        lines = [
            f".status-{name} {{ background: {fill}; border-color: {stroke}; color: #212529; }}"
            for name, (fill, stroke) in COLOURS.items()
        ]
        response = Response("\n".join(lines) + "\n", media_type="text/css")
        self.d.finish(request, response)
        response.headers["Cache-Control"] = "public, max-age=3600"
        return response


async def storage_error(request: Request, exc: Exception) -> Response:
    """A storage that fails (down, corrupt) gets a page saying so, not a crash."""
    dashboard: Dashboard = request.app.state.dashboard
    assert isinstance(exc, StorageError)
    return await dashboard.render(request, "error.html", 503, message=str(exc))
