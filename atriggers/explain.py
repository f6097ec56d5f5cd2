"""Why a task ran, or did not: explanations computed from a session snapshot.

`explain` is a pure function of a `SessionState` (and the time it is read at):
no I/O, so the manager (`TriggerManager.explain`), the ``atriggers why`` command
and the dashboard all tell the same story, and tests need no storage.

Each `Explanation` carries a short stable `code` (see `CODES`) that tools can
count and filter on, and a `text` for people.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .clock import from_iso
from .describe import trouble
from .errors import InstanceNotFound
from .instance import Meta, Status, TaskInstance
from .state import SessionState

__all__ = [
    "CODES",
    "NO_NAMES",
    "Explanation",
    "Names",
    "duration",
    "explain",
    "explain_instance",
    "explain_task",
]

#: Every code an explanation may have, in the order of an instance's life.
CODES = (
    "never-triggered",
    "waiting",
    "scheduled",
    "running",
    "finished",
    "failed",
    "lost",
    "replayed",
    "skipped",
    "abandoned",
    "expired",
)

_LOST = "atriggers.errors.InstanceLost"
_EXCEEDED = "atriggers.errors.MaxRetriesExceeded"


class Names(tuple[str, ...]):
    """Trigger or task names: a tuple that also equals a list of the same names
    (``missing == ["b"]`` holds as ``missing == ("b",)`` does), since people
    write either when they check an explanation."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, list):
            return list(self) == other
        return tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = tuple.__hash__


NO_NAMES = Names()


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why a task or one of its instances is where it is."""

    #: The task's name.
    task: str
    #: The instance explained (None: the task has no instance yet).
    instance: str | None
    #: A short stable string, one of `CODES`.
    code: str
    #: The ``after`` triggers still awaited (empty unless the code is
    #: ``waiting`` or ``never-triggered``).
    missing: Names
    #: A sentence (or a few) for people.
    text: str
    #: When the instance reached its current status (ISO 8601 UTC), if known.
    since: str | None = None
    #: The runner the instance was handed to, and the process holding it.
    runner: str | None = None
    owner: str | None = None
    #: What it failed with (``module.QualName``) and the exception's message.
    error: str | None = None
    message: str | None = None
    #: The ``unless`` triggers that abandoned it.
    abandoned_by: Names = NO_NAMES
    #: For ``never-triggered``: its triggers that this session has never seen fired.
    unseen: Names = NO_NAMES
    #: The instance it is a replay of, and the one that replays it.
    parent: str | None = None
    clone: str | None = None

    def __post_init__(self) -> None:
        for name in ("missing", "abandoned_by", "unseen"):
            names = getattr(self, name)
            if type(names) is not Names:  # (a plain tuple or list, from another caller)
                object.__setattr__(self, name, Names(names))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (camelCase keys, like stored metadata)."""
        return {
            "task": self.task,
            "instance": self.instance,
            "code": self.code,
            "missing": list(self.missing),
            "text": self.text,
            "since": self.since,
            "runner": self.runner,
            "owner": self.owner,
            "error": self.error,
            "message": self.message,
            "abandonedBy": list(self.abandoned_by),
            "unseen": list(self.unseen),
            "parent": self.parent,
            "clone": self.clone,
        }


def duration(seconds: float) -> str:
    """A duration as people say it: ``"40 s"``, ``"14 min"``, ``"2 h 5 min"``, ``"3 d 4 h"``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{int(seconds)} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def _when(iso_time: str | None) -> str:
    """An ISO time as shown to people: to the second, with its zone."""
    if not iso_time:
        return "an unknown time"
    return iso_time[:19].replace("T", " ") + " UTC"


def _ago(iso_time: str | None, now: float) -> str:
    if not iso_time:
        return ""
    return f" ({duration(now - from_iso(iso_time))} ago)"


def _names(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))


def _message(instance: TaskInstance) -> str | None:
    """The exception's message: the last line of the stored traceback."""
    info = str(instance.metadata.get(Meta.EXCEPTION_INFO) or "").rstrip()
    if not info:
        return None
    last = info.splitlines()[-1]
    _, sep, message = last.partition(": ")
    return message.strip() if sep else last.strip()


def _was_lost(instance: TaskInstance) -> bool:
    meta = instance.metadata
    error = meta.get(Meta.EXCEPTION_TYPE)
    if error == _LOST:
        return True
    context = meta.get(Meta.EXCEPTION_CONTEXT)
    # A lost instance whose task had no retries left fails with MaxRetriesExceeded
    # and the lost run's context.
    return error == _EXCEEDED and isinstance(context, Mapping) and "ownerStopped" in context


