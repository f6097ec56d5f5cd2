"""How the ``atriggers`` command prints: plain tables for people, JSON for machines.

Nothing here reads storage or decides an exit code; it turns data into text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

from ..clock import from_iso
from ..describe import describe_instance, held_by, trouble
from ..errors import Problem
from ..explain import duration
from ..instance import Meta, Status, TaskInstance
from ..state import SessionState
from . import style

__all__ = [
    "Changed",
    "changes_json",
    "changes_text",
    "emit_json",
    "failures",
    "instance_json",
    "lineage",
    "notes",
    "problems_table",
    "session_json",
    "session_text",
    "sessions_table",
    "table",
]

#: An instance as it was before a command (None: created by it) and as it is now.
Changed = tuple[TaskInstance | None, TaskInstance]


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """Left-aligned columns two spaces apart, under a dashed header (drawn by
    rich, statuses coloured, when the output is a terminal)."""
    if style.active():
        return style.rich_table(rows, header)
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def emit_json(data: object, out: TextIO) -> None:
    json.dump(data, out, indent=2, sort_keys=False, ensure_ascii=False)
    out.write("\n")


def _short(value: object, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _timestamp(instance: TaskInstance, key: str) -> str:
    """A timestamp to the second, in UTC (``Z``), as stored."""
    stamp = instance.timestamps.get(key, "")
    return stamp[:19].replace("T", " ") + "Z" if stamp else ""


def _status(instance: TaskInstance, now: float) -> str:
    """The status, with how long it has lasted while in flight and what is wrong."""
    text = instance.status.value
    since = instance.timestamps.get(text)
    if instance.status in (Status.SCHEDULED, Status.RUNNING) and since:
        text += f" for {duration(now - from_iso(since))}"
    problem = trouble(instance, now)
    return text + (f" ({problem.upper()})" if problem else "")


def lineage(instances: Sequence[TaskInstance]) -> list[str]:
    """Replay chains, oldest first: ``t#0 -> t#1 -> t#2`` (each clone's
    ``parent`` names the one it replays), with who repaired them and why."""
    by_name = {i.name: i for i in instances}
    children = {i.parent: i.name for i in instances if i.parent}
    lines = []
    for instance in instances:
        if instance.parent in by_name or instance.name not in children:
            continue  # not the start of a chain
        chain, name = [instance.name], instance.name
        while name in children:
            name = children[name]
            chain.append(name)
        notes = []
        for link in chain:
            repair = by_name[link].metadata.get("repair") if link in by_name else None
            if isinstance(repair, dict) and (repair.get("by") or repair.get("note")):
                who = repair.get("by") or "?"
                notes.append(f"{link} by {who}" + (f": {repair['note']}" if repair.get("note") else ""))
        tail = f" (repaired: {'; '.join(notes)})" if notes else ""
        first = by_name[instance.name]
        if first.parent:
            chain.insert(0, first.parent)
        lines.append(
            " -> ".join(f"{n} ({by_name[n].status.value})" if n in by_name else n for n in chain) + tail
        )
    return lines


def notes(instances: Sequence[TaskInstance]) -> list[str]:
    """Operators' notes, one line each: ``instance  when  who: text``."""
    lines = []
    for instance in instances:
        for note in instance.metadata.get(Meta.NOTES) or ():
            if isinstance(note, dict):
                when = str(note.get("at") or "")[:19].replace("T", " ") + "Z"
                lines.append(f"{instance.name}  {when}  {note.get('by') or '?'}: {note.get('text')}")
    return lines


def _outcome(instance: TaskInstance) -> str:
    """The one-cell summary of how an instance ended (or where it came from)."""
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


