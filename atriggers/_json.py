"""JSON in and out: state is JSON, never pickle."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

from .errors import InvalidInput

__all__ = ["dumps", "jsonable", "kwargs_by_trigger", "loads", "object_arg"]

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
loads = json.loads


def _not_json(value: object) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# Built once: JSONEncoder.encode builds a C encoder (and a dict to detect circular
# references) on every call, which costs about as much as encoding atriggers' small
# documents. Without that dict, a circular structure ends in RecursionError, which
# `object_arg` reports like any other value JSON cannot hold.
_c_encode = (
    c_make_encoder(None, _not_json, encode_basestring, None, ":", ",", False, False, False)
    if c_make_encoder is not None
    else None
)


def dumps(value: Any) -> str:
    """Compact JSON text of `value`; NaN and infinities are refused."""
    if _c_encode is None:  # pragma: no cover - CPython has the C encoder
        return _encoder.encode(value)
    return "".join(_c_encode(value, 0))


def object_arg(value: object, what: str) -> dict[str, Any]:
    """`value` as a plain JSON object, or `InvalidInput` naming `what`.

    The JSON round trip is the check (nothing that cannot be stored gets in) and
    hands the task exactly what storage will give back (tuples become lists).
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{what} must be a mapping (a JSON object), not {type(value).__name__}")
    try:
        result: dict[str, Any] = loads(dumps(value))
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidInput(f"{what} cannot be stored as JSON: {exc}") from exc
    if result != value:
        # Usually tuples that became lists; but JSON also turns number keys into
        # strings silently, and a key that changes is refused, not rewritten.
        _check_keys(value, what)
    return result


def _check_keys(value: object, what: str) -> None:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            if not isinstance(key, str):
                raise InvalidInput(f"{what} cannot be stored as JSON: key {key!r} is not a string")
            _check_keys(inner, what)
    elif isinstance(value, (list, tuple)):
        for inner in value:
            _check_keys(inner, what)


def kwargs_by_trigger(value: object, what: str) -> dict[str, dict[str, Any]] | None:
    """`value` as trigger name -> kwargs (both JSON objects), or `InvalidInput`."""
    if value is None:
        return None
    kwargs = object_arg(value, what)
    for trigger, inner in kwargs.items():
        if not isinstance(inner, dict):
            raise InvalidInput(f"{what} maps trigger names to kwargs; {trigger!r} maps to {inner!r}")
    return kwargs


def jsonable(value: object) -> Any:
    """Best-effort JSON form of diagnostic data (exception context): whatever JSON
    cannot hold is kept as its repr rather than lost."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    return repr(value)
