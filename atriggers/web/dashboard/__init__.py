"""The operator dashboard: sessions, their instances and graphs, and the repairs
(Replay, Skip...), as an ASGI app. Needs the ``dashboard`` extra
(``pip install 'atriggers[dashboard]'``: Starlette, Jinja2, uvicorn).

Modules: `app` (the factory and what handlers share), `routes` (URLs), `pages`
(what reads), `actions` and `bulk` (what changes), `security` (authorization,
CSRF), `views` (what pages show, pure), `graphs` (the workflow drawing),
`forms` and `requests` (input), `explain` (the place of explanations);
``templates/`` and ``static/`` (htmx, vendored: see static/VENDORED.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from ...clock import Clock
    from ...manager import TriggerManager
    from ...storage import Storage

__all__ = ["dashboard"]


def dashboard(
    storage_or_url: Storage | str,
    *,
    authorize: Callable[[Any, str], bool | Awaitable[bool]] | None = None,
    make_manager: Callable[[Storage, str], TriggerManager] | None = None,
    refresh: float = 2.0,
    secret: bytes | None = None,
    title: str = "atriggers",
    clock: Clock | None = None,
) -> Starlette:
    """The operator dashboard for the sessions in `storage_or_url` (a `Storage`,
    or a storage URL the dashboard opens itself), as an ASGI app to mount in any
    ASGI application (``app.mount("/triggers", dashboard(storage, authorize=...))``).

    Read-only unless ``authorize(request, action)`` (sync or async) returns True
    for the action: ``replay``, ``skip``, ``resolve-logs``, ``set-status``,
    ``bulk-replay`` or ``bulk-skip``. Put it behind the application's own
    authentication; `authorize` decides who may repair what. `make_manager(storage,
    uid)` makes the manager that repairs a session (default `TriggerManager`:
    replayed instances run where their runner runs them, in this process for
    ``asyncio``). Pages refresh every `refresh` seconds while their data change.
    `secret` signs the CSRF tokens (default: random per process; give one when
    several processes serve the dashboard).
    """
    try:
        from .app import dashboard as make
    except ImportError as exc:
        raise ImportError(
            f"the atriggers dashboard needs Starlette and Jinja2 ({exc.name} is missing): "
            "install the extra with `pip install 'atriggers[dashboard]'`"
        ) from exc
    return make(
        storage_or_url,
        authorize=authorize,
        make_manager=make_manager,
        refresh=refresh,
        secret=secret,
        title=title,
        clock=clock,
    )
