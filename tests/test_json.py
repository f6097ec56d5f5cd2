"""`atriggers._json.loads`: with the ``fast`` extra (msgspec) it must read exactly
what the standard library reads, and refuse what it refuses."""

from __future__ import annotations

import json
from typing import Any

import pytest

from atriggers import _json

SAMPLES = [
    '{"task":"t","status":"unstarted","kwargs":{"tick":{"i":5}},"abandonState":[],"metadata":{}}',
    "[123456789012345678901234567890, -9223372036854775809, 18446744073709551616]",
    "[0.1, 5e-324, 1E5, -0.0, 1.0, 1e400, -1e-400]",
    "[NaN, Infinity, -Infinity]",
    '"\\udc80"',
    '"\\ud83d\\ude00"',
    '{"a": 1, "a": 2}',
    " [1, 2]  ",
]


def _same(a: Any, b: Any) -> bool:
    # NaN is not equal to itself: compare the JSON text of what was read.
    return json.dumps(a) == json.dumps(b) and type(a) is type(b)


@pytest.mark.parametrize("text", SAMPLES)
def test_loads_reads_what_the_standard_library_reads(text: str) -> None:
    assert _same(_json.loads(text), json.loads(text))
    assert _same(_json.stdlib_loads(text), json.loads(text))


@pytest.mark.parametrize("text", ["{bad", "", "[1,]", '{"a":1}x', '"a\nb"', "01", "\ufeff1"])
def test_loads_refuses_what_the_standard_library_refuses(text: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    with pytest.raises(json.JSONDecodeError):
        _json.loads(text)


def test_big_integers_stay_integers() -> None:
    # (orjson would turn them into floats: that is why msgspec parses.)
    value = _json.loads('{"n": 123456789012345678901234567890}')["n"]
    assert value == 123456789012345678901234567890 and type(value) is int


def test_text_holding_a_lone_surrogate_reads_as_before() -> None:
    text = '{"a": "\udc80"}'
    assert _json.loads(text) == json.loads(text)
