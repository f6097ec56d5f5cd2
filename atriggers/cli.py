"""The ``atriggers`` command: check configurations, inspect and repair sessions.

Works over any storage URL `open_storage` understands. Exit codes are distinct
per kind of failure (see `ExitCode`) so scripts can tell them apart.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from enum import IntEnum
from pathlib import Path
from typing import Any, NoReturn, TextIO

from . import __version__
from .config import parse_configuration, validate_configuration
from .errors import (
    ConcurrencyError,
    ConfigurationError,
    InstanceNotFound,
    InvalidInput,
    InvalidStatus,
    Problem,
    StorageError,
    TriggerError,
    UnknownRunner,
)
from .graph import to_dot, to_mermaid
from .instance import Meta, Status, TaskInstance
from .manager import TriggerManager, get_manager_class
from .runners import get_runner
from .schema import schema_json
from .state import SessionState
from .storage import Storage, open_storage

__all__ = ["CommandError", "ExitCode", "build_parser", "console_main", "main"]


class ExitCode(IntEnum):
    """What the ``atriggers`` command's exit status means."""

    OK = 0
    #: The configuration is invalid (``validate``, ``configure``, ``graph``), or
    #: ``schema --check`` found the file out of date.
    INVALID = 1
    #: Bad command line: unknown option, bad JSON argument or file, unknown
    #: storage scheme, runner or manager, a module that cannot be imported.
    USAGE = 2
    #: No such database, session or instance.
    NOT_FOUND = 3
    #: The instance is not in a status that allows the operation (e.g. replaying
    #: an instance that did not fail).
    WRONG_STATUS = 4
    #: The storage failed, or concurrent writers kept the operation from landing.
    STORAGE = 5
    #: The operation was stored, but an instance run by this process failed.
    TASK_FAILED = 6


