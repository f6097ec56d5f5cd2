"""Which URL does what."""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from .actions import Actions
from .app import Dashboard
from .bulk import Bulk
from .pages import Pages

__all__ = ["build_routes"]


def build_routes(dashboard: Dashboard) -> list[BaseRoute]:
    pages, actions, bulk = Pages(dashboard), Actions(dashboard), Bulk(dashboard)
    return [
        Route("/", pages.sessions, name="sessions"),
        Route("/sessions/live", pages.sessions_live, name="sessions_live"),
        Route("/session", pages.session, name="session"),
        Route("/session/live", pages.session_live, name="session_live"),
        Route("/session/graph.svg", pages.graph_svg, name="graph_svg"),
        Route("/session/replay", actions.replay, methods=["POST"], name="replay"),
        Route("/session/skip", actions.skip, methods=["POST"], name="skip"),
        Route("/session/resolve-logs", actions.resolve_logs, methods=["POST"], name="resolve_logs"),
        Route("/session/set-status", actions.set_status, methods=["POST"], name="set_status"),
        Route("/bulk", bulk.confirm, name="bulk"),
        Route("/bulk/apply", bulk.apply, methods=["POST"], name="bulk_apply"),
        Route("/status.css", pages.status_css, name="status_css"),
        Mount("/static", StaticFiles(packages=[("atriggers.web.dashboard", "static")]), name="static"),
    ]
