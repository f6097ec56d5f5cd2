"""``atriggers repair``: plan repairs of failed instances across sessions, then
apply the reviewed plan, refusing the sessions that changed in between."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import InstanceNotFound, InvalidInput, InvalidStatus, SessionChanged, TriggerError
from ..manager import TriggerManager
from ..repair import RepairFilter, RepairPlan, SessionPlan
from ..storage.base import Storage
from . import style
from .exits import CommandError, ExitCode
from .inputs import read_text
from .operator import operator_name
from .render import emit_json, table
from .runnable import check_runnable
from .session import manager_for, opened_storage

__all__ = ["cmd_repair", "parse_time"]


def parse_time(text: str, what: str) -> float:
    """An ISO 8601 time (UTC when it names no zone) as epoch seconds."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(
            f"{what} must be an ISO 8601 time such as 2026-12-07T03:00, not {text!r}", ExitCode.USAGE
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


async def cmd_repair(args: argparse.Namespace) -> int:
    if args.plan is not None:
        return await _plan(args)
    return await _apply(args)


async def _plan(args: argparse.Namespace) -> int:
    for option in ("by", "note"):
        if getattr(args, option):
            raise CommandError(
                f"--{option} goes with --apply (it is recorded when the plan is applied)", ExitCode.USAGE
            )
    if args.limit is not None and args.limit < 1:
        raise CommandError("--limit must be a positive number of sessions", ExitCode.USAGE)
    which = RepairFilter(
        task=args.task,
        exception_type=args.exception_type,
        since=parse_time(args.since, "--since") if args.since else None,
    )
    async with opened_storage(args.url) as storage:
        uids = await storage.list_sessions()
        if args.limit is not None:
            uids = uids[: args.limit]
        # The working view of a session holds every unresolved instance, so
        # every failed one, without reading its history.
        states = [await storage.load(uid) for uid in uids]
        plan = RepairPlan.build(states, which, args.action, source=storage.safe_url, at=storage.clock.time())
    _write_atomically(Path(args.plan), json.dumps(plan.to_dict(), indent=2, ensure_ascii=False) + "\n")
    if args.json:
        emit_json({"plan": args.plan, "sessions": len(plan.sessions), "count": plan.count}, sys.stdout)
        return ExitCode.OK
    print(
        f"planned {plan.count} {args.action}(s) in {len(plan.sessions)} session(s) "
        f"(of {len(uids)} looked at) -> {args.plan}"
    )
    if plan.count:
        by_task = Counter(r.task for s in plan.sessions for r in s.repairs)
        by_error = Counter(r.exception_type or "?" for s in plan.sessions for r in s.repairs)
        print(table([[t, str(n)] for t, n in by_task.most_common()], ["task", "instances"]))
        print(table([[e, str(n)] for e, n in by_error.most_common()], ["exception type", "instances"]))
        print(
            f'review it (an action may be changed to "skip"), then: '
            f"atriggers repair {args.url} --apply {args.plan}"
        )
    return ExitCode.OK


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise CommandError(f"--plan: cannot write {str(path)!r}: {exc}", ExitCode.USAGE) from None


def _read_plan(path: str) -> RepairPlan:
    text = read_text(path, "--apply")
    try:
        return RepairPlan.from_dict(json.loads(text))
    except json.JSONDecodeError as exc:
        raise CommandError(
            f"--apply: {path} is not valid JSON: {exc.msg} (line {exc.lineno})", ExitCode.USAGE
        ) from None
    except InvalidInput as exc:
        raise CommandError(f"--apply: {path}: {exc}", ExitCode.USAGE) from None


async def _apply(args: argparse.Namespace) -> int:
    for option in ("task", "exception_type", "since", "limit"):
        if getattr(args, option) is not None:
            raise CommandError(f"--{option.replace('_', '-')} goes with --plan", ExitCode.USAGE)
    plan = _read_plan(args.apply)
    by = operator_name(args.by)
    record: dict[str, Any] = {"by": by, "plan": os.path.basename(args.apply)}
    if args.note:
        record["note"] = args.note
    outcome = _Outcome()
    async with opened_storage(args.url) as storage:
        if plan.source and plan.source != storage.safe_url:
            print(
                f"atriggers: note: the plan was made on {plan.source}, applying it to {storage.safe_url}",
                file=sys.stderr,
            )
        managers = await _checked_managers(storage, plan, args)
        with style.progress(plan.count, "repairing", sys.stderr) as advance:
            for session in plan.sessions:
                await _repair_session(managers[session.uid], session, record, args.runner, outcome)
                advance(len(session.repairs))
        # Replays run by this process (the asyncio runner) live in it: wait for them.
        try:
            await asyncio.wait_for(asyncio.gather(*(m.join() for m in managers.values())), args.timeout)
        except TimeoutError:
            outcome.timed_out = True
            await storage.drain(0)
        await _clone_statuses(storage, outcome)
    return _report(args, plan, outcome)


