"""The ``atriggers`` command line: subcommands, options and their help."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from .. import __version__
from .commands import (
    cmd_configure,
    cmd_fire,
    cmd_graph,
    cmd_replay,
    cmd_schema,
    cmd_sessions,
    cmd_show,
    cmd_skip,
    cmd_validate,
    cmd_worker,
)
from .dashboard import cmd_dashboard
from .exits import ExitCode
from .operator import add_operator_commands

__all__ = ["build_parser"]


class _Parser(argparse.ArgumentParser):
    # argparse exits with 2 on its own; say it through ExitCode so the help's
    # list of exit codes stays the one source.
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (where your tasks, runners, storages or managers "
        "register themselves); repeatable; the current directory is importable",
    )
    session = _Parser(add_help=False)
    session.add_argument("url", metavar="URL", help="storage URL, e.g. sqlite:///state.db")
    session.add_argument("uid", metavar="UID", help="session id")
    session.add_argument(
        "--manager",
        default="default",
        metavar="NAME",
        help="registered TriggerManager class to use (its hooks run); default: %(default)s",
    )
    runs = _Parser(add_help=False)
    runs.add_argument(
        "--runner",
        metavar="NAME",
        help="runner for tasks without `using` (default: the manager's, usually asyncio, "
        "which runs tasks in this process)",
    )
    runs.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="wait at most this long for tasks run in this process (default: no limit); "
        "runs still going are then cancelled and stored as failed",
    )
    as_json = _Parser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON for machines")

    parser = _Parser(
        prog="atriggers",
        description="Check atriggers configurations, inspect and repair sessions, run a worker.",
        epilog="exit codes: " + ", ".join(f"{c.value} {c.name.lower()}" for c in ExitCode),
    )
    parser.add_argument("--version", action="version", version=f"atriggers {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser(
        "validate", parents=[common, as_json], help="check a configuration file and list every problem"
    )
    p.add_argument("config", metavar="CONFIG.json", help="configuration file ('-': stdin)")
    p.set_defaults(handler=cmd_validate)

    p = sub.add_parser(
        "configure", parents=[common, session], help="merge a configuration file into a session (creates it)"
    )
    p.add_argument("config", metavar="CONFIG.json")
    p.set_defaults(handler=cmd_configure)

    p = sub.add_parser(
        "show",
        parents=[common, session, as_json],
        help="a session's tasks, instances, unresolved items and failures",
    )
    p.set_defaults(handler=cmd_show)

    p = sub.add_parser("fire", parents=[common, session, runs, as_json], help="fire a trigger into a session")
    p.add_argument("trigger", metavar="TRIGGER")
    p.add_argument("--kwargs", metavar="JSON", help="trigger kwargs: a JSON object or @file")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print what the fire would create, schedule and abandon; write and run nothing",
    )
    p.add_argument(
        "--key",
        metavar="KEY",
        help="idempotency key: the fire happens once, a repeat with the same key changes nothing",
    )
    p.set_defaults(handler=cmd_fire)

    p = sub.add_parser("replay", parents=[common, session, runs, as_json], help="replay a failed instance")
    p.add_argument("instance", metavar="INSTANCE", help="e.g. t_importSubject#0")
    p.add_argument(
        "--kwargs", metavar="JSON", help="replacement kwargs, trigger name -> kwargs: a JSON object or @file"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replay even when all of the task's `unless` triggers have fired (it runs anyway)",
    )
    p.set_defaults(handler=cmd_replay)

    p = sub.add_parser(
        "skip", parents=[common, session, runs, as_json], help="mark a failed instance skipped"
    )
    p.add_argument("instance", metavar="INSTANCE")
    p.add_argument(
        "--cascade", action="store_true", help="fire the task's name as if the instance had finished"
    )
    p.add_argument(
        "--result", metavar="JSON", help="with --cascade: the kwargs to fire with (JSON object or @file)"
    )
    p.set_defaults(handler=cmd_skip)

    p = sub.add_parser("sessions", parents=[common, as_json], help="list a storage's sessions")
    p.add_argument("url", metavar="URL")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--unresolved", action="store_true", help="only sessions with unresolved tasks")
    which.add_argument("--failed", action="store_true", help="only sessions with failed instances")
    which.add_argument(
        "--stuck",
        action="store_true",
        help="only sessions with lost instances, or in-flight ones past their deadline (no sweeper "
        "running?) or that nothing will recover by itself",
    )
    which.add_argument(
        "--waiting-for",
        metavar="TRIGGER",
        help="count the sessions with tasks still waiting for TRIGGER (and list them)",
    )
    which.add_argument("--by-code", action="store_true", help="count tasks by explanation code (see `why`)")
    p.add_argument(
        "--limit", type=int, metavar="N", help="with --waiting-for or --by-code: look at N sessions at most"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print session ids only")
    p.set_defaults(handler=cmd_sessions)

    p = sub.add_parser(
        "dashboard", parents=[common], help="serve the operator dashboard (read-only without --allow-actions)"
    )
    p.add_argument("url", metavar="URL", help="storage URL, e.g. sqlite:///state.db")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default: %(default)s)")
    p.add_argument(
        "--allow-actions",
        action="store_true",
        help="offer the repairs (Replay, Skip, ...) to everyone who reaches the page; replayed "
        "instances of asyncio tasks run in this process (--import their module)",
    )
    p.set_defaults(handler=cmd_dashboard)

    p = sub.add_parser("graph", parents=[common], help="draw a workflow as Mermaid or Graphviz DOT")
    p.add_argument(
        "config",
        metavar="CONFIG.json",
        nargs="?",
        help="configuration file (default: the --session's configuration)",
    )
    p.add_argument("--format", choices=("mermaid", "dot"), default="mermaid")
    p.add_argument(
        "--session", nargs=2, metavar=("URL", "UID"), help="colour the nodes by the status of this session"
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    p.set_defaults(handler=cmd_graph)

    p = sub.add_parser(
        "worker",
        parents=[common],
        help="recover what is due (lost runs, ended cooldowns, delayed fires, expired windows) "
        "until stopped, running in-process what it recovers",
    )
    p.add_argument("url", metavar="URL", help="storage URL, e.g. sqlite:///state.db")
    p.add_argument(
        "--interval", type=float, default=1.0, metavar="SECONDS", help="seconds between sweeps (default: 1)"
    )
    p.add_argument(
        "--lease",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="this process's lease: silent this long, what it runs is recovered elsewhere (default: 30)",
    )
    p.add_argument(
        "--runner", metavar="NAME", help="runner for recovered tasks without `using` (default: asyncio)"
    )
    p.add_argument("--once", action="store_true", help="sweep once, print what was handled, and exit")
    p.set_defaults(handler=cmd_worker)

    p = sub.add_parser("schema", parents=[common], help="print the JSON Schema of configurations")
    out = p.add_mutually_exclusive_group()
    out.add_argument("-o", "--output", metavar="FILE", help="write it to FILE")
    out.add_argument("--check", metavar="FILE", help="exit 1 if FILE is not up to date")
    p.set_defaults(handler=cmd_schema)

    add_operator_commands(sub, common=common, session=session, runs=runs, as_json=as_json)
    return parser
