"""JSON in and out: state is JSON, never pickle."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from .errors import InvalidInput

__all__ = ["dumps", "jsonable", "loads", "object_arg"]

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
dumps = _encoder.encode
loads = json.loads


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
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} cannot be stored as JSON: {exc}") from exc
    return result


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
