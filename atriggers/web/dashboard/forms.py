"""Reading the dashboard's forms: every field checked, each problem named."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...instance import Status

__all__ = ["FormError", "ReplayForm", "SkipForm", "json_field", "status_field", "text_field"]

#: Largest JSON text a form field may hold.
MAX_JSON = 1_000_000


class FormError(ValueError):
    """A form field is missing or wrong; the message says which and why."""


def text_field(form: Mapping[str, Any], name: str) -> str:
    value = form.get(name)
    if not isinstance(value, str) or not value.strip():
        raise FormError(f"the form field {name!r} is required")
    return value


def json_field(form: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """The JSON object in field `name`, or None when it is empty."""
    value = form.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str) or len(value) > MAX_JSON:
        raise FormError(f"{name} must be a JSON object of at most {MAX_JSON:,} characters")
    try:
        data = json.loads(value)
    except ValueError as exc:
        raise FormError(f"{name} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise FormError(f"{name} must be a JSON object, not {type(data).__name__}")
    return data


@dataclass(frozen=True, slots=True)
class ReplayForm:
    instance: str
    #: Trigger -> kwargs replacing the failed instance's, or None to keep them.
    kwargs: dict[str, dict[str, Any]] | None

    @classmethod
    def read(cls, form: Mapping[str, Any], current: Mapping[str, Any] | None = None) -> ReplayForm:
        instance = text_field(form, "instance")
        kwargs = json_field(form, "kwargs")
        if kwargs is not None:
            for trigger, value in kwargs.items():
                if not isinstance(value, dict):
                    raise FormError(
                        f"kwargs must map each trigger to a JSON object: {trigger!r} holds "
                        f"{type(value).__name__}"
                    )
            if current is not None and kwargs == current:
                kwargs = None  # unchanged: replay as it was
        return cls(instance, kwargs)


@dataclass(frozen=True, slots=True)
class SkipForm:
    instance: str
    cascade: bool
    result: dict[str, Any] | None

    @classmethod
    def read(cls, form: Mapping[str, Any]) -> SkipForm:
        cascade = form.get("cascade") in ("on", "1", "true")
        return cls(text_field(form, "instance"), cascade, json_field(form, "result"))


def status_field(form: Mapping[str, Any]) -> Status:
    value = text_field(form, "status")
    try:
        return Status(value)
    except ValueError:
        raise FormError(f"unknown status {value!r} (one of: {', '.join(s.value for s in Status)})") from None
