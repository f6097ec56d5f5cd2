"""What a fire would do, without doing it: the fire rule applied to a snapshot.

`preview_fire` is pure (no I/O): it applies `atriggers._rules.fire` to a draft
of the snapshot and reports the draft's changes, which are then thrown away.
It tells the fire's own effects; what the tasks it schedules would return, and
so their cascades, cannot be known before they run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import _rules as rules
from .instance import Meta, Status, TaskInstance
from .state import Draft, Placement, SessionState

__all__ = ["FirePreview", "preview_fire"]


@dataclass(frozen=True, slots=True)
class FirePreview:
    """What firing `trigger` would change in the session (nothing is written)."""

    trigger: str
    #: New instances (whatever status they would end the fire in).
    created: tuple[TaskInstance, ...]
    #: Instances that would be dispatched to their runner, oldest first.
    scheduled: tuple[TaskInstance, ...]
    #: Existing waiting instances that would receive the trigger but keep waiting.
    applied: tuple[TaskInstance, ...]
    #: Instances that would be abandoned (``unless``) or expire (``within``).
    abandoned: tuple[TaskInstance, ...]
    #: The session version the preview was computed from.
    version: int

    @property
    def changes_nothing(self) -> bool:
        return not (self.created or self.scheduled or self.applied or self.abandoned)

    def to_dict(self) -> dict[str, Any]:
        def brief(instance: TaskInstance) -> dict[str, Any]:
            data: dict[str, Any] = {
                "name": instance.name,
                "task": instance.task_name,
                "status": instance.status.value,
            }
            if instance.status is Status.SCHEDULED:
                data["runner"] = instance.runner
            if instance.status is Status.ABANDONED:
                data["reason"] = instance.metadata.get(Meta.REASON) or "unless"
            if instance.status is Status.UNSTARTED and instance.config is not None:
                data["missing"] = sorted(instance.config.after - instance.kwargs.keys())
            return data

        return {
            "trigger": self.trigger,
            "version": self.version,
            "created": [brief(i) for i in self.created],
            "scheduled": [brief(i) for i in self.scheduled],
            "applied": [brief(i) for i in self.applied],
            "abandoned": [brief(i) for i in self.abandoned],
        }


def preview_fire(
    state: SessionState,
    trigger: str,
    kwargs: Mapping[str, Any],
    *,
    at: float,
    default_runner: str = "asyncio",
) -> FirePreview:
    """What `fire(trigger, kwargs)` would do to `state` at time `at`."""
    draft = Draft(state, at=at, placement=Placement(default_runner))
    scheduled = rules.fire(draft, trigger, kwargs)
    changed = draft.changes().instances
    created = tuple(i for i in changed if i.name not in state.instances)
    ready = {i.name for i in scheduled}
    applied = tuple(
        i
        for i in changed
        if i.name in state.instances and i.status is Status.UNSTARTED and i.name not in ready
    )
    abandoned = tuple(i for i in changed if i.status is Status.ABANDONED)
    return FirePreview(trigger, created, tuple(scheduled), applied, abandoned, state.version)
