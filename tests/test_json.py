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


STORED = [
    '{"task":"t","status":"unstarted","kwargs":{"a":{"i":5}},"abandonState":["u"],"metadata":{"x":[1]}}',
    '{"task":"t","status":"finished"}',
    '{"task":"t","status":"failed","kwargs":null,"abandonState":null,"metadata":null}',
    '{"task":"t","status":"running","abandonState":[1, 2],"extra":true}',
    '{"task":"t","status":"running","kwargs":{"a":{"n":123456789012345678901234567890, "f":NaN}}}',
    '{"task":"t","status":"running","metadata":{"s":"\\udc80"}}',
    '{"status":"unstarted","task":"t","kwargs":{},"abandonState":[],"metadata":{}}',
]
BROKEN = [
    '{"task":"t","status":"nope"}',
    '{"task":1,"status":"unstarted"}',
    '{"task":"t","status":"unstarted","kwargs":{"a":1}}',
    '{"task":"t","status":"unstarted","abandonState":"ab"}',
    '{"task":"t","status":"unstarted","abandonState":[{}]}',
    '{"status":"unstarted"}',
    '{"task":"t"}',
    "[1]",
    "{bad",
]


@pytest.mark.parametrize("text", STORED)
def test_instances_decode_as_from_dict_decodes_them(text: str) -> None:
    from atriggers.storage import codec

    config = {"t": None}.get
    fast = codec._decode_instance("t#0", text, config)
    general = codec._decode_generic("t#0", text, config)
    assert _same(fast.to_dict(), general.to_dict()) and fast == general


@pytest.mark.parametrize("text", BROKEN)
def test_broken_instances_fail_as_from_dict_fails(text: str) -> None:
    from atriggers.storage import codec

    errors = []
    for decode in (codec._decode_instance, codec._decode_generic):
        with pytest.raises((ValueError, KeyError, TypeError)) as raised:
            decode("t#0", text, {"t": None}.get)
        errors.append((type(raised.value), str(raised.value)))
    assert errors[0] == errors[1]


@pytest.mark.parametrize("text", STORED + BROKEN)
def test_a_working_view_decodes_instances_when_used_with_the_same_result(text: str) -> None:
    # A working view reads each instance only as far as its indexes need and
    # the rest when a rule asks for it: what it holds then is what a full
    # read gives, and what does not decode fails either way, naming it.
    from atriggers.errors import StorageError
    from atriggers.storage import codec

    def view() -> Any:
        return codec.decode_state("u", 1, {}, "{}", [], [("t#0", text)], complete=False).instances

    try:
        expected = codec._decode_generic("t#0", text, {"t": None}.get)
    except (ValueError, KeyError, TypeError):
        with pytest.raises(StorageError, match="session 'u': the stored instance 't#0' is corrupt"):
            view()["t#0"]
        with pytest.raises(StorageError, match="session 'u': the stored instance 't#0' is corrupt"):
            view().ready("t")
        return
    instances = view()
    assert instances.unresolved_counts() == ({} if expected.is_resolved else {expected.status.value: 1})
    assert _same(instances["t#0"].to_dict(), expected.to_dict()) and instances["t#0"] == expected
    assert instances["t#0"] is instances.get("t#0") is instances.values()[0]


def test_without_msgspec_the_standard_library_reads_state() -> None:
    import subprocess
    import sys

    code = """
import sys
sys.modules["msgspec"] = None  # as if the fast extra were not installed
from atriggers import _json
from atriggers.storage import codec
assert _json.loads is _json.stdlib_loads
assert codec._decode_instance is codec._decode_generic
state = codec.decode_state(
    "u", 1, {}, '{"t": 1}', [("go", '{"n": 1}')],
    [("t#0", '{"task":"t","status":"unstarted","kwargs":{"go":{"n":1}}}')], complete=False,
)
assert state.instances["t#0"].kwargs == {"go": {"n": 1}} and state.latest_kwargs == {"go": {"n": 1}}
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
