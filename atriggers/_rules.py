"""What each operation does to a session: pure functions over a `Draft`.

Nothing here performs I/O. The manager reads a snapshot, applies one of these to a
draft of it, stores the resulting `Change` with compare-and-swap, and only then
dispatches the instances returned as scheduled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from .clock import from_iso, iso
from .config import TaskConfig
from .errors import InvalidInput, InvalidStatus
from .instance import Meta, Status, TaskInstance
from .state import Draft, instance_number

__all__ = [
    "Verdict",
    "classify",
    "configure",
    "expire",
    "heartbeat",
    "lose",
    "release",
    "fail",
    "finish",
    "fire",
    "merge_params",
    "replay",
    "retry",
    "set_status",
    "skip",
    "skip_running",
    "start",
    "annotate",
    "update_metadata",
]


def configure(draft: Draft, tasks: Mapping[str, TaskConfig]) -> None:
    """Merge validated tasks into the session's configuration (same name replaces).

    Like the original, this does not apply triggers fired earlier: a new task gets
    its first instance at the next fire of one of its triggers.
    """
    draft.replace_tasks({**draft.tasks, **tasks})


def fire(draft: Draft, trigger: str, kwargs: Mapping[str, Any]) -> list[TaskInstance]:
    """Fire `trigger`; returns the instances it moved to ``scheduled``.

    It touches only the instances concerned (the draft's indexes find them): the
    task's unstarted instances that still take `trigger`, and those that may now
    be ready to run or be abandoned; with ``within``, its unstarted instances, to
    expire those whose window closed. Its cost does not grow with the instances
    that wait for other triggers.
    """
    ready: list[TaskInstance] = []
    for task in draft.tasks_using(trigger):
        if task.within is not None:
            # A window that closed is closed, whether or not a sweeper saw it yet.
            for instance in draft.unstarted(task.name):
                if _expired(instance, draft.at):
                    expire(draft, instance.name)
        if draft.count(task.name):
            # A new instance only for the task's `andEvery`, and only when no
            # waiting instance took this firing: one firing, one new instance.
            create = trigger == task.and_every
            for instance in draft.waiting(task.name, trigger):
                if _takes(instance, task, trigger):
                    _apply(draft.edit(instance.name), task, trigger, kwargs)
                    create = False
        else:
            create = True
        if create:
            latest = draft.latest_kwargs
            instance = draft.create(
                task,
                kwargs={t: dict(latest[t]) for t in task.after if t != trigger and t in latest},
                abandon_state=frozenset(t for t in task.unless if t != trigger and t in latest),
            )
            _apply(instance, task, trigger, kwargs)
        made_ready: list[TaskInstance] = []
        # Only an instance this operation changed, or one the snapshot already
        # held ready, can be ready: the others are as unready as they were.
        for current in draft.maybe_ready(task.name):
            if current.can_abandon:
                draft.set_status(draft.edit(current.name), Status.ABANDONED)
            elif current.can_run:
                scheduled = draft.edit(current.name)
                draft.schedule(scheduled)
                made_ready.append(scheduled)
        if len(made_ready) > 1:
            # In creation order, whatever order a backend read them in: instances
            # made ready by one fire are dispatched oldest first, in every process.
            made_ready.sort(key=instance_number)
        ready += made_ready
    draft.record_fire(trigger, kwargs)
    return ready


def _takes(instance: TaskInstance, task: TaskConfig, trigger: str) -> bool:
    return (trigger in task.after and trigger not in instance.kwargs) or (
        trigger in task.unless and trigger not in instance.abandon_state
    )


def _apply(instance: TaskInstance, task: TaskConfig, trigger: str, kwargs: Mapping[str, Any]) -> None:
    if trigger in task.after and trigger not in instance.kwargs:
        instance.kwargs[trigger] = dict(kwargs)
    if trigger in task.unless:
        instance.abandon_state = instance.abandon_state | {trigger}


def replay(
    draft: Draft,
    name: str,
    replacement_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    cooldown: float | None = None,
    runner: str | None = None,
) -> TaskInstance:
    """Mark a failed instance ``replayed`` and schedule a clone of it (to run after
    `cooldown` seconds, if given), on `runner` if given, else where the failed
    instance went (the task's ``using`` wins over both)."""
    failed = draft.get(name)
    if not failed.can_replay:
        raise InvalidStatus(name, failed.status.value, "replayed")
    task = draft.tasks.get(failed.task_name)
    if task is None:
        raise InvalidInput(f"cannot replay {name!r}: task {failed.task_name!r} is no longer configured")
    draft.set_status(draft.edit(name), Status.REPLAYED)
    clone_meta: dict[str, Any] = {Meta.PARENT: name, Meta.DEPTH: failed.depth + 1}
    if cooldown:
        clone_meta[Meta.COOLDOWN] = cooldown
    if Meta.MAX_RETRIES in failed.metadata:
        clone_meta[Meta.MAX_RETRIES] = failed.metadata[Meta.MAX_RETRIES]
    kwargs = failed.kwargs if replacement_kwargs is None else replacement_kwargs
    clone = draft.create(
        task,
        kwargs={k: dict(v) for k, v in kwargs.items()},
        abandon_state=failed.abandon_state,
        metadata=clone_meta,
    )
    # The clone goes where the failed instance went (its manager's default runner
    # may not be the default of the process replaying it).
    draft.schedule(clone, draft.at + cooldown if cooldown else None, runner=runner or failed.runner)
    return clone


def skip(
    draft: Draft, name: str, cascade: bool = False, result: Mapping[str, Any] | None = None
) -> tuple[TaskInstance, list[TaskInstance]]:
    """Mark a failed instance ``skipped``; with `cascade`, fire its task's name."""
    instance = draft.get(name)
    if not instance.can_skip:
        raise InvalidStatus(name, instance.status.value, "skipped")
    result = dict(result or {})
    return set_status(
        draft,
        name,
        Status.SKIPPED,
        {"cascade": cascade, Meta.RESULT: result},
        cascade=cascade,
        cascade_kwargs=result,
    )


def set_status(
    draft: Draft,
    name: str,
    status: Status,
    metadata: Mapping[str, Any] | None = None,
    cascade: bool = False,
    cascade_kwargs: Mapping[str, Any] | None = None,
) -> tuple[TaskInstance, list[TaskInstance]]:
    """Set any status (an operator's repair tool); optionally cascade."""
    instance = draft.edit(name)
    instance.metadata.update(metadata or {})
    if status is Status.SCHEDULED:
        draft.schedule(instance)  # re-queued: handed to its runner again
    else:
        draft.set_status(instance, status)
    ready = fire(draft, instance.task_name, cascade_kwargs or {}) if cascade else []
    return instance, ready


def update_metadata(draft: Draft, name: str, metadata: Mapping[str, Any]) -> TaskInstance:
    instance = draft.edit(name)
    instance.metadata.update(metadata)
    draft.touch(instance)
    return instance


#: Notes kept per instance (the oldest are dropped past this).
MAX_NOTES = 50


def annotate(draft: Draft, name: str, note: Mapping[str, Any]) -> TaskInstance:
    """Append an operator's `note` to the instance's ``notes`` (status unchanged)."""
    instance = draft.edit(name)
    notes = instance.metadata.get(Meta.NOTES)
    kept = list(notes) if isinstance(notes, list) else []
    instance.metadata[Meta.NOTES] = [*kept, {"at": draft.now, **note}][-MAX_NOTES:]
    draft.touch(instance)
    return instance


def merge_params(with_params: Mapping[str, Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """`withParams` merged recursively under the fired kwargs (fired values win)."""
    merged = dict(with_params)
    for key, value in kwargs.items():
        base = merged.get(key)
        if isinstance(base, Mapping) and isinstance(value, Mapping):
            merged[key] = merge_params(base, value)
        else:
            merged[key] = value
    return merged


def start(
    draft: Draft,
    name: str,
    token: str | None = None,
    owner: str | None = None,
    deadline: float | None = None,
    max_retries: int = 0,
) -> TaskInstance | None:
    """Move a scheduled instance to ``running``, as run `token` held by `owner`
    (None: a process without a lease, bounded by `deadline` instead); None when
    it is not scheduled (another worker already took it, an operator changed it)
    or its cooldown has not passed yet: don't run it."""
    instance = draft.get(name)
    if instance.status is not Status.SCHEDULED or _waiting(instance, draft.at):
        return None
    instance = draft.edit(name)
    meta = instance.metadata
    params = instance.config.with_params if instance.config else {}
    meta[Meta.ACTUAL_KWARGS] = merge_params(params, instance.kwargs)
    meta.pop(Meta.NOT_BEFORE, None)
    for key, value in ((Meta.TOKEN, token), (Meta.OWNER, owner)):
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    timeout = instance.config.timeout if instance.config is not None else None
    ends = [t for t in (deadline, draft.at + timeout if timeout else None) if t is not None]
    if ends:
        meta[Meta.DEADLINE] = iso(min(ends))
    else:
        meta.pop(Meta.DEADLINE, None)
    if max_retries:
        meta[Meta.MAX_RETRIES] = max_retries
    draft.set_status(instance, Status.RUNNING)
    return instance


def _waiting(instance: TaskInstance, at: float) -> bool:
    not_before = instance.metadata.get(Meta.NOT_BEFORE)
    return isinstance(not_before, str) and from_iso(not_before) > at


def _run(draft: Draft, name: str, token: str | None) -> TaskInstance | None:
    """The instance if it is still the run `token` (None: any running one)."""
    instance = draft.get(name)
    if instance.status is not Status.RUNNING:
        return None
    if token is not None and instance.metadata.get(Meta.TOKEN) != token:
        return None
    return instance


def heartbeat(draft: Draft, name: str, token: str | None) -> TaskInstance | None:
    """Extend a running instance's deadline by its ``timeout`` from now; None if
    it is no longer this run (it was lost)."""
    instance = _run(draft, name, token)
    if instance is None:
        return None
    timeout = instance.config.timeout if instance.config is not None else None
    if timeout is None:
        return instance  # nothing to extend: its owner's lease covers it
    instance = draft.edit(name)
    instance.metadata[Meta.DEADLINE] = iso(draft.at + timeout)
    return instance


def finish(
    draft: Draft,
    name: str,
    result: Mapping[str, Any],
    log_level: int,
    token: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> tuple[TaskInstance | None, list[TaskInstance]]:
    """Record a successful run and cascade: the task's name fires with `result`.

    Only the run `token` of a ``running`` instance can finish it; if it was lost
    or an operator resolved it meanwhile, that stands and nothing is recorded.
    """
    if _run(draft, name, token) is None:
        return None, []
    instance = draft.edit(name)
    instance.metadata[Meta.RESULT] = dict(result)
    instance.metadata[Meta.LOG_LEVEL] = log_level
    instance.metadata.update(metadata or {})
    draft.set_status(instance, Status.FINISHED)
    return instance, fire(draft, instance.task_name, result)


def skip_running(
    draft: Draft, name: str, metadata: Mapping[str, Any], token: str | None = None
) -> TaskInstance | None:
    """A running task skipped itself (no cascade); only its own run."""
    if _run(draft, name, token) is None:
        return None
    instance, _ = set_status(draft, name, Status.SKIPPED, metadata)
    return instance


def fail(
    draft: Draft,
    name: str,
    metadata: Mapping[str, Any],
    statuses: tuple[Status, ...] = (Status.SCHEDULED, Status.RUNNING),
    token: str | None = None,
) -> TaskInstance | None:
    """Record a failure (task error, dispatch error, cancelled or lost run) of an
    instance in one of `statuses` (and, if running, still the run `token` when
    given); None (nothing changed) otherwise."""
    instance = draft.get(name)
    if instance.status not in statuses:
        return None
    if token is not None and instance.status is Status.RUNNING and instance.metadata.get(Meta.TOKEN) != token:
        return None
    instance = draft.edit(name)
    instance.metadata.update(metadata)
    draft.set_status(instance, Status.FAILED)
    return instance


def retry(
    draft: Draft,
    name: str,
    metadata: Mapping[str, Any],
    replacement_kwargs: Mapping[str, Mapping[str, Any]] | None,
    token: str | None = None,
) -> TaskInstance | None:
    """A task asked to run again: it fails, is replayed, and the clone is scheduled."""
    if fail(draft, name, metadata, (Status.RUNNING,), token) is None:
        return None
    return replay(draft, name, replacement_kwargs, metadata.get(Meta.COOLDOWN))


# -- time and ownership ------------------------------------------------------------------


def _expired(instance: TaskInstance, at: float) -> bool:
    within = instance.config.within if instance.config is not None else None
    created = instance.timestamps.get(Meta.CREATED)
    return within is not None and created is not None and from_iso(created) + within <= at


def expire(draft: Draft, name: str) -> TaskInstance | None:
    """Abandon an unstarted instance whose ``within`` window closed (metadata
    ``reason`` = ``"expired"``); None if it is not unstarted or not expired."""
    instance = draft.get(name)
    if instance.status is not Status.UNSTARTED or not _expired(instance, draft.at):
        return None
    instance = draft.edit(name)
    instance.metadata[Meta.REASON] = "expired"
    draft.set_status(instance, Status.ABANDONED)
    return instance


def release(draft: Draft, name: str) -> TaskInstance | None:
    """A scheduled instance's cooldown is over: place it on its runner (the
    caller then dispatches it). None if it is not waiting for a due cooldown."""
    instance = draft.get(name)
    not_before = instance.metadata.get(Meta.NOT_BEFORE)
    if instance.status is not Status.SCHEDULED or not isinstance(not_before, str):
        return None
    if from_iso(not_before) > draft.at:
        return None
    instance = draft.edit(name)
    draft.place(instance)
    draft.touch(instance)
    return instance


#: Why a due entry was claimed, as `classify` tells it.
Verdict = Literal["expired", "released", "lost", "delay", "not-due", "stale"]


def classify(instance: TaskInstance | None, owner: str | None, lapsed: bool, at: float) -> Verdict:
    """What a claimed due entry means for the instance it names now: its window
    closed, its cooldown is over, it is lost (its deadline passed, or the
    `owner` that held it when the entry was written lapsed and still holds it),
    not due after all (changed since: the claim only has to be undone), or
    stale (nothing needs the entry any more)."""
    if instance is None:
        return "stale"
    status = instance.status
    if status is Status.UNSTARTED:
        if instance.config is None or instance.config.within is None:
            return "stale"
        return "expired" if _expired(instance, at) else "not-due"
    if status is Status.SCHEDULED and isinstance(instance.metadata.get(Meta.NOT_BEFORE), str):
        return "not-due" if _waiting(instance, at) else "released"
    if status in (Status.SCHEDULED, Status.RUNNING):
        held_by = instance.owner
        if lapsed and held_by is not None and held_by == owner:
            return "lost"
        deadline = instance.metadata.get(Meta.DEADLINE)
        if isinstance(deadline, str) and from_iso(deadline) <= at:
            return "lost"  # overran its timeout, or handed out and never started
        return "not-due" if held_by is not None or isinstance(deadline, str) else "stale"
    return "stale"


def lose(
    draft: Draft,
    name: str,
    lost: Mapping[str, Any],
    exceeded: Mapping[str, Any],
    max_retries: int,
    backoff: float,
) -> tuple[TaskInstance, TaskInstance | None] | None:
    """Apply the task's ``onLost`` policy to a lost instance: fail it with
    `lost` metadata, or (``"retry"``) fail it and replay it after `backoff`
    seconds, unless it already retried `max_retries` times (then it fails with
    the `exceeded` metadata). Returns (the lost instance, its clone or None)."""
    instance = draft.get(name)
    if instance.status not in (Status.SCHEDULED, Status.RUNNING):
        return None
    retry = instance.config is not None and instance.config.on_lost == "retry"
    if retry and instance.depth >= max_retries:
        failed = fail(draft, name, exceeded)
        return (failed, None) if failed is not None else None
    failed = fail(draft, name, lost)
    if failed is None:
        return None
    if not retry:
        return failed, None
    return failed, replay(draft, name, None, backoff)