def _clones(state: SessionState) -> dict[str, str]:
    """Instance -> the instance that replays it (its clone)."""
    return {i.parent: i.name for i in state.instances.values() if i.parent}


def explain_instance(
    state: SessionState, instance: TaskInstance, now: float, clones: Mapping[str, str] | None = None
) -> Explanation:
    """Why `instance` is in its status, as of `now` (epoch seconds)."""
    clones = _clones(state) if clones is None else clones
    config = state.tasks.get(instance.task_name) or instance.config
    meta = instance.metadata
    status = instance.status
    since = instance.timestamps.get(status.value)
    name = instance.name
    base: dict[str, Any] = {
        "task": instance.task_name,
        "instance": name,
        "since": since,
        "runner": instance.runner,
        "owner": instance.owner,
        "parent": instance.parent,
        "clone": clones.get(name),
    }
    origin = f" (a replay of {instance.parent})" if instance.parent else ""

    if status is Status.UNSTARTED:
        after = config.after if config is not None else frozenset()
        missing = Names(sorted(after - instance.kwargs.keys()))
        text = f"{name}{origin} is waiting for {_names(missing) or 'nothing'}"
        have = sorted(instance.kwargs)
        if have:
            text += f" (has {_names(have)})"
        text += "."
        unless = config.unless if config is not None else frozenset()
        if unless and instance.abandon_state:
            pending = unless - instance.abandon_state
            text += (
                f" It will be abandoned if {_names(pending)} fire"
                f"{'s' * (len(pending) == 1)} first ({_names(instance.abandon_state)} already did)."
            )
        within = config.within if config is not None else None
        created = instance.timestamps.get(Meta.CREATED)
        if within is not None and created is not None:
            ends = from_iso(created) + within
            left = ends - now
            text += (
                f" Its window closes in {duration(left)}."
                if left > 0
                else f" Its window closed {duration(-left)} ago: the next sweep abandons it."
            )
        return Explanation(code="waiting", missing=missing, text=text, **base)

    if status in (Status.SCHEDULED, Status.RUNNING):
        verb = "scheduled" if status is Status.SCHEDULED else "running"
        text = f"{name}{origin} has been {verb} for {duration(now - from_iso(since)) if since else '?'}"
        where = [f"on runner {instance.runner!r}"] if instance.runner else []
        if instance.owner:
            where.append(f"held by {instance.owner}")
        text += (" " + ", ".join(where) if where else "") + "."
        not_before = meta.get(Meta.NOT_BEFORE)
        if isinstance(not_before, str):
            text += f" It waits for its cooldown to end at {_when(not_before)}."
        deadline = meta.get(Meta.DEADLINE)
        if isinstance(deadline, str):
            text += f" Deadline: {_when(deadline)}."
        problem = trouble(instance, now)
        if problem == "overdue":
            text += " Its deadline or cooldown has passed and no sweeper acted yet: is one running?"
        elif problem == "stuck":
            text += " Nothing will recover it by itself (no owner, deadline or timer): it looks stuck."
        return Explanation(code=verb, missing=NO_NAMES, text=text, **base)

    if status is Status.FINISHED:
        took = ""
        started = instance.timestamps.get(Status.RUNNING.value)
        if started and since:
            took = f" after running {duration(from_iso(since) - from_iso(started))}"
        text = f"{name}{origin} finished at {_when(since)}{_ago(since, now)}{took}."
        return Explanation(code="finished", missing=NO_NAMES, text=text, **base)

    error = meta.get(Meta.EXCEPTION_TYPE)
    error = error if isinstance(error, str) else None
    message = _message(instance)

    if status is Status.FAILED:
        lost = _was_lost(instance)
        what = "was lost" if lost else "failed"
        text = f"{name}{origin} {what} at {_when(since)}{_ago(since, now)}"
        if error:
            text += f" with {error}" + (f": {message}" if message else "")
        text += ". Replay or skip it."
        return Explanation(
            code="lost" if lost else "failed",
            missing=NO_NAMES,
            text=text,
            **base,
            error=error,
            message=message,
        )

    if status is Status.REPLAYED:
        clone = clones.get(name)
        if _was_lost(instance):
            cause = "it was lost"
        elif since is not None and instance.timestamps.get(Status.FAILED.value) == since:
            # Failed and replayed in one operation: the task raised `context.retry`.
            cause = "it asked to retry" + (f" ({error})" if error else "")
        else:
            cause = (f"it had failed with {error}; " if error else "") + "an operator replayed it"
            repair = meta.get("repair")
            if isinstance(repair, Mapping) and repair.get("by"):
                cause += f" ({repair['by']}"
                cause += f": {repair['note']})" if repair.get("note") else ")"
        text = f"{name}{origin} was replayed at {_when(since)}{_ago(since, now)}: {cause}"
        if error and message:
            text += f" [{message}]"
        text += f"; see {clone}." if clone else "."
        return Explanation(code="replayed", missing=NO_NAMES, text=text, **base, error=error, message=message)

    if status is Status.SKIPPED:
        cascade = " and its task's name was fired as if it had finished" if meta.get("cascade") else ""
        # Only failed instances can be skipped from outside; a running task skips itself.
        who = (
            " by an operator" if Status.FAILED.value in instance.timestamps else " (the task skipped itself)"
        )
        text = f"{name}{origin} was skipped{who} at {_when(since)}{_ago(since, now)}{cascade}."
        return Explanation(code="skipped", missing=NO_NAMES, text=text, **base, error=error, message=message)

    # Abandoned: its `within` ran out, or all of its `unless` triggers arrived.
    if meta.get(Meta.REASON) == "expired":
        within = config.within if config is not None else None
        waited = f"{duration(within)} " if within else ""
        missing = Names(sorted((config.after if config else frozenset()) - instance.kwargs.keys()))
        text = (
            f"{name}{origin} expired at {_when(since)}{_ago(since, now)}: it waited its {waited}window"
            f" (`within`) without {_names(missing) or 'starting'}."
        )
        return Explanation(code="expired", missing=NO_NAMES, text=text, **base)
    abandoned_by = Names(sorted(instance.abandon_state))
    if abandoned_by:
        text = (
            f"{name}{origin} was abandoned at {_when(since)}{_ago(since, now)} because "
            f"{_names(abandoned_by)} fired (its `unless`) before it started."
        )
    else:
        text = f"{name}{origin} was abandoned at {_when(since)}{_ago(since, now)} (set by an operator)."
    return Explanation(code="abandoned", missing=NO_NAMES, text=text, abandoned_by=abandoned_by, **base)


