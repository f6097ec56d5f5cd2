"""The operator's repairs of one instance: ``set-status``, ``resolve-logs``,
``note``, and the checks ``replay`` makes before using up a failed instance."""

from __future__ import annotations

import argparse
import getpass
import socket
from typing import Any

from ..clock import iso
from ..instance import Status
from ..manager import TriggerManager
from ..repair import REPAIR_KEY
from .commands import _operate
from .exits import CommandError, ExitCode
from .inputs import json_object

__all__ = ["add_operator_commands", "cmd_note", "cmd_resolve_logs", "cmd_set_status", "operator_name"]


def operator_name(given: str | None = None) -> str:
    """Who is repairing: ``--by``, else ``user@host``."""
    if given:
        return given
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _record(args: argparse.Namespace, action: str, **more: Any) -> dict[str, Any]:
    record = {"by": operator_name(getattr(args, "by", None)), "action": action, **more}
    if getattr(args, "note", None):
        record["note"] = args.note
    return record


async def cmd_set_status(args: argparse.Namespace) -> int:
    metadata = json_object(args.metadata, "--metadata") or {}
    kwargs = json_object(args.kwargs, "--kwargs")
    if kwargs is not None and not args.cascade:
        raise CommandError("--kwargs is the kwargs of the cascade: give --cascade too", ExitCode.USAGE)

    async def set_status(manager: TriggerManager) -> str:
        before = await manager.get_instance(args.instance)
        record = _record(args, "set-status", was=before.status.value, at=iso(manager.storage.clock.time()))
        updated = await manager.update_instance_status(
            args.instance, args.status, {**metadata, REPAIR_KEY: record}, args.cascade, kwargs
        )
        cascade = f"; fired {updated.task_name!r}" if args.cascade else ""
        return f"{updated.name}: {before.status.value} -> {updated.status.value}{cascade}"

    return await _operate(args, set_status)


async def cmd_resolve_logs(args: argparse.Namespace) -> int:
    async def resolve(manager: TriggerManager) -> str:
        instance = await manager.mark_instance_logs_resolved(args.instance)
        return f"{instance.name}: {instance.log_level_name} logs marked resolved"

    return await _operate(args, resolve)


async def cmd_note(args: argparse.Namespace) -> int:
    async def note(manager: TriggerManager) -> str:
        instance = await manager.annotate_instance(args.instance, args.text, by=operator_name(args.by))
        return f"{instance.name}: note added ({len(instance.metadata.get('notes') or [])} in all)"

    return await _operate(args, note)


def add_operator_commands(
    sub: Any,
    *,
    common: argparse.ArgumentParser,
    session: argparse.ArgumentParser,
    runs: argparse.ArgumentParser,
    as_json: argparse.ArgumentParser,
) -> None:
    """The subcommands of this module, `why` and `repair` (called by `build_parser`)."""
    from .repair import cmd_repair
    from .why import cmd_why

    p = sub.add_parser(
        "why",
        parents=[common, session, as_json],
        help="explain why each task of a session ran or did not (or one task or instance)",
    )
    p.add_argument("name", metavar="NAME", nargs="?", help="a task (each of its instances) or an instance")
    p.set_defaults(handler=cmd_why)

    by = argparse.ArgumentParser(add_help=False)
    by.add_argument(
        "--by", metavar="NAME", help="who is repairing (default: user@host), recorded on the instance"
    )
    by.add_argument("--note", metavar="TEXT", help="why, recorded on the instance")

    p = sub.add_parser(
        "set-status",
        parents=[common, session, runs, as_json, by],
        help="set an instance's status (e.g. a stuck running one to failed, to replay it)",
    )
    p.add_argument("instance", metavar="INSTANCE")
    p.add_argument("status", metavar="STATUS", choices=[s.value for s in Status], help="one of: %(choices)s")
    p.add_argument("--metadata", metavar="JSON", help="metadata to merge in (JSON object or @file)")
    p.add_argument("--cascade", action="store_true", help="fire the task's name too (as if it finished)")
    p.add_argument("--kwargs", metavar="JSON", help="with --cascade: the kwargs to fire with")
    p.set_defaults(handler=cmd_set_status)

    p = sub.add_parser(
        "resolve-logs",
        parents=[common, session, as_json],
        help="mark an instance's ERROR-level logs resolved",
    )
    p.add_argument("instance", metavar="INSTANCE")
    p.set_defaults(handler=cmd_resolve_logs, timeout=None)

    p = sub.add_parser(
        "note", parents=[common, session, as_json], help="add a note to an instance's metadata"
    )
    p.add_argument("instance", metavar="INSTANCE")
    p.add_argument("text", metavar="TEXT")
    p.add_argument("--by", metavar="NAME", help="who writes it (default: user@host)")
    p.set_defaults(handler=cmd_note, timeout=None)

    p = sub.add_parser(
        "repair",
        parents=[common, runs],
        help="plan repairs of failed instances across sessions (--plan FILE), then apply them (--apply FILE)",
    )
    p.add_argument("url", metavar="URL", help="storage URL, e.g. sqlite:///state.db")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--plan", metavar="FILE", help="write a plan of the failed instances selected to FILE")
    mode.add_argument("--apply", metavar="FILE", help="apply the plan in FILE")
    p.add_argument("--failed", action="store_true", help="with --plan: select failed instances (the default)")
    p.add_argument("--task", metavar="TASK", help="with --plan: only instances of this task")
    p.add_argument(
        "--exception-type", metavar="TYPE", help="with --plan: only failures with this exception type"
    )
    p.add_argument(
        "--since",
        metavar="TIME",
        help="with --plan: only failures at or after TIME (ISO 8601; UTC if no zone)",
    )
    p.add_argument(
        "--action",
        choices=("replay", "skip"),
        default="replay",
        help="with --plan: what to do (default: replay)",
    )
    p.add_argument("--limit", type=int, metavar="N", help="with --plan: look at N sessions at most")
    p.add_argument("--by", metavar="NAME", help="with --apply: who repairs (default: user@host)")
    p.add_argument("--note", metavar="TEXT", help="with --apply: why, recorded on every instance repaired")
    p.add_argument(
        "--manager", default="default", metavar="NAME", help="registered TriggerManager class to use"
    )
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    p.set_defaults(handler=cmd_repair)
