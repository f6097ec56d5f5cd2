"""Bad input gets a clear error and changes nothing: version and contents stay put."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from atriggers import (
    InstanceNotFound,
    InvalidInput,
    InvalidStatus,
    SessionState,
    TaskContext,
    TriggerManager,
    task,
)
from atriggers.storage import SQLiteStorage


@task("bad.ok")
async def ok(context: TaskContext) -> dict[str, Any]:
    return {}


@pytest.fixture
async def manager(sqlite_storage: SQLiteStorage) -> TriggerManager:
    manager = TriggerManager(sqlite_storage, "bad-input")
    await manager.update_configuration(
        {
            "t": {"after": ["go"], "run": "bad.ok"},
            "t_wait": {"after": ["go", "later"], "run": "bad.ok"},
        }
    )
    await manager.fire("go", {"v": 1})
    await manager.join()
    return manager


def contents(state: SessionState) -> dict[str, Any]:
    return state.debug_repr()


Call = Callable[[TriggerManager], Awaitable[Any]]

CASES: list[tuple[str, Call, type[Exception], str]] = [
    ("kwargs with a set", lambda m: m.fire("go", {"s": {1, 2}}), InvalidInput, "cannot be stored as JSON"),
    ("kwargs with an object", lambda m: m.fire("go", {"o": object()}), InvalidInput, "JSON"),
    (
        "kwargs with a number key",
        lambda m: m.fire("go", {"a": {1: "x"}}),
        InvalidInput,
        "key 1 is not a string",
    ),
    ("kwargs with NaN", lambda m: m.fire("go", {"n": math.nan}), InvalidInput, "JSON"),
    ("kwargs not a mapping", lambda m: m.fire("go", [1, 2]), InvalidInput, "must be a mapping"),  # type: ignore[arg-type]
    ("non-string trigger", lambda m: m.fire(5), InvalidInput, "trigger names must be non-empty strings"),  # type: ignore[arg-type]
    ("empty trigger", lambda m: m.fire(""), InvalidInput, "trigger names must be non-empty strings"),
    ("replay unknown", lambda m: m.replay_failed_instance("t#7"), InstanceNotFound, "t#7"),
    ("skip unknown", lambda m: m.skip_failed_instance("nope#0"), InstanceNotFound, "nope#0"),
    ("status unknown", lambda m: m.update_instance_status("nope#0", "failed"), InstanceNotFound, "nope#0"),
    ("metadata unknown", lambda m: m.update_instance_metadata("nope#0", {}), InstanceNotFound, "nope#0"),
    ("logs unknown", lambda m: m.mark_instance_logs_resolved("nope#0"), InstanceNotFound, "nope#0"),
    ("replay finished", lambda m: m.replay_failed_instance("t#0"), InvalidStatus, "finished"),
    ("skip finished", lambda m: m.skip_failed_instance("t#0"), InvalidStatus, "finished"),
    ("replay unstarted", lambda m: m.replay_failed_instance("t_wait#0"), InvalidStatus, "unstarted"),
    ("bad status", lambda m: m.update_instance_status("t#0", "done"), InvalidInput, "unknown status 'done'"),
    ("bad metadata", lambda m: m.update_instance_metadata("t#0", {"x": object()}), InvalidInput, "JSON"),
    (
        "bad replacement",
        lambda m: m.replay_failed_instance("t#0", {"go": 1}),  # type: ignore[dict-item]
        InvalidInput,
        "maps trigger names",
    ),
    ("bad skip result", lambda m: m.skip_failed_instance("t#0", True, {"r": {1}}), InvalidInput, "JSON"),
]


@pytest.mark.parametrize(("case", "call", "error", "words"), CASES, ids=[c[0] for c in CASES])
async def test_bad_input_is_refused_and_changes_nothing(
    manager: TriggerManager, case: str, call: Call, error: type[Exception], words: str
) -> None:
    before = await manager.get_state()
    with pytest.raises(error) as info:
        await call(manager)
    assert words in str(info.value)
    after = await manager.get_state()
    assert after.version == before.version
    assert contents(after) == contents(before)


async def test_unknown_instance_error_is_a_key_error_naming_it(manager: TriggerManager) -> None:
    with pytest.raises(KeyError) as info:
        await manager.replay_failed_instance("t#9")
    assert str(info.value) == "session 'bad-input' has no task instance named 't#9'"


async def test_wrong_status_error_is_a_value_error(manager: TriggerManager) -> None:
    with pytest.raises(ValueError, match="instance 't#0' is finished; only failed instances can be replayed"):
        await manager.replay_failed_instance("t#0")


def test_manager_needs_a_storage_and_uid(sqlite_storage: SQLiteStorage) -> None:
    with pytest.raises(TypeError, match="Storage"):
        TriggerManager("sqlite:///x.db", "u")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="uid"):
        TriggerManager(sqlite_storage, "")


async def test_kwargs_are_stored_as_json_values(manager: TriggerManager) -> None:
    await manager.fire("later", {"tuple": (1, 2), "nested": {"k": [None, True, 1.5]}})
    await manager.join()
    state = await manager.get_state()
    assert state.latest_kwargs["later"] == {"tuple": [1, 2], "nested": {"k": [None, True, 1.5]}}
