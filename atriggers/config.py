"""Task configuration: the directives of the seed document, validated.

The rules live in one table, `DIRECTIVES`, so that validation, error messages and
the published JSON Schema all come from the same place.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._json import check_text, non_string_key, object_arg
from .errors import ConfigurationError, InvalidInput, Problem

__all__ = [
    "DIRECTIVES",
    "ON_LOST",
    "Directive",
    "TaskConfig",
    "parse_configuration",
    "validate_configuration",
]


def _is_name(value: object) -> bool:
    return isinstance(value, str) and value.strip() != "" and _is_text(value)


def _is_text(value: str) -> bool:
    try:
        check_text(value, "name")
    except InvalidInput:
        return False
    return True


def _trigger_list(value: object) -> str | None:
    if isinstance(value, (str, bytes)):
        return "must be a list of trigger names, not a single string"
    if not isinstance(value, (list, tuple, set, frozenset)):
        return f"must be a list of trigger names, not {type(value).__name__}"
    bad = [v for v in value if not _is_name(v)]
    if bad:
        return f"trigger names must be non-empty strings, got {bad[0]!r}"
    return None


def _one_name(value: object) -> str | None:
    return None if _is_name(value) else f"must be one non-empty string, not {value!r}"


def _optional_name(value: object) -> str | None:
    return None if value is None else _one_name(value)


def _seconds(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number of seconds, not {value!r}"
    if not value > 0 or value == float("inf"):
        return f"must be a finite number of seconds > 0, not {value!r}"
    return None


#: What ``onLost`` may say: fail the lost instance, or replay it.
ON_LOST = ("fail", "retry")


def _on_lost(value: object) -> str | None:
    if value is None or value in ON_LOST:
        return None
    return f"must be one of {', '.join(map(repr, ON_LOST))}, not {value!r}"


def _dict_of_dicts(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        return f"must be a dict of dicts keyed by trigger name, not {type(value).__name__}"
    for key, inner in value.items():
        if not isinstance(key, str):
            return f"keys must be trigger names (strings), got {key!r}"
        if not isinstance(inner, Mapping):
            return (
                f"must be a dict of dicts (like trigger kwargs): {key!r} maps to "
                f"{type(inner).__name__}, not a dict"
            )
    return _json_error(value)


def _json_error(value: object) -> str | None:
    # What a directive holds is stored as JSON and read back: refuse what would
    # not come back the same (a number key turned into a string) or not at all.
    key = non_string_key(value)
    if key is not None:
        return f"keys must be strings, got {key!r}"
    try:
        object_arg({"value": value}, "the value")
    except InvalidInput as exc:
        return f"must be JSON-serializable ({exc})"
    return None


@dataclass(frozen=True, slots=True)
class Directive:
    """One directive of a task configuration."""

    name: str
    required: bool
    check: Callable[[object], str | None]
    description: str
    #: JSON Schema fragment describing valid values.
    schema: Mapping[str, Any]


_NAME_SCHEMA: Mapping[str, Any] = {"type": "string", "minLength": 1, "pattern": r"\S"}
_SECONDS_SCHEMA: Mapping[str, Any] = {"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "null"}]}

DIRECTIVES: Mapping[str, Directive] = {
    d.name: d
    for d in (
        Directive(
            "after",
            True,
            _trigger_list,
            "Trigger names that must all have fired before the task runs (order does not "
            "matter). May be empty only when andEvery is given.",
            {"type": "array", "items": _NAME_SCHEMA},
        ),
        Directive(
            "run",
            True,
            _one_name,
            "Name of the registered task to run (for Celery, the Celery task name).",
            _NAME_SCHEMA,
        ),
        Directive(
            "andEvery",
            False,
            _optional_name,
            "One trigger name: every firing of it makes a new instance of the task.",
            {"anyOf": [_NAME_SCHEMA, {"type": "null"}]},
        ),
        Directive(
            "unless",
            False,
            lambda v: None if v is None else _trigger_list(v),
            "Trigger names that, once all fired, abandon the task's unstarted instances.",
            {"anyOf": [{"type": "array", "items": _NAME_SCHEMA}, {"type": "null"}]},
        ),
        Directive(
            "withParams",
            False,
            _dict_of_dicts,
            "Static kwargs keyed like trigger kwargs, merged under the fired kwargs.",
            {
                "anyOf": [
                    {"type": "object", "additionalProperties": {"type": "object"}},
                    {"type": "null"},
                ]
            },
        ),
        Directive(
            "using",
            False,
            _optional_name,
            "Name of the runner for this task (default: the manager's default runner).",
            {"anyOf": [_NAME_SCHEMA, {"type": "null"}]},
        ),
        Directive(
            "timeout",
            False,
            _seconds,
            "Seconds a run may go without storing its outcome (heartbeats extend it); "
            "past it the instance is lost.",
            _SECONDS_SCHEMA,
        ),
        Directive(
            "onLost",
            False,
            _on_lost,
            "What happens to a lost instance: 'fail' (default) or 'retry' (replayed, "
            "counted against the task's max_retries).",
            {"anyOf": [{"enum": list(ON_LOST)}, {"type": "null"}]},
        ),
        Directive(
            "within",
            False,
            _seconds,
            "Seconds an instance may wait unstarted after it was created; then it is "
            "abandoned with reason 'expired'.",
            _SECONDS_SCHEMA,
        ),
    )
}


@dataclass(frozen=True, slots=True)
class TaskConfig:
    """The validated configuration of one trigger task."""

    name: str
    #: Every trigger the task needs, the `andEvery` trigger included.
    after: frozenset[str]
    run: str
    and_every: str | None = None
    unless: frozenset[str] = frozenset()
    with_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    using: str | None = None
    #: Seconds a run may take without storing its outcome (None: no limit).
    timeout: float | None = None
    #: ``"fail"`` or ``"retry"``: what happens to a lost instance.
    on_lost: str = "fail"
    #: Seconds an instance may stay unstarted (None: no limit).
    within: float | None = None
    #: Custom directives, kept as given.
    extras: Mapping[str, Any] = field(default_factory=dict)

    def uses_trigger(self, trigger: str) -> bool:
        return trigger in self.after or trigger in self.unless

    def to_dict(self) -> dict[str, Any]:
        """The configuration as directives (JSON-ready), the inverse of parsing."""
        body: dict[str, Any] = dict(self.extras)
        body["after"] = sorted(self.after)
        body["run"] = self.run
        if self.and_every is not None:
            body["andEvery"] = self.and_every
        if self.unless:
            body["unless"] = sorted(self.unless)
        if self.with_params:
            body["withParams"] = {k: dict(v) for k, v in self.with_params.items()}
        if self.using is not None:
            body["using"] = self.using
        if self.timeout is not None:
            body["timeout"] = self.timeout
        if self.on_lost != "fail":
            body["onLost"] = self.on_lost
        if self.within is not None:
            body["within"] = self.within
        return body

    @classmethod
    def from_dict(cls, name: str, body: Mapping[str, Any]) -> TaskConfig:
        """Build from directives already validated (e.g. read back from storage)."""
        and_every = body.get("andEvery")
        after = frozenset(body["after"])
        return cls(
            name=name,
            after=after | {and_every} if and_every else after,
            run=body["run"],
            and_every=and_every,
            unless=frozenset(body.get("unless") or ()),
            with_params=dict(body.get("withParams") or {}),
            using=body.get("using"),
            timeout=body.get("timeout"),
            on_lost=body.get("onLost") or "fail",
            within=body.get("within"),
            extras={k: v for k, v in body.items() if k not in DIRECTIVES},
        )


def validate_configuration(configuration: object) -> list[Problem]:
    """Every problem in `configuration`; an empty list when it is valid."""
    if not isinstance(configuration, Mapping):
        return [
            Problem(
                None,
                None,
                "configuration must be a dict of task name -> task config, "
                f"not {type(configuration).__name__}",
            )
        ]
    problems: list[Problem] = []
    for name, body in configuration.items():
        if not _is_name(name):
            problems.append(Problem(repr(name), None, "task names must be non-empty strings"))
            continue
        if not isinstance(body, Mapping):
            problems.append(
                Problem(name, None, f"task config must be a dict of directives, not {type(body).__name__}")
            )
            continue
        problems.extend(_task_problems(name, body))
    return problems


def _task_problems(name: str, body: Mapping[Any, Any]) -> list[Problem]:
    problems = []
    for directive in DIRECTIVES.values():
        if directive.name not in body:
            if directive.required:
                problems.append(Problem(name, directive.name, "is required"))
            continue
        message = directive.check(body[directive.name])
        if message:
            problems.append(Problem(name, directive.name, message))
    after = body.get("after")
    if isinstance(after, (list, tuple, set, frozenset)) and not after and not body.get("andEvery"):
        problems.append(Problem(name, "after", "may be empty only when andEvery is given"))
    for key, value in body.items():
        if key in DIRECTIVES:
            continue
        if not isinstance(key, str):
            problems.append(Problem(name, repr(key), "directive names must be strings"))
        elif (message := _json_error(value)) is not None:
            problems.append(Problem(name, key, f"custom directive {message}"))
    return problems


def parse_configuration(configuration: object) -> dict[str, TaskConfig]:
    """Validate `configuration` and build its `TaskConfig`s.

    Raises `ConfigurationError` listing every problem; one bad task rejects all.
    """
    problems = validate_configuration(configuration)
    if problems:
        raise ConfigurationError(problems)
    assert isinstance(configuration, Mapping)
    # A JSON round trip gives the task private, plain copies of the directives,
    # exactly as they will read back from storage.
    return {
        name: TaskConfig.from_dict(name, json.loads(json.dumps(_jsonable_body(body))))
        for name, body in configuration.items()
    }


def _jsonable_body(body: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: sorted(value) if isinstance(value, (set, frozenset)) else value for key, value in body.items()
    }
