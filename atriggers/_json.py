"""JSON in and out: state is JSON, never pickle."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

from .errors import InvalidInput

__all__ = [
    "MAX_DEPTH",
    "check_name",
    "check_text",
    "copy_json",
    "dumps",
    "dumps_checked",
    "jsonable",
    "kwargs_by_trigger",
    "loads",
    "stdlib_loads",
    "non_string_key",
    "object_arg",
]

#: How deeply JSON values given to atriggers may nest (kwargs, results,
#: metadata, configuration). Deeper values are refused with `InvalidInput`
#: before anything is written: every backend and every reader handles this depth.
MAX_DEPTH = 64

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))

try:  # the ``fast`` extra
    import msgspec as msgspec  # (re-exported: the codec uses it too)
except ImportError:  # pragma: no cover - depends on the installation
    msgspec = None  # type: ignore[assignment, unused-ignore]


def stdlib_loads(text: str | bytes) -> Any:
    """The standard library's parser: what `loads` does without msgspec, and
    where msgspec refuses what the standard library accepts."""
    return json.loads(text)


def _fast_loads(text: str | bytes) -> Any:
    try:
        return _decode(text)
    except (_DecodeError, UnicodeEncodeError):
        # msgspec refuses some JSON the standard library reads (NaN, infinities,
        # numbers too large for a float, lone surrogates, escaped or in `text`
        # itself): read it as before, or fail with the standard library's error.
        return json.loads(text)


if msgspec is not None:
    # msgspec, not orjson: orjson turns integers beyond 64 bits into floats.
    _decode, _DecodeError = msgspec.json.Decoder().decode, msgspec.DecodeError
    #: Parse JSON text: with msgspec installed about four times faster (a cold
    #: read parses one document per unresolved instance), with the same results.
    loads = _fast_loads
else:  # pragma: no cover - depends on the installation
    loads = stdlib_loads


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


if msgspec is not None:
    _encode = msgspec.json.Encoder().encode

    def dumps_checked(value: Any) -> str:
        """`dumps` of data already checked (`object_arg`: plain JSON, no NaN),
        as storage writes it: msgspec's encoder, about seven times quicker. It
        would write NaN as null, hence only for checked data; anything it refuses
        gets `dumps`'s answer."""
        try:
            return _encode(value).decode()
        except (TypeError, ValueError, OverflowError, UnicodeError):
            return dumps(value)

else:  # pragma: no cover - depends on the installation
    dumps_checked = dumps


_SCALARS = frozenset({str, int, float, bool, type(None)})


def copy_json(value: Any) -> Any:
    """A deep copy of JSON data (dicts, lists, scalars), a few times quicker than
    a JSON round trip; tuples become lists as they would in storage."""
    kind = type(value)
    if kind is dict:
        return {k: v if type(v) in _SCALARS else copy_json(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [v if type(v) in _SCALARS else copy_json(v) for v in value]
    return value


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
        text = dumps(value)
        result: dict[str, Any] = loads(text)
    except RecursionError:
        raise InvalidInput(f"{what} nests deeper than {MAX_DEPTH} levels") from None
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} cannot be stored as JSON: {exc}") from exc
    check_text(text, what)
    if text.count("{") + text.count("[") > MAX_DEPTH and _depth(result) > MAX_DEPTH:
        raise InvalidInput(f"{what} nests deeper than {MAX_DEPTH} levels")
    if result != value:
        # Usually tuples that became lists; but JSON also turns number keys into
        # strings silently, and a key that changes is refused, not rewritten.
        _check_keys(value, what)
    return result


def check_text(text: str, what: str) -> None:
    """Refuse text that is not valid Unicode (a lone surrogate such as
    ``"\\udc80"``: JSON takes it, but no database can store it)."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = text[exc.start : exc.end]
            raise InvalidInput(f"{what} holds {bad!r}, which is not valid Unicode text") from None


def check_name(value: object, what: str) -> str:
    """`value` as a name (of a trigger, task, instance or session): a string that
    is not empty, not only whitespace, and valid Unicode text."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{what} must be a non-empty string, not {value!r}")
    check_text(value, what)
    return value


def _depth(value: object) -> int:
    """How deeply `value` nests (iteratively: no recursion to run out of)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, level)
            stack.extend((inner, level + 1) for inner in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, level)
            stack.extend((inner, level + 1) for inner in item)
    return deepest


def non_string_key(value: object) -> object | None:
    """The first mapping key in `value` that is not a string (JSON would turn it
    into one), or None."""
    stack: list[object] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            for key, inner in item.items():
                if not isinstance(key, str):
                    found: object = key
                    return found
                stack.append(inner)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return None


def _check_keys(value: object, what: str) -> None:
    key = non_string_key(value)
    if key is not None:
        raise InvalidInput(f"{what} cannot be stored as JSON: key {key!r} is not a string")


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
