"""``atriggers dashboard URL``: the operator dashboard served alone by uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import sys

from ..storage import open_storage
from .exits import CommandError, ExitCode

__all__ = ["cmd_dashboard"]


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_dashboard(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..web.dashboard.app import dashboard
    except ImportError as exc:
        raise CommandError(
            f"the dashboard needs {exc.name}: install the extra with `pip install 'atriggers[dashboard]'`",
            ExitCode.USAGE,
        ) from None
    try:
        storage = open_storage(args.url)
    except ValueError as exc:
        raise CommandError(str(exc), ExitCode.USAGE) from None
    # A mistyped SQLite path must not silently become an empty database.
    if not asyncio.run(storage.exists()):
        raise CommandError(f"no storage at {storage.safe_url}", ExitCode.NOT_FOUND)

    def allow_all(request: object, action: str) -> bool:
        return True

    app = dashboard(storage, authorize=allow_all if args.allow_actions else None)
    mode = "repairs allowed" if args.allow_actions else "read-only (--allow-actions to repair)"
    print(
        f"atriggers dashboard of {storage.safe_url}: http://{args.host}:{args.port}/ ({mode})",
        file=sys.stderr,
    )
    if args.allow_actions and not _loopback(args.host):
        print(
            f"atriggers: warning: anyone who reaches {args.host}:{args.port} can replay and skip "
            "instances: put the dashboard behind your application's authentication",
            file=sys.stderr,
        )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", server_header=False)
    return ExitCode.OK