class CommandError(Exception):
    """A failure to report on stderr with its exit code."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}\n")


# -- small helpers ---------------------------------------------------------------------------


def _json_text(text: str, what: str) -> Any:
    """Parse a JSON command-line value; ``@path`` reads it from a file."""
    source = what
    if text.startswith("@"):
        source = f"{what} file {text[1:]!r}"
        text = _read_text(text[1:], source)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(
            f"{source} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
            ExitCode.USAGE,
        ) from None


def _json_object(text: str | None, what: str) -> dict[str, Any] | None:
    if text is None:
        return None
    value = _json_text(text, what)
    if not isinstance(value, dict):
        raise CommandError(f"{what} must be a JSON object, not {type(value).__name__}", ExitCode.USAGE)
    return value


def _read_text(path: str, what: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CommandError(f"{what}: no such file {path!r}", ExitCode.USAGE) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"{what}: cannot read {path!r}: {exc}", ExitCode.USAGE) from None


def _read_configuration(path: str) -> Any:
    text = _read_text(path, "configuration")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(
            f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}", ExitCode.USAGE
        ) from None


def _import_modules(modules: Sequence[str]) -> None:
    """Import the application modules named with ``--import`` (where its tasks,
    runners, storages and managers register themselves)."""
    if not modules:
        return
    # Like ``python -m``: modules of the project in the current directory import.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise CommandError(f"--import {module}: {type(exc).__name__}: {exc}", ExitCode.USAGE) from exc


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _short(value: object, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _timestamp(instance: TaskInstance, key: str) -> str:
    return instance.timestamps.get(key, "")[:19].replace("T", " ")


def _outcome(instance: TaskInstance) -> str:
    error = instance.metadata.get(Meta.EXCEPTION_TYPE)
    if instance.status is Status.FAILED:
        return str(error or "")
    if instance.result is not None:
        return _short(instance.result)
    if error:  # replayed or skipped after a failure
        return str(error)
    if instance.parent:
        return f"replay of {instance.parent}"
    return ""


def _instance_json(instance: TaskInstance) -> dict[str, Any]:
    return {"name": instance.name, **instance.to_dict()}


def _emit_json(data: object, out: TextIO) -> None:
    json.dump(data, out, indent=2, sort_keys=False, ensure_ascii=False)
    out.write("\n")


# -- storage and sessions ----------------------------------------------------------------


@asynccontextmanager
async def _storage(url: str, *, create: bool = False) -> Any:
    try:
        storage = open_storage(url)
    except ValueError as exc:
        raise CommandError(str(exc), ExitCode.USAGE) from None
    # Opening a SQLite path creates the file: a mistyped path must not silently
    # become an empty database.
    if not create and not await storage.exists():
        raise CommandError(f"no storage at {storage.url}", ExitCode.NOT_FOUND)
    async with storage:
        yield storage


async def _existing_session(storage: Storage, uid: str, names: Sequence[str] | None = None) -> SessionState:
    """The whole session, or with `names` its working view (unresolved instances
    plus those named), which costs nothing per resolved instance."""
    state = await (storage.load_all(uid) if names is None else storage.load(uid, names))
    if state.version == 0:
        raise CommandError(
            f"no session {uid!r} in {storage.url} (list them with: atriggers sessions {storage.url})",
            ExitCode.NOT_FOUND,
        )
    return state


def _manager(storage: Storage, uid: str, args: argparse.Namespace) -> TriggerManager:
    try:
        cls = get_manager_class(args.manager)
    except LookupError as exc:
        raise CommandError(f"--manager: {exc}", ExitCode.USAGE) from None
    runner = getattr(args, "runner", None)
    if runner is not None:
        try:
            get_runner(runner)
        except UnknownRunner as exc:
            raise CommandError(f"--runner: {exc}", ExitCode.USAGE) from None
    return cls(storage, uid, default_runner=runner)


# -- commands --------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    configuration = _read_configuration(args.config)
    problems = validate_configuration(configuration)
    if args.json:
        _emit_json(
            {
                "valid": not problems,
                "problems": [
                    {"task": p.task, "directive": p.directive, "message": p.message} for p in problems
                ],
            },
            sys.stdout,
        )
    elif problems:
        print(f"{args.config}: {len(problems)} problem(s)")
        _print_problems(problems)
    else:
        count = len(configuration)
        print(f"{args.config}: valid configuration ({count} task{'s' * (count != 1)})")
    return ExitCode.INVALID if problems else ExitCode.OK


def _print_problems(problems: Sequence[Problem], out: TextIO = sys.stdout) -> None:
    rows = [[p.task or "-", p.directive or "-", p.message] for p in problems]
    print(_table(rows, ["task", "directive", "problem"]), file=out)


async def cmd_configure(args: argparse.Namespace) -> int:
    configuration = _read_configuration(args.config)
    problems = validate_configuration(configuration)
    if problems:
        print(f"{args.config}: {len(problems)} problem(s); nothing stored", file=sys.stderr)
        _print_problems(problems, sys.stderr)
        return ExitCode.INVALID
    async with _storage(args.url, create=True) as storage:
        manager = _manager(storage, args.uid, args)
        await manager.update_configuration(configuration)
        state = await manager.get_state()
    print(
        f"session {args.uid!r}: configuration updated ({len(configuration)} task(s) given, "
        f"{len(state.tasks)} configured), version {state.version}"
    )
    return ExitCode.OK


async def cmd_show(args: argparse.Namespace) -> int:
    async with _storage(args.url) as storage:
        state = await _existing_session(storage, args.uid)
        url = storage.url
    if args.json:
        _emit_json(_state_json(state, url), sys.stdout)
    else:
        print(_render_state(state, url))
    return ExitCode.OK


def _ordered_instances(state: SessionState) -> Iterator[TaskInstance]:
    seen: set[str] = set()
    for task in state.tasks:
        for instance in state.instances_of_task(task):
            seen.add(instance.name)
            yield instance
    # Instances of tasks removed from the configuration since.
    yield from (i for n, i in sorted(state.instances.items()) if n not in seen)


def _failed(state: SessionState) -> list[TaskInstance]:
    return [i for i in _ordered_instances(state) if i.status is Status.FAILED]


def _state_json(state: SessionState, url: str) -> dict[str, Any]:
    return {
        "url": url,
        "uid": state.uid,
        "version": state.version,
        "tasks": {name: task.to_dict() for name, task in state.tasks.items()},
        "instances": [_instance_json(i) for i in _ordered_instances(state)],
        "latestKwargs": {k: dict(v) for k, v in state.latest_kwargs.items()},
        "unresolvedTasks": [t.name for t in state.get_unresolved_tasks()],
        "unresolvedInstances": [i.name for i in state.get_unresolved_instances()],
        "unresolvedLogs": [i.name for i in state.get_instances_with_unresolved_logs()],
        "failed": [
            {
                "instance": i.name,
                "exceptionType": i.metadata.get(Meta.EXCEPTION_TYPE),
                "exceptionInfo": i.metadata.get(Meta.EXCEPTION_INFO),
                "exceptionContext": i.metadata.get(Meta.EXCEPTION_CONTEXT),
            }
            for i in _failed(state)
        ],
    }


def _render_state(state: SessionState, url: str) -> str:
    out = [
        f"Session {state.uid!r} in {url}: version {state.version}, "
        f"{len(state.tasks)} task(s), {len(state.instances)} instance(s)",
        "",
        "Tasks",
    ]
    task_rows = [
        [
            name,
            task.run,
            ", ".join(sorted(task.after - {task.and_every} if task.and_every else task.after)),
            task.and_every or "",
            ", ".join(sorted(task.unless)),
            task.using or "",
        ]
        for name, task in state.tasks.items()
    ]
    out.append(_table(task_rows, ["task", "run", "after", "andEvery", "unless", "using"]))
    out += ["", "Instances"]
    instance_rows = [
        [
            i.name,
            i.status.value,
            ", ".join(sorted(i.kwargs)),
            _timestamp(i, Meta.CREATED),
            _timestamp(i, Meta.LAST_MODIFIED),
            _outcome(i),
        ]
        for i in _ordered_instances(state)
    ]
    if instance_rows:
        out.append(
            _table(
                instance_rows,
                ["instance", "status", "triggers applied", "created", "modified", "result / error"],
            )
        )
    else:
        out.append("(none yet)")
    out += ["", "Triggers fired"]
    if state.latest_kwargs:
        out.append(
            _table(
                [[name, _short(dict(kw))] for name, kw in sorted(state.latest_kwargs.items())],
                ["trigger", "latest kwargs"],
            )
        )
    else:
        out.append("(none yet)")
    out += [
        "",
        "Unresolved tasks: " + (", ".join(t.name for t in state.get_unresolved_tasks()) or "none"),
        "Unresolved instances: " + (", ".join(i.name for i in state.get_unresolved_instances()) or "none"),
        "Instances with unresolved logs: "
        + (
            ", ".join(f"{i.name} ({i.log_level_name})" for i in state.get_instances_with_unresolved_logs())
            or "none"
        ),
    ]
    for instance in _failed(state):
        out += ["", f"Failed: {instance.name}  {instance.metadata.get(Meta.EXCEPTION_TYPE, '?')}"]
        context = instance.metadata.get(Meta.EXCEPTION_CONTEXT)
        if context:
            out.append(f"  context: {json.dumps(context, sort_keys=True)}")
        info = str(instance.metadata.get(Meta.EXCEPTION_INFO) or "").rstrip()
        out += [f"  {line}" for line in info.splitlines()]
    return "\n".join(out)


async def cmd_sessions(args: argparse.Namespace) -> int:
    async with _storage(args.url) as storage:
        uids = await storage.list_sessions()
        rows: list[dict[str, Any]] = []
        for uid in uids:
            if args.quiet and not (args.unresolved or args.failed):
                rows.append({"uid": uid})
                continue
            # The working view holds every unresolved instance, failed ones included:
            # enough to filter without reading the session's whole history.
            state = await storage.load(uid)
            failed = [i.name for i in state.get_unresolved_instances() if i.status is Status.FAILED]
            unresolved_tasks = [t.name for t in state.get_unresolved_tasks()]
            if args.failed and not failed:
                continue
            if args.unresolved and not unresolved_tasks:
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
                }
            )
    if args.json:
        _emit_json(rows, sys.stdout)
    elif args.quiet:
        for row in rows:
            print(row["uid"])
    elif rows:
        print(
            _table(
                [
                    [
                        r["uid"],
                        str(r["version"]),
                        str(r["tasks"]),
                        str(r["instances"]),
                        str(len(r["unresolvedTasks"])),
                        ", ".join(r["failed"]),
                    ]
                    for r in rows
                ],
                ["session", "version", "tasks", "instances", "unresolved tasks", "failed"],
            )
        )
    else:
        print("no sessions" + (" matching the filter" if args.unresolved or args.failed else ""))
    return ExitCode.OK


Operation = Callable[[TriggerManager], Awaitable[str]]


async def _operate(args: argparse.Namespace, operation: Operation) -> int:
    """Apply `operation` to the session, wait for what it started here, report."""
    async with _storage(args.url) as storage:
        named = [args.instance] if getattr(args, "instance", None) else []
        before = await _existing_session(storage, args.uid, named)
        manager = _manager(storage, args.uid, args)
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
    changed = [
        (before.instances.get(name), instance)
        for name, instance in after.instances.items()
        if name not in before.instances or before.instances[name] != instance
    ]
    failed = [new for _, new in changed if new.status is Status.FAILED]
    if args.json:
        _emit_json(
            {
                "summary": summary,
                "timedOut": timed_out,
                "changed": [
                    {**_instance_json(new), "previousStatus": old.status.value if old else None}
                    for old, new in changed
                ],
            },
            sys.stdout,
        )
    else:
        print(summary)
        if timed_out:
            print(
                f"gave up waiting after {args.timeout} s: runs still going were cancelled "
                "and stored as failed (replay them)"
            )
        if changed:
            print(
                _table(
                    [
                        [new.name, old.status.value if old else "(new)", new.status.value, _outcome(new)]
                        for old, new in changed
                    ],
                    ["instance", "was", "now", "result / error"],
                )
            )
        for instance in failed:
            print(f"\nFailed: {instance.name}  {instance.metadata.get(Meta.EXCEPTION_TYPE, '?')}")
            info = str(instance.metadata.get(Meta.EXCEPTION_INFO) or "").rstrip()
            print("\n".join(f"  {line}" for line in info.splitlines()))
    return ExitCode.TASK_FAILED if failed else ExitCode.OK


async def cmd_fire(args: argparse.Namespace) -> int:
    kwargs = _json_object(args.kwargs, "--kwargs")

    async def fire(manager: TriggerManager) -> str:
        scheduled = await manager.fire(args.trigger, kwargs)
        names = ", ".join(i.name for i in scheduled) or "none"
        return f"fired {args.trigger!r} in session {args.uid!r}; scheduled: {names}"

    return await _operate(args, fire)


async def cmd_replay(args: argparse.Namespace) -> int:
    kwargs = _json_object(args.kwargs, "--kwargs")

    async def replay(manager: TriggerManager) -> str:
        clone = await manager.replay_failed_instance(args.instance, kwargs)
        return f"replayed {args.instance} as {clone.name}"

    return await _operate(args, replay)


async def cmd_skip(args: argparse.Namespace) -> int:
    result = _json_object(args.result, "--result")
    if result is not None and not args.cascade:
        raise CommandError("--result is the kwargs of the cascade: give --cascade too", ExitCode.USAGE)

    async def skip(manager: TriggerManager) -> str:
        skipped = await manager.skip_failed_instance(args.instance, args.cascade, result)
        if args.cascade:
            return f"skipped {skipped.name}; fired {skipped.task_name!r} as if it had finished"
        return f"skipped {skipped.name}"

    return await _operate(args, skip)


async def _load_session(url: str, uid: str) -> SessionState:
    async with _storage(url) as storage:
        return await _existing_session(storage, uid)


def cmd_graph(args: argparse.Namespace) -> int:
    if args.config is None and args.session is None:
        raise CommandError("graph needs CONFIG.json, --session URL UID, or both", ExitCode.USAGE)
    configuration: Any = None
    if args.config is not None:
        configuration = _read_configuration(args.config)
        problems = validate_configuration(configuration)
        if problems:
            print(f"{args.config}: {len(problems)} problem(s)", file=sys.stderr)
            _print_problems(problems, sys.stderr)
            return ExitCode.INVALID
        configuration = parse_configuration(configuration)
    state = None
    if args.session is not None:
        state = asyncio.run(_load_session(*args.session))
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
        current = _read_text(args.check, "schema")
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


# -- the parser ----------------------------------------------------------------------------


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
        description="Check atriggers configurations, inspect and repair sessions.",
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
    p.set_defaults(handler=cmd_fire)

    p = sub.add_parser("replay", parents=[common, session, runs, as_json], help="replay a failed instance")
    p.add_argument("instance", metavar="INSTANCE", help="e.g. t_importSubject#0")
    p.add_argument(
        "--kwargs", metavar="JSON", help="replacement kwargs, trigger name -> kwargs: a JSON object or @file"
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
    p.add_argument("-q", "--quiet", action="store_true", help="print session ids only")
    p.set_defaults(handler=cmd_sessions)

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

    p = sub.add_parser("schema", parents=[common], help="print the JSON Schema of configurations")
    out = p.add_mutually_exclusive_group()
    out.add_argument("-o", "--output", metavar="FILE", help="write it to FILE")
    out.add_argument("--check", metavar="FILE", help="exit 1 if FILE is not up to date")
    p.set_defaults(handler=cmd_schema)
    return parser


_ERROR_CODES: tuple[tuple[type[BaseException], ExitCode], ...] = (
    (ConfigurationError, ExitCode.INVALID),
    (InstanceNotFound, ExitCode.NOT_FOUND),
    (InvalidStatus, ExitCode.WRONG_STATUS),
    (InvalidInput, ExitCode.USAGE),
    (UnknownRunner, ExitCode.USAGE),
    (StorageError, ExitCode.STORAGE),
    (ConcurrencyError, ExitCode.STORAGE),
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default: ``sys.argv[1:]``); returns the exit code."""
    args = build_parser().parse_args(argv)
    handler = args.handler
    try:
        _import_modules(args.imports)
        code = asyncio.run(handler(args)) if inspect.iscoroutinefunction(handler) else handler(args)
    except CommandError as exc:
        print(f"atriggers: error: {exc}", file=sys.stderr)
        return int(exc.code)
    except TriggerError as exc:
        code = next((c for t, c in _ERROR_CODES if isinstance(exc, t)), ExitCode.STORAGE)
        print(f"atriggers: error: {exc}", file=sys.stderr)
        return int(code)
    except KeyboardInterrupt:
        print("atriggers: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly, like other tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return int(code)


def console_main() -> NoReturn:
    """Entry point of the ``atriggers`` console script."""
    sys.exit(main())
