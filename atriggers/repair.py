"""Bulk repairs of failed instances, planned then applied.

A `RepairPlan` says, session by session, which failed instances to replay or
skip, and the session version it was made from. Applying it
(`TriggerManager.apply_repairs`, ``atriggers repair --apply``) repairs each
session in one atomic write, and refuses a session that changed since the plan
was made: whoever reviewed the plan reviewed what it repairs.

The selection (`select_failed`) and the rule (`repair`) are pure functions over
a snapshot, like the rules of `atriggers._rules`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from . import _rules as rules
from .clock import from_iso, iso
from .errors import InvalidInput, InvalidStatus, SessionChanged
from .instance import Meta, Status, TaskInstance
from .state import Draft, SessionState, instance_number

__all__ = [
    "PLAN_FORMAT",
    "REPAIR_KEY",
    "Action",
    "PlannedRepair",
    "RepairFilter",
    "RepairPlan",
    "SessionPlan",
    "check_actions",
    "repair",
    "select_failed",
]

#: The ``format`` of a plan file; a plan in another format is refused.
PLAN_FORMAT = "atriggers-repair-plan/1"
#: The metadata key under which a repaired instance records who repaired it, how and why.
REPAIR_KEY = "repair"

Action = Literal["replay", "skip"]
ACTIONS: tuple[Action, ...] = ("replay", "skip")


@dataclass(frozen=True, slots=True)
class RepairFilter:
    """Which failed instances a plan takes (every condition given must hold)."""

    task: str | None = None
    #: ``module.QualName`` as stored in ``exceptionType``; a name without a dot
    #: matches the last part (``ValueError`` matches ``builtins.ValueError``).
    exception_type: str | None = None
    #: Failed at or after this time (epoch seconds).
    since: float | None = None

    def matches(self, instance: TaskInstance) -> bool:
        if instance.status is not Status.FAILED:
            return False
        if self.task is not None and instance.task_name != self.task:
            return False
        if self.exception_type is not None:
            error = str(instance.metadata.get(Meta.EXCEPTION_TYPE) or "")
            wanted = self.exception_type
            if error != wanted and ("." in wanted or error.rsplit(".", 1)[-1] != wanted):
                return False
        if self.since is not None:
            failed_at = instance.timestamps.get(Status.FAILED.value)
            if failed_at is None or from_iso(failed_at) < self.since:
                return False
        return True


def select_failed(state: SessionState, which: RepairFilter) -> list[TaskInstance]:
    """The session's failed instances that `which` takes, in creation order."""
    found = [i for i in state.instances.values() if which.matches(i)]
    found.sort(key=lambda i: (i.task_name, instance_number(i)))
    return found


@dataclass(frozen=True, slots=True)
class PlannedRepair:
    """One failed instance and what to do with it."""

    instance: str
    action: Action
    task: str = ""
    exception_type: str | None = None
    failed_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "action": self.action,
            "task": self.task,
            "exceptionType": self.exception_type,
            "failedAt": self.failed_at,
        }


@dataclass(frozen=True, slots=True)
class SessionPlan:
    """The repairs of one session, valid while it is at `version`."""

    uid: str
    version: int
    repairs: tuple[PlannedRepair, ...]

    @property
    def actions(self) -> dict[str, Action]:
        return {r.instance: r.action for r in self.repairs}

    def to_dict(self) -> dict[str, Any]:
        return {"uid": self.uid, "version": self.version, "repairs": [r.to_dict() for r in self.repairs]}


