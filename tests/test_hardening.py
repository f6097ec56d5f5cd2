"""Bad input, corrupted data and storage surprises: a clear error for the caller
at fault, nothing written, and every other session (and caller) unharmed."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from atriggers import (
    ConfigurationError,
    InvalidInput,
    Status,
    StorageError,
    TaskContext,
    TriggerManager,
    task,
)
from atriggers._json import MAX_DEPTH
from atriggers.storage import MemoryStorage, SQLiteStorage

SURROGATE = "\udc80"


@task("hard.echo")
async def echo(context: TaskContext) -> dict[str, Any]:
    return {"seen": sorted(context.trigger_kwargs)}


CONFIG = {"t": {"after": ["go"], "andEvery": "go", "run": "hard.echo"}}


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"x": value}
    return value


# -- one bad string never poisons a batch ---------------------------------------------------


async def test_a_lone_surrogate_is_refused_and_harms_no_concurrent_fire(
    sqlite_storage: SQLiteStorage,
) -> None:
    for n in range(20):
        await TriggerManager(sqlite_storage, f"ok-{n}").update_configuration(CONFIG)
    bad = TriggerManager(sqlite_storage, "ok-0")
    results = await asyncio.gather(
        bad.fire("go", {"text": SURROGATE}),
        *(TriggerManager(sqlite_storage, f"ok-{n}").fire("go", {"n": n}) for n in range(20)),
        return_exceptions=True,
    )
    assert isinstance(results[0], InvalidInput) and "not valid Unicode" in str(results[0])
    assert all(isinstance(r, list) and len(r) == 1 for r in results[1:]), results
    await sqlite_storage.drain(10)
    state = await TriggerManager(sqlite_storage, "ok-0").get_state()
    assert state.latest_kwargs["go"] == {"n": 0}


@pytest.mark.parametrize(
    "attempt",
    [
        lambda m: m.fire(f"go{SURROGATE}"),
        lambda m: m.fire("go", {f"key{SURROGATE}": 1}),
        lambda m: m.replay_failed_instance(f"t#0{SURROGATE}"),
        lambda m: m.update_configuration({f"t{SURROGATE}": {"after": ["go"], "run": "hard.echo"}}),
        lambda m: m.update_configuration({"t2": {"after": [f"go{SURROGATE}"], "run": "hard.echo"}}),
        lambda m: m.update_configuration({"t2": {"after": ["go"], "run": "hard.echo", "x": SURROGATE}}),
    ],
)
async def test_surrogates_anywhere_are_refused_before_anything_is_written(
    sqlite_storage: SQLiteStorage, attempt: Any
) -> None:
    manager = TriggerManager(sqlite_storage, "s")
    await manager.update_configuration(CONFIG)
    before = await manager.get_state()
    with pytest.raises((InvalidInput, ConfigurationError)):
        await attempt(manager)
    assert (await manager.get_state()).version == before.version


def test_blank_or_undecodable_uids_are_refused(sqlite_storage: SQLiteStorage) -> None:
    for uid in (" ", "\t", f"u{SURROGATE}", ""):
        with pytest.raises(InvalidInput, match="uid"):
            TriggerManager(sqlite_storage, uid)


# -- one documented depth -------------------------------------------------------------------


async def test_one_maximum_depth_enforced_once(sqlite_storage: SQLiteStorage) -> None:
    manager = TriggerManager(sqlite_storage, "deep")
    await manager.update_configuration(CONFIG)
    assert await manager.fire("go", nested(MAX_DEPTH))
    for depth in (MAX_DEPTH + 1, 5000):
        with pytest.raises(InvalidInput, match=f"deeper than {MAX_DEPTH}"):
            await manager.fire("go", nested(depth))
    await manager.join()
    state = await manager.get_state()
    assert {i.status for i in state.instances.values()} == {Status.FINISHED}
    with pytest.raises(ConfigurationError, match="withParams"):
        await manager.update_configuration(
            {"t": {"after": ["go"], "run": "hard.echo", "withParams": {"go": nested(MAX_DEPTH + 1)}}}
        )


# -- configuration keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "directive"),
    [
        ({"withParams": {"go": {1: 2}}}, "withParams"),
        ({"withParams": {"go": {"a": {True: "x"}}}}, "withParams"),
        ({"custom": {1: 2}}, "custom"),
    ],
)
def test_non_string_keys_in_configuration_are_refused(body: dict[str, Any], directive: str) -> None:
    from atriggers import validate_configuration

    problems = validate_configuration({"t": {"after": ["go"], "run": "hard.echo", **body}})
    assert [(p.task, p.directive) for p in problems] == [("t", directive)]
    assert "keys must be strings" in problems[0].message


# -- reserved metadata and flags ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata",
    [
        {"logLevel": "x"},
        {"logLevel": True},
        {"depth": "abc"},
        {"depth": -1},
        {"timestamps": 5},
        {"timestamps": {"created": "yesterday"}},
        {"logsResolved": "yes"},
        {"cooldown": -3},
        {"result": [1]},
        {"notBefore": "soon"},
    ],
)
async def test_reserved_metadata_is_validated(
    sqlite_storage: SQLiteStorage, metadata: dict[str, Any]
) -> None:
    manager = TriggerManager(sqlite_storage, "meta")
    await manager.update_configuration(CONFIG)
    await manager.fire("go")
    await manager.join()
    before = await manager.get_state()
    key = next(iter(metadata))
    with pytest.raises(InvalidInput, match=f"metadata key {key!r} must be"):
        await manager.update_instance_metadata("t#0", metadata)
    with pytest.raises(InvalidInput, match=f"metadata key {key!r} must be"):
        await manager.update_instance_status("t#0", "failed", metadata)
    assert await manager.get_state() == before
    await manager.update_instance_metadata("t#0", {"note": "free-form keys stay free", "depth": 2})


async def test_flags_must_be_booleans(sqlite_storage: SQLiteStorage) -> None:
    manager = TriggerManager(sqlite_storage, "flags")
    await manager.update_configuration({"t": {"after": ["go"], "run": "no.such.task"}})
    await manager.fire("go")
    await manager.join()
    before = await manager.get_state()
    with pytest.raises(InvalidInput, match="cascade must be True or False"):
        await manager.skip_failed_instance("t#0", cascade=b"x")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="cascade must be True or False"):
        await manager.update_instance_status("t#0", "skipped", cascade=1)  # type: ignore[arg-type]
    assert await manager.get_state() == before


# -- corrupted stored data ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "column", "value"),
    [
        ("atriggers_instances", "body", "{not json"),
        ("atriggers_instances", "body", '{"task": "t", "status": "exploded"}'),
        ("atriggers_instances", "body", '{"status": "unstarted"}'),
        ("atriggers_instances", "body", '{"task": "t", "status": "unstarted", "kwargs": [1]}'),
        # Found when the instance is decoded in full (a fire that uses it, a read).
        ("atriggers_instances", "body", '{"task": "t", "status": "unstarted", "kwargs": {"go": 5}}'),
        ("atriggers_instances", "body", '{"task": "t", "status": "unstarted", "metadata": [1]}'),
        ("atriggers_instances", "body", b"\xff\xfe"),
        ("atriggers_triggers", "kwargs", "[1, 2]"),
        ("atriggers_sessions", "config", '{"t": {"run": 1}}'),
        ("atriggers_sessions", "counts", '{"t": "many"}'),
    ],
)
async def test_corrupt_rows_give_storage_errors_and_spare_other_sessions(
    db_path: Path, table: str, column: str, value: str | bytes
) -> None:
    async with SQLiteStorage(db_path) as storage:
        for uid in ("bad", "good"):
            manager = TriggerManager(storage, uid)
            await manager.update_configuration({"t": {"after": ["go", "never"], "run": "hard.echo"}})
            await manager.fire("go", {"n": 1})
    with sqlite3.connect(db_path) as db:
        if isinstance(value, bytes):
            db.execute(f"UPDATE {table} SET {column} = CAST(? AS TEXT) WHERE uid = 'bad'", (value,))
        else:
            db.execute(f"UPDATE {table} SET {column} = ? WHERE uid = 'bad'", (value,))
    db.close()
    async with SQLiteStorage(db_path) as storage:
        bad, good = TriggerManager(storage, "bad"), TriggerManager(storage, "good")
        results = await asyncio.gather(
            bad.get_state(), good.get_state(), bad.fire("never"), good.fire("never"), return_exceptions=True
        )
        assert isinstance(results[0], StorageError) and "'bad'" in str(results[0]), results[0]
        assert isinstance(results[2], StorageError)
        assert not isinstance(results[1], BaseException) and not isinstance(results[3], BaseException)
        await good.join()
        assert (await good.get_instance("t#0")).status is Status.FINISHED


async def test_a_database_of_another_application_is_refused(tmp_path: Path) -> None:
    for setup in (
        "CREATE TABLE orders (id INTEGER); PRAGMA user_version = 7",
        "CREATE TABLE atriggers_sessions (uid TEXT)",  # ours, but never versioned
    ):
        path = tmp_path / f"foreign-{len(setup)}.db"
        with sqlite3.connect(path) as db:
            db.executescript(setup)
        db.close()
        with pytest.raises(StorageError, match="not an atriggers database"):
            async with SQLiteStorage(path):
                pass


# -- join and ordering ----------------------------------------------------------------------------------


async def test_join_waits_for_the_work_of_a_fire_whose_caller_was_cancelled(
    sqlite_storage: SQLiteStorage,
) -> None:
    manager = TriggerManager(sqlite_storage, "cancelled")
    await manager.update_configuration(CONFIG)
    caller = asyncio.create_task(manager.fire("go", {"n": 1}))
    await asyncio.sleep(0)
    caller.cancel()
    await manager.join()
    state = await manager.get_state()
    assert [i.status for i in state.instances.values()] == [Status.FINISHED]


def test_instances_made_ready_together_are_dispatched_in_creation_order() -> None:
    script = """