async def _checked_managers(
    storage: Storage, plan: RepairPlan, args: argparse.Namespace
) -> dict[str, TriggerManager]:
    """One manager per session; every replay checked runnable before anything is written."""
    managers: dict[str, TriggerManager] = {}
    for session in plan.sessions:
        manager = managers[session.uid] = manager_for(storage, session.uid, args)
        replays = [r.instance for r in session.repairs if r.action == "replay"]
        if replays:
            state = await storage.load(session.uid, replays)
            check_runnable(manager, state, replays, args.runner)
    return managers


class _Outcome:
    def __init__(self) -> None:
        self.repaired: dict[str, int] = {}
        self.replayed = 0
        self.skipped = 0
        self.refused: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        self.clones: dict[str, list[str]] = {}
        self.clone_statuses: Counter[str] = Counter()
        self.timed_out = False


async def _repair_session(
    manager: TriggerManager,
    session: SessionPlan,
    record: dict[str, Any],
    runner: str | None,
    outcome: _Outcome,
) -> None:
    try:
        clones, skipped = await manager.apply_repairs(
            session.actions, expected_version=session.version, record=record, runner=runner
        )
    except SessionChanged as exc:
        outcome.refused[session.uid] = f"changed since the plan (version {exc.expected}, now {exc.current})"
    except (InstanceNotFound, InvalidStatus) as exc:
        outcome.refused[session.uid] = str(exc)
    except TriggerError as exc:
        # One session's failure (storage, contention) does not stop the others.
        outcome.errors[session.uid] = f"{type(exc).__name__}: {exc}"
    else:
        outcome.repaired[session.uid] = len(clones) + len(skipped)
        outcome.replayed += len(clones)
        outcome.skipped += len(skipped)
        if clones:
            outcome.clones[session.uid] = [c.name for c in clones]


async def _clone_statuses(storage: Storage, outcome: _Outcome) -> None:
    for uid, names in outcome.clones.items():
        state = await storage.load(uid, names)
        outcome.clone_statuses.update(state.instances[n].status.value for n in names if n in state.instances)


def _report(args: argparse.Namespace, plan: RepairPlan, outcome: _Outcome) -> int:
    if outcome.refused or outcome.errors:
        code = ExitCode.WRONG_STATUS if not outcome.errors else ExitCode.STORAGE
    elif outcome.clone_statuses.get("failed"):
        code = ExitCode.TASK_FAILED
    else:
        code = ExitCode.OK
    if args.json:
        emit_json(
            {
                "plan": args.apply,
                "sessions": len(plan.sessions),
                "repaired": sorted(outcome.repaired),
                "replayed": outcome.replayed,
                "skipped": outcome.skipped,
                "refused": outcome.refused,
                "errors": outcome.errors,
                "clones": dict(outcome.clone_statuses),
                "timedOut": outcome.timed_out,
            },
            sys.stdout,
        )
        return code
    rows = [
        ["sessions repaired", str(len(outcome.repaired))],
        ["instances replayed", str(outcome.replayed)],
        ["instances skipped", str(outcome.skipped)],
        ["sessions refused", str(len(outcome.refused))],
        ["sessions with errors", str(len(outcome.errors))],
    ]
    rows += [[f"replays now {status}", str(n)] for status, n in sorted(outcome.clone_statuses.items())]
    print(table(rows, ["outcome", "count"]))
    if outcome.refused or outcome.errors:
        print()
        problems = [[uid, "refused", why] for uid, why in outcome.refused.items()]
        problems += [[uid, "error", why] for uid, why in outcome.errors.items()]
        print(table(problems, ["session", "outcome", "why"]))
        print("nothing was written to these sessions: make a new plan for them")
    if outcome.timed_out:
        print(
            f"gave up waiting after {args.timeout} s: "
            "replays still running were cancelled and stored as failed"
        )
    return code