@dataclass(frozen=True, slots=True)
class RepairPlan:
    """A reviewed list of repairs, session by session."""

    sessions: tuple[SessionPlan, ...]
    #: Where it was made (a masked URL), when, and with which filter: for people.
    source: str = ""
    created: str = ""
    criteria: Mapping[str, Any] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(len(s.repairs) for s in self.sessions)

    @classmethod
    def build(
        cls,
        states: Iterable[SessionState],
        which: RepairFilter,
        action: Action = "replay",
        *,
        source: str = "",
        at: float,
    ) -> RepairPlan:
        """A plan taking, in every session of `states`, the failed instances
        `which` selects; sessions with none are left out."""
        sessions = []
        for state in states:
            repairs = tuple(
                PlannedRepair(
                    i.name,
                    action,
                    i.task_name,
                    cast(str | None, i.metadata.get(Meta.EXCEPTION_TYPE)),
                    i.timestamps.get(Status.FAILED.value),
                )
                for i in select_failed(state, which)
            )
            if repairs:
                sessions.append(SessionPlan(state.uid, state.version, repairs))
        criteria = {
            "task": which.task,
            "exceptionType": which.exception_type,
            "since": iso(which.since) if which.since is not None else None,
        }
        return cls(tuple(sessions), source, iso(at), criteria)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "source": self.source,
            "created": self.created,
            "criteria": dict(self.criteria),
            "count": self.count,
            "sessions": [s.to_dict() for s in self.sessions],
        }

    @classmethod
    def from_dict(cls, data: object) -> RepairPlan:
        """Read a plan back (as edited by people: an action may have become
        ``"skip"``, repairs may have been removed). `InvalidInput` naming the
        first thing wrong."""
        if not isinstance(data, dict):
            raise InvalidInput(f"a repair plan is a JSON object, not {type(data).__name__}")
        if data.get("format") != PLAN_FORMAT:
            raise InvalidInput(
                f"not a repair plan: its format is {data.get('format')!r}, not {PLAN_FORMAT!r}"
            )
        sessions = data.get("sessions")
        if not isinstance(sessions, list):
            raise InvalidInput("a repair plan's 'sessions' must be a list")
        read: list[SessionPlan] = []
        seen: set[str] = set()
        for n, session in enumerate(sessions):
            where = f"sessions[{n}]"
            if not isinstance(session, dict):
                raise InvalidInput(f"{where} must be an object")
            uid, version, repairs = session.get("uid"), session.get("version"), session.get("repairs")
            if not isinstance(uid, str) or not uid:
                raise InvalidInput(f"{where}.uid must be a session id, not {uid!r}")
            if uid in seen:
                raise InvalidInput(f"{where}: session {uid!r} appears twice")
            seen.add(uid)
            if isinstance(version, bool) or not isinstance(version, int) or version < 1:
                raise InvalidInput(f"{where}.version must be a version number, not {version!r}")
            if not isinstance(repairs, list):
                raise InvalidInput(f"{where}.repairs must be a list")
            read.append(
                SessionPlan(
                    uid, version, tuple(_repair(r, f"{where}.repairs[{m}]") for m, r in enumerate(repairs))
                )
            )
        criteria = data.get("criteria")
        return cls(
            tuple(read),
            str(data.get("source") or ""),
            str(data.get("created") or ""),
            criteria if isinstance(criteria, dict) else {},
        )


def _repair(data: object, where: str) -> PlannedRepair:
    if not isinstance(data, dict):
        raise InvalidInput(f"{where} must be an object")
    name, action = data.get("instance"), data.get("action")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{where}.instance must be an instance name, not {name!r}")
    if action not in ACTIONS:
        raise InvalidInput(f"{where}.action must be one of {', '.join(ACTIONS)}, not {action!r}")
    error, failed_at = data.get("exceptionType"), data.get("failedAt")
    return PlannedRepair(
        name,
        cast(Action, action),
        str(data.get("task") or ""),
        error if isinstance(error, str) else None,
        failed_at if isinstance(failed_at, str) else None,
    )


def repair(
    draft: Draft,
    actions: Mapping[str, Action],
    expected_version: int | None,
    record: Mapping[str, Any],
    runner: str | None = None,
) -> tuple[list[TaskInstance], list[TaskInstance]]:
    """Replay or skip failed instances, all in this one draft (so in one write),
    recording `record` (who, why, when) under ``repair`` in each one's metadata.

    Refuses with `SessionChanged` if the session is not at `expected_version`,
    and with `InvalidStatus` if one of them is not failed (nothing is written
    then). Replays go to `runner` if given (the task's ``using`` still wins),
    else where the failed instance went. Returns (the clones, the skipped).
    """
    if expected_version is not None and draft.base.version != expected_version:
        raise SessionChanged(draft.uid, expected_version, draft.base.version)
    clones: list[TaskInstance] = []
    skipped: list[TaskInstance] = []
    for name, action in actions.items():
        failed = draft.get(name)
        if not failed.can_replay:
            raise InvalidStatus(name, failed.status.value, "replayed" if action == "replay" else "skipped")
        if action == "replay":
            clone = rules.replay(draft, name, runner=runner)
            draft.edit(name).metadata[REPAIR_KEY] = {
                "at": draft.now,
                **record,
                "action": "replay",
                "clone": clone.name,
            }
            clones.append(clone)
        else:
            instance, _ = rules.skip(draft, name)
            instance.metadata[REPAIR_KEY] = {"at": draft.now, **record, "action": "skip"}
            skipped.append(instance)
    return clones, skipped


def check_actions(actions: Mapping[str, object]) -> dict[str, Action]:
    """`actions` as instance -> action, or `InvalidInput` naming the bad one."""
    checked: dict[str, Action] = {}
    for name, action in actions.items():
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"instance names must be non-empty strings, not {name!r}")
        if action not in ACTIONS:
            raise InvalidInput(f"the repair of {name!r} must be one of {', '.join(ACTIONS)}, not {action!r}")
        checked[name] = action
    return checked
