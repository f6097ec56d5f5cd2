"""The ``atriggers`` subcommands: each takes the parsed arguments and returns
an `ExitCode` (or raises `CommandError`)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ..config import parse_configuration
from ..describe import trouble
from ..graph import to_dot, to_mermaid
from ..instance import Status
from ..manager import TriggerManager
from ..schema import schema_json
from ..state import SessionState
from ..storage.base import Storage
from ..storage.index import SessionFilter, each_summary
from ..storage.lease import OwnerLease
from ..sweeper import Sweeper
from .exits import CommandError, ExitCode
from .inputs import checked_configuration, json_object, read_text
from .render import (
    Changed,
    changes_json,
    changes_text,
    emit_json,
    session_json,
    session_text,
    sessions_table,
)
from .runnable import check_runnable
from .session import existing_session, load_session, manager_for, opened_storage

__all__ = [
    "cmd_configure",
    "cmd_fire",
    "cmd_graph",
    "cmd_replay",
    "cmd_schema",
    "cmd_sessions",
    "cmd_show",
    "cmd_skip",
    "cmd_validate",
    "cmd_worker",
]


def cmd_validate(args: argparse.Namespace) -> int:
    configuration, problems = checked_configuration(args.config, None if args.json else sys.stdout)
    if args.json:
        emit_json(
            {
                "valid": not problems,
                "problems": [
                    {"task": p.task, "directive": p.directive, "message": p.message} for p in problems
                ],
            },
            sys.stdout,
        )
    elif not problems:
        count = len(configuration)
        print(f"{args.config}: valid configuration ({count} task{'s' * (count != 1)})")
    return ExitCode.INVALID if problems else ExitCode.OK


async def cmd_configure(args: argparse.Namespace) -> int:
    configuration, problems = checked_configuration(args.config, sys.stderr, "; nothing stored")
    if problems:
        return ExitCode.INVALID
    async with opened_storage(args.url, create=True) as storage:
        manager = manager_for(storage, args.uid, args)
        await manager.update_configuration(configuration)
        state = await manager.get_state()
    print(
        f"session {args.uid!r}: configuration updated ({len(configuration)} task(s) given, "
        f"{len(state.tasks)} configured), version {state.version}"
    )
    return ExitCode.OK


async def cmd_show(args: argparse.Namespace) -> int:
    async with opened_storage(args.url) as storage:
        state = await existing_session(storage, args.uid)
        url = storage.safe_url  # never print a password
        now = storage.clock.time()
    if args.json:
        emit_json(session_json(state, url), sys.stdout)
    else:
        print(session_text(state, url, now))
    return ExitCode.OK


async def cmd_sessions(args: argparse.Namespace) -> int:
    if getattr(args, "waiting_for", None) is not None or getattr(args, "by_code", False):
        from .why import cmd_survey

        return await cmd_survey(args)
    async with opened_storage(args.url) as storage:
        rows: list[dict[str, Any]] = []
        for uid in await _candidates(storage, args):
            if args.quiet and not (args.unresolved or args.failed or args.stuck):
                rows.append({"uid": uid})
                continue
            # The working view holds every unresolved instance, failed ones included:
            # enough to filter without reading the session's whole history.
            state = await storage.load(uid)
            failed = [i.name for i in state.get_unresolved_instances() if i.status is Status.FAILED]
            unresolved_tasks = [t.name for t in state.get_unresolved_tasks()]
            now = storage.clock.time()
            troubled = {
                i.name: why for i in state.get_unresolved_instances() if (why := trouble(i, now)) is not None
            }
            if args.failed and not failed:
                continue
            if args.unresolved and not unresolved_tasks:
                continue
            if args.stuck and not troubled:
                continue
            rows.append(
                {
                    "uid": uid,
                    "version": state.version,
                    "tasks": len(state.tasks),
                    "instances": sum(state.instance_counts.values()),
                    "unresolvedTasks": unresolved_tasks,
                    "unresolvedInstances": [i.name for i in state.get_unresolved_instances()],
                    "failed": failed,
                    "trouble": troubled,
                }
            )
    if args.json:
        emit_json(rows, sys.stdout)
    elif args.quiet:
        for row in rows:
            print(row["uid"])
    elif rows:
        print(sessions_table(rows))
    else:
        print(
            "no sessions" + (" matching the filter" if args.unresolved or args.failed or args.stuck else "")
        )
    return ExitCode.OK


async def _candidates(storage: Storage, args: argparse.Namespace) -> list[str]:
    """The sessions `sessions` may list, from the session index: with --failed
    only failed ones, with --stuck failed (lost) or in-flight ones."""
    wanted = [SessionFilter(failed=True)] if args.failed else [SessionFilter()]
    if args.stuck:
        wanted = [SessionFilter(failed=True), SessionFilter(stuck=True)]
    uids = {summary.uid for filter in wanted async for summary in each_summary(storage, filter)}
    return sorted(uids)


Operation = Callable[[TriggerManager], Awaitable[str]]


async def _operate(args: argparse.Namespace, operation: Operation) -> int:
    """Apply `operation` to the session, wait for what it started here, report."""
    async with opened_storage(args.url) as storage:
        named = [args.instance] if getattr(args, "instance", None) else []
        before = await existing_session(storage, args.uid, named)
        manager = manager_for(storage, args.uid, args)
        summary = await operation(manager)
        # In-process runs (the asyncio runner) live in this process: wait for them
        # and their cascades, or they would die with it.
        timed_out = False
        try:
            await asyncio.wait_for(manager.join(), args.timeout)
        except TimeoutError:
            timed_out = True
            # Cancelled runs are stored as failed, so they can be replayed.
            await storage.drain(0)
        # What may have changed: the instances unresolved before, the one named,
        # and the ones created since (numbered on from the task's old count).
        counts = (await storage.load(args.uid)).instance_counts
        created = [
            f"{task}#{n}"
            for task, count in counts.items()
            for n in range(before.instance_counts.get(task, 0), count)
        ]
        after = await storage.load(args.uid, [*before.instances, *created])
    changed: list[Changed] = [
        (before.instances.get(name), instance)
        for name, instance in after.instances.items()
        if name not in before.instances or before.instances[name] != instance
    ]
    if args.json:
        emit_json(changes_json(summary, timed_out, changed), sys.stdout)
    else:
        print(changes_text(summary, args.timeout if timed_out else None, changed))
    failed = any(new.status is Status.FAILED for _, new in changed)
    return ExitCode.TASK_FAILED if failed else ExitCode.OK


async def cmd_fire(args: argparse.Namespace) -> int:
    if getattr(args, "dry_run", False):
        from .why import cmd_dry_run

        return await cmd_dry_run(args)
    kwargs = json_object(args.kwargs, "--kwargs")

    async def fire(manager: TriggerManager) -> str:
        scheduled = await manager.fire(args.trigger, kwargs, key=args.key)
        names = ", ".join(i.name for i in scheduled) or "none"
        return f"fired {args.trigger!r} in session {args.uid!r}; scheduled: {names}"

    return await _operate(args, fire)


async def cmd_replay(args: argparse.Namespace) -> int:
    kwargs = json_object(args.kwargs, "--kwargs")

    async def replay(manager: TriggerManager) -> str:
        state = await manager.storage.load(manager.uid, [args.instance])
        failed = state.instances.get(args.instance)
        task = state.tasks.get(failed.task_name) if failed is not None else None
        if task is not None and task.unless and task.unless <= state.latest_kwargs.keys() and not args.force:
            # A replay is an operator's explicit choice and runs even then (as it
            # always has): say so before, not after.
            raise CommandError(
                f"all of {task.name!r}'s unless triggers ({', '.join(sorted(task.unless))}) have "
                f"fired, so no new instance of it would run; replaying {args.instance} runs it "
                f"anyway: add --force to do that",
                ExitCode.WRONG_STATUS,
            )
        # Refused here, before the failed instance is used up, if the replay
        # would fail at once in this process (task not imported, unknown runner).
        check_runnable(manager, state, [args.instance], args.runner)
        if args.runner is not None:
            if kwargs is not None:
                raise CommandError("--runner and --kwargs cannot be combined in a replay", ExitCode.USAGE)
            # Told otherwise: the clone goes to --runner, not where the failed one went.
            (clone,), _ = await manager.apply_repairs({args.instance: "replay"}, runner=args.runner)
        else:
            clone = await manager.replay_failed_instance(args.instance, kwargs)
        return f"replayed {args.instance} as {clone.name} (runner {clone.runner})"

    return await _operate(args, replay)


async def cmd_skip(args: argparse.Namespace) -> int:
    result = json_object(args.result, "--result")
    if result is not None and not args.cascade:
        raise CommandError("--result is the kwargs of the cascade: give --cascade too", ExitCode.USAGE)

    async def skip(manager: TriggerManager) -> str:
        skipped = await manager.skip_failed_instance(args.instance, args.cascade, result)
        if args.cascade:
            return f"skipped {skipped.name}; fired {skipped.task_name!r} as if it had finished"
        return f"skipped {skipped.name}"

    return await _operate(args, skip)


def cmd_graph(args: argparse.Namespace) -> int:
    if args.config is None and args.session is None:
        raise CommandError("graph needs CONFIG.json, --session URL UID, or both", ExitCode.USAGE)
    configuration: Any = None
    if args.config is not None:
        configuration, problems = checked_configuration(args.config, sys.stderr)
        if problems:
            return ExitCode.INVALID
        configuration = parse_configuration(configuration)
    state: SessionState | None = None
    if args.session is not None:
        state = asyncio.run(load_session(*args.session))
        if configuration is None:
            configuration = state.tasks
    render = to_dot if args.format == "dot" else to_mermaid
    text = render(configuration, state)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return ExitCode.OK


def cmd_schema(args: argparse.Namespace) -> int:
    text = schema_json()
    if args.check:
        current = read_text(args.check, "schema")
        if current != text:
            print(
                f"{args.check} is out of date: regenerate it with `atriggers schema --output {args.check}`",
                file=sys.stderr,
            )
            return ExitCode.INVALID
        print(f"{args.check} is up to date")
    elif args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return ExitCode.OK


async def cmd_worker(args: argparse.Namespace) -> int:
    if not args.interval > 0 or not args.lease > 0:
        raise CommandError("--interval and --lease must be positive numbers of seconds", ExitCode.USAGE)
    async with opened_storage(args.url) as storage:
        storage.lease = OwnerLease(storage, args.lease)
        sweeper = Sweeper(storage, interval=args.interval, default_runner=args.runner, close_runners=True)
        if args.once:
            handled = await sweeper.run_once()
            await _join(storage)
            await sweeper.aclose()
            print(f"handled {handled} due entr{'y' if handled == 1 else 'ies'}: {_counts(sweeper)}")
            return ExitCode.OK
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        print(
            f"atriggers worker: sweeping {storage!r} every {args.interval:g}s "
            f"(lease {args.lease:g}s); stop with Ctrl-C or SIGTERM",
            file=sys.stderr,
            flush=True,
        )
        try:
            async with sweeper:
                await stop.wait()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
        print(f"atriggers worker: stopping after {_counts(sweeper)}", file=sys.stderr, flush=True)
    return ExitCode.OK


async def _join(storage: Storage) -> None:
    """Wait for what the sweep started in this process (runs, cascades)."""
    await storage.drain()


def _counts(sweeper: Sweeper) -> str:
    return ", ".join(f"{count} {verdict}" for verdict, count in sorted(sweeper.counts.items())) or "nothing"
