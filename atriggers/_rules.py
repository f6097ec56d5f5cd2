"""What each operation does to a session: pure functions over a `Draft`.

Nothing here performs I/O. The manager reads a snapshot, applies one of these to a
draft of it, stores the resulting `Change` with compare-and-swap, and only then
dispatches the instances returned as scheduled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config import TaskConfig
from .errors import InvalidInput, InvalidStatus
from .instance import Meta, Status, TaskInstance
from .state import Draft

__all__ = [
    "configure",
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
    "update_metadata",
]


def configure(draft: Draft, tasks: Mapping[str, TaskConfig]) -> None:
    """Merge validated tasks into the session's configuration (same name replaces).

    Like the original, this does not apply triggers fired earlier: a new task gets
    its first instance at the next fire of one of its triggers.
    """
    draft.replace_tasks({**draft.tasks, **tasks})


def fire(draft: Draft, trigger: str, kwargs: Mapping[str, Any]) -> list[TaskInstance]:
    """Fire `trigger`; returns the instances it moved to ``scheduled``."""
    ready: list[TaskInstance] = []
    for task in draft.tasks_using(trigger):
        unstarted = [
            i for i in draft.instances() if i.task_name == task.name and i.status is Status.UNSTARTED
        ]
        if draft.count(task.name):
            # A new instance only for the task's `andEvery`, and only when no
            # waiting instance took this firing: one firing, one new instance.
            create = trigger == task.and_every
            for instance in unstarted:
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
            unstarted.append(instance)
        for instance in unstarted:
            current = draft.get(instance.name)
            if current.can_abandon:
                draft.set_status(draft.edit(current.name), Status.ABANDONED)
            elif current.can_run:
                scheduled = draft.edit(current.name)
                draft.set_status(scheduled, Status.SCHEDULED)
                ready.append(scheduled)
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
) -> TaskInstance:
    """Mark a failed instance ``replayed`` and schedule a clone of it (to run after
    `cooldown` seconds, if given)."""
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
    kwargs = failed.kwargs if replacement_kwargs is None else replacement_kwargs
    clone = draft.create(
        task,
        kwargs={k: dict(v) for k, v in kwargs.items()},
        abandon_state=failed.abandon_state,
        metadata=clone_meta,
    )
    draft.set_status(clone, Status.SCHEDULED)
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
    draft.set_status(instance, status)
    ready = fire(draft, instance.task_name, cascade_kwargs or {}) if cascade else []
    return instance, ready


def update_metadata(draft: Draft, name: str, metadata: Mapping[str, Any]) -> TaskInstance:
    instance = draft.edit(name)
    instance.metadata.update(metadata)
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


def start(draft: Draft, name: str) -> TaskInstance | None:
    """Move a scheduled instance to ``running``; None when it is not scheduled
    (another worker already took it, or an operator changed it): don't run it."""
    instance = draft.get(name)
    if instance.status is not Status.SCHEDULED:
        return None
    instance = draft.edit(name)
    params = instance.config.with_params if instance.config else {}
    instance.metadata[Meta.ACTUAL_KWARGS] = merge_params(params, instance.kwargs)
    draft.set_status(instance, Status.RUNNING)
    return instance


def finish(
    draft: Draft, name: str, result: Mapping[str, Any], log_level: int
) -> tuple[TaskInstance | None, list[TaskInstance]]:
    """Record a successful run and cascade: the task's name fires with `result`.

    Only a ``running`` instance can finish; if an operator resolved it meanwhile,
    their decision stands and nothing is recorded.
    """
    instance = draft.get(name)
    if instance.status is not Status.RUNNING:
        return None, []
    instance = draft.edit(name)
    instance.metadata[Meta.RESULT] = dict(result)
    instance.metadata[Meta.LOG_LEVEL] = log_level
    draft.set_status(instance, Status.FINISHED)
    return instance, fire(draft, instance.task_name, result)


def skip_running(draft: Draft, name: str, metadata: Mapping[str, Any]) -> TaskInstance | None:
    """A running task skipped itself (no cascade); only a ``running`` instance."""
    if draft.get(name).status is not Status.RUNNING:
        return None
    instance, _ = set_status(draft, name, Status.SKIPPED, metadata)
    return instance


def fail(
    draft: Draft,
    name: str,
    metadata: Mapping[str, Any],
    statuses: tuple[Status, ...] = (Status.SCHEDULED, Status.RUNNING),
) -> TaskInstance | None:
    """Record a failure (task error, dispatch error, cancelled run) of an instance
    in one of `statuses`; None (nothing changed) for any other status."""
    instance = draft.get(name)
    if instance.status not in statuses:
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
) -> TaskInstance | None:
    """A task asked to run again: it fails, is replayed, and the clone is scheduled."""
    if fail(draft, name, metadata, (Status.RUNNING,)) is None:
        return None
    return replay(draft, name, replacement_kwargs, metadata.get(Meta.COOLDOWN))