def explain_task(
    state: SessionState, task: str, now: float, clones: Mapping[str, str] | None = None
) -> Explanation:
    """Why task `task` is where it is: its most pressing instance explained (the
    latest failed one, else the latest unresolved one, else the latest), or why
    it has none yet (``never-triggered``)."""
    instances = state.instances_of_task(task)  # oldest first
    if instances:
        failed = [i for i in instances if i.status is Status.FAILED]
        unresolved = [i for i in instances if not i.is_resolved]
        chosen = (failed or unresolved or instances)[-1]
        return explain_instance(state, chosen, now, clones)
    config = state.tasks.get(task)
    if config is None:
        raise InstanceNotFound(task, state.uid)
    if state.instance_counts.get(task):
        # Not in the snapshot (a working view leaves resolved instances out).
        count = state.instance_counts[task]
        text = f"{task} has had {count} instance(s), all resolved; load the whole session to see them."
        return Explanation(task=task, instance=None, code="finished", missing=NO_NAMES, text=text)
    seen = state.latest_kwargs.keys()
    missing = Names(sorted(config.after - seen))
    unseen = missing
    if missing:
        text = f"{task} has never been triggered: this session has never seen {_names(missing)}"
        arrived = sorted(config.after & seen)
        text += f" (it has seen {_names(arrived)})." if arrived else "."
    else:
        # Configuring a task does not apply triggers fired before it.
        missing = Names(sorted(config.after))
        text = (
            f"{task} has no instance although {_names(config.after)} fired: it was configured after "
            f"they fired, and gets its first instance at the next fire of one of them."
        )
    if config.unless and config.unless <= seen:
        text += f" All of its `unless` triggers ({_names(config.unless)}) have fired: it would be abandoned."
    return Explanation(
        task=task, instance=None, code="never-triggered", missing=missing, text=text, unseen=unseen
    )


def explain(state: SessionState, name: str | None = None, *, now: float) -> list[Explanation]:
    """Explanations for a session: one per configured task (its most pressing
    instance, or why it has none) when `name` is None; every instance of task `name`,
    oldest first; or the one instance `name`. `InstanceNotFound` for a name
    that is neither."""
    clones = _clones(state)
    if name is None:
        return [explain_task(state, task, now, clones) for task in state.tasks]
    instance = state.instances.get(name)
    if instance is not None:
        return [explain_instance(state, instance, now, clones)]
    instances = state.instances_of_task(name)
    if instances:
        return [explain_instance(state, i, now, clones) for i in instances]
    return [explain_task(state, name, now, clones)]