def instance_json(name: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """An instance's JSON form (``TaskInstance.to_dict``) with its name inside,
    the shape of every instance in a JSON list the command prints."""
    return {"name": name, **data}


def problems_table(problems: Sequence[Problem]) -> str:
    return table(
        [[p.task or "-", p.directive or "-", p.message] for p in problems], ["task", "directive", "problem"]
    )


def failures(instances: Iterable[TaskInstance]) -> list[str]:
    """Lines telling each failed instance in full (exception, context, traceback)."""
    lines: list[str] = []
    for instance in instances:
        if instance.status is Status.FAILED:
            lines += ["", describe_instance(instance)]
    return ["", "Failed instances", *lines[1:]] if lines else []


def session_json(state: SessionState, url: str) -> dict[str, Any]:
    """``show --json``: the snapshot's own `SessionState.debug_repr`, with the URL."""
    data = state.debug_repr()
    # A list keeps the instances' order for every JSON reader, hence the one
    # change of shape from the snapshot's name -> instance mapping.
    data["instances"] = [instance_json(name, i) for name, i in data["instances"].items()]
    return {"url": url, **data}


def session_text(state: SessionState, url: str, now: float) -> str:
    """``show``: the session's tasks, instances (who holds those in flight, and
    which are lost, overdue or stuck), triggers, unresolved items, failures."""
    ordered = state.ordered_instances()
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
    out.append(table(task_rows, ["task", "run", "after", "andEvery", "unless", "using"]))
    out += ["", "Instances"]
    instance_rows = [
        [
            i.name,
            _status(i, now),
            ", ".join(sorted(i.kwargs)),
            _timestamp(i, Meta.CREATED),
            _timestamp(i, Meta.LAST_MODIFIED),
            held_by(i),
            _outcome(i),
        ]
        for i in ordered
    ]
    if instance_rows:
        header = [
            "instance",
            "status",
            "triggers applied",
            "created",
            "modified",
            "held by",
            "result / error",
        ]
        out.append(table(instance_rows, header))
    else:
        out.append("(none yet)")
    out += ["", "Triggers fired"]
    if state.latest_kwargs:
        rows = [[name, _short(dict(kw))] for name, kw in sorted(state.latest_kwargs.items())]
        out.append(table(rows, ["trigger", "latest kwargs"]))
    else:
        out.append("(none yet)")
    logs = state.get_instances_with_unresolved_logs()
    out += [
        "",
        "Unresolved tasks: " + (", ".join(t.name for t in state.get_unresolved_tasks()) or "none"),
        "Unresolved instances: " + (", ".join(i.name for i in state.get_unresolved_instances()) or "none"),
        "Instances with unresolved logs: "
        + (", ".join(f"{i.name} ({i.log_level_name})" for i in logs) or "none"),
    ]
    chains = lineage(ordered)
    if chains:
        out += ["", "Replays", *chains]
    written = notes(ordered)
    if written:
        out += ["", "Notes", *written]
    out += failures(ordered)
    return "\n".join(out)


def changes_json(summary: str, timed_out: bool, changed: Sequence[Changed]) -> dict[str, Any]:
    """``fire``/``replay``/``skip --json``."""
    return {
        "summary": summary,
        "timedOut": timed_out,
        "changed": [
            {**instance_json(new.name, new.to_dict()), "previousStatus": old.status.value if old else None}
            for old, new in changed
        ],
    }


def changes_text(summary: str, gave_up_after: float | None, changed: Sequence[Changed]) -> str:
    """``fire``/``replay``/``skip``: what the command did and every instance it
    changed; `gave_up_after` is the timeout, if the command stopped waiting."""
    out = [summary]
    if gave_up_after is not None:
        out.append(
            f"gave up waiting after {gave_up_after} s: runs still going were cancelled "
            "and stored as failed (replay them)"
        )
    if changed:
        rows = [
            [new.name, old.status.value if old else "(new)", new.status.value, _outcome(new)]
            for old, new in changed
        ]
        out.append(table(rows, ["instance", "was", "now", "result / error"]))
    out += failures(new for _, new in changed)
    return "\n".join(out)


def sessions_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """``sessions``: one line per session summary (as ``sessions --json`` gives them)."""
    cells = [
        [
            r["uid"],
            str(r["version"]),
            str(r["tasks"]),
            str(r["instances"]),
            str(len(r["unresolvedTasks"])),
            ", ".join(r["failed"]),
            ", ".join(f"{name} ({why})" for name, why in r["trouble"].items()),
        ]
        for r in rows
    ]
    header = ["session", "version", "tasks", "instances", "unresolved tasks", "failed", "lost / stuck"]
    return table(cells, header)
