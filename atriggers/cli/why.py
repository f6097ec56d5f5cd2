"""``atriggers why``, ``sessions --waiting-for/--by-code`` and ``fire --dry-run``:
the commands that explain, and predict, without changing anything."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..explain import CODES, Explanation, explain
from ..storage.base import Storage
from .exits import CommandError, ExitCode
from .inputs import json_object
from .render import emit_json, table
from .session import existing_session, manager_for, opened_storage

__all__ = ["Survey", "cmd_dry_run", "cmd_survey", "cmd_why", "survey_sessions", "why_text"]


def why_text(explanations: list[Explanation]) -> str:
    """One row per explanation (task, instance, code, missing), then each sentence."""
    rows = [[e.task, e.instance or "-", e.code, ", ".join(e.missing)] for e in explanations]
    out = [table(rows, ["task", "instance", "code", "missing"]), ""]
    out += [e.text for e in explanations]
    return "\n".join(out)


async def cmd_why(args: argparse.Namespace) -> int:
    async with opened_storage(args.url) as storage:
        await existing_session(storage, args.uid, [])
        explanations = await manager_for(storage, args.uid, args).explain(args.name)
    if args.json:
        emit_json([e.to_dict() for e in explanations], sys.stdout)
    else:
        print(why_text(explanations))
    return ExitCode.OK


@dataclass
class Survey:
    """Explanation codes counted over the sessions of a storage."""

    #: Sessions looked at (at most the limit), and whether there were more.
    sessions: int = 0
    truncated: bool = False
    #: Code -> how many tasks have it, and in how many sessions.
    tasks_by_code: Counter[str] = field(default_factory=Counter)
    sessions_by_code: Counter[str] = field(default_factory=Counter)
    #: With a trigger: session -> its tasks waiting for it.
    waiting: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self, trigger: str | None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "sessions": self.sessions,
            "truncated": self.truncated,
            "codes": {
                code: {"tasks": self.tasks_by_code[code], "sessions": self.sessions_by_code[code]}
                for code in CODES
                if self.tasks_by_code[code]
            },
        }
        if trigger is not None:
            data["waitingFor"] = trigger
            data["waiting"] = self.waiting
        return data


async def survey_sessions(
    storage: Storage, *, trigger: str | None = None, limit: int | None = None
) -> Survey:
    """Count explanation codes over the storage's sessions (at most `limit` of
    them) and, with `trigger`, which sessions have tasks still waiting for it.

    Reads every session it looks at in full: the one place to change once
    storage keeps an index of sessions by what they wait for.
    """
    survey = Survey()
    uids = await storage.list_sessions()
    if limit is not None and len(uids) > limit:
        uids, survey.truncated = uids[:limit], True
    now = storage.clock.time()
    for uid in uids:
        state = await storage.load_all(uid)
        explanations = explain(state, now=now)
        survey.sessions += 1
        survey.tasks_by_code.update(e.code for e in explanations)
        survey.sessions_by_code.update({e.code for e in explanations})
        if trigger is not None:
            tasks = [
                e.task
                for e in explanations
                if e.code in ("waiting", "never-triggered") and trigger in e.missing
            ]
            if tasks:
                survey.waiting[uid] = tasks
    return survey


async def cmd_survey(args: argparse.Namespace) -> int:
    """``sessions --waiting-for TRIGGER`` / ``sessions --by-code``."""
    if args.limit is not None and args.limit < 1:
        raise CommandError("--limit must be a positive number of sessions", ExitCode.USAGE)
    async with opened_storage(args.url) as storage:
        survey = await survey_sessions(storage, trigger=args.waiting_for, limit=args.limit)
    if args.json:
        emit_json(survey.to_dict(args.waiting_for), sys.stdout)
        return ExitCode.OK
    looked = f"{survey.sessions} session(s)" + (" (--limit reached)" if survey.truncated else "")
    if args.waiting_for is not None:
        waiting = survey.waiting
        if args.quiet:
            for uid in waiting:
                print(uid)
            return ExitCode.OK
        print(f"{len(waiting)} session(s) waiting for {args.waiting_for} (of {looked})")
        if waiting:
            print(
                table(
                    [[uid, ", ".join(tasks)] for uid, tasks in waiting.items()], ["session", "tasks waiting"]
                )
            )
        return ExitCode.OK
    rows = [
        [code, str(survey.tasks_by_code[code]), str(survey.sessions_by_code[code])]
        for code in CODES
        if survey.tasks_by_code[code]
    ]
    print(f"tasks by explanation code, over {looked}")
    print(table(rows, ["code", "tasks", "sessions"]) if rows else "(no tasks)")
    return ExitCode.OK


async def cmd_dry_run(args: argparse.Namespace) -> int:
    """``fire --dry-run``: what the fire would do; nothing is written or run."""
    kwargs = json_object(args.kwargs, "--kwargs")
    async with opened_storage(args.url) as storage:
        await existing_session(storage, args.uid, [])
        preview = await manager_for(storage, args.uid, args).preview_fire(args.trigger, kwargs)
    if args.json:
        emit_json({"dryRun": True, **preview.to_dict()}, sys.stdout)
        return ExitCode.OK
    print(f"dry run: firing {args.trigger!r} in session {args.uid!r} (version {preview.version}) would")
    if preview.changes_nothing:
        print("  change no instance (it would only be remembered as fired)")
        return ExitCode.OK
    rows = []
    data = preview.to_dict()
    for what, key in (
        ("schedule", "scheduled"),
        ("create", "created"),
        ("apply to", "applied"),
        ("abandon", "abandoned"),
    ):
        for item in data[key]:
            if key == "created" and item["status"] != "unstarted":
                continue  # told as scheduled or abandoned
            detail = (
                item.get("runner")
                or item.get("reason")
                or ("waits for " + ", ".join(item["missing"]) if item.get("missing") else "")
            )
            rows.append([what, item["name"], detail])
    print(table(rows, ["would", "instance", "detail"]))
    print("nothing was written; the cascades of what it schedules depend on what those tasks return")
    return ExitCode.OK