import asyncio
from atriggers import TriggerManager, task
from atriggers.runners import BaseRunner, register_runner
from atriggers.storage import MemoryStorage

order = []

class Recording(BaseRunner):
    name = "recording"
    async def run(self, manager, instance):
        order.append(instance.name)

register_runner(Recording())

async def main():
    async with MemoryStorage() as storage:
        m = TriggerManager(storage, "u", default_runner="recording")
        await m.update_configuration({"t": {"after": ["a", "b"], "andEvery": "a", "run": "x"}})
        for n in range(12):
            await m.fire("a", {"n": n})
        await m.fire("b")
    print(",".join(order))

asyncio.run(main())
"""
    outputs = {
        subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": str(seed), "PATH": "/usr/bin:/bin"},
        ).stdout.strip()
        for seed in (1, 2, 3, 4)
    }
    assert outputs == {",".join(f"t#{n}" for n in range(12))}


async def test_memory_storage_lists_instances_in_a_stable_order(memory_storage: MemoryStorage) -> None:
    manager = TriggerManager(memory_storage, "order")
    await manager.update_configuration({"t": {"after": ["a", "b"], "andEvery": "a", "run": "x"}})
    for n in range(12):
        await manager.fire("a", {"n": n})
    memory_storage.forget("order")
    assert list((await memory_storage.load("order")).instances) == [f"t#{n}" for n in range(12)]


# -- the database file under us ----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["deleted", "replaced"])
async def test_a_database_file_deleted_or_replaced_while_open_is_noticed(db_path: Path, how: str) -> None:
    async with SQLiteStorage(db_path) as storage:
        manager = TriggerManager(storage, "s")
        await manager.update_configuration(CONFIG)
        _remove_or_replace(db_path, how)
        with pytest.raises(StorageError, match="deleted or replaced while open"):
            await manager.fire("go", {"n": 1})
        storage.close_timeout = 0.5


def _remove_or_replace(path: Path, how: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    if how == "replaced":
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE other (x INTEGER)")
        db.close()
