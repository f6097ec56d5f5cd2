"""SQLite and memory storage: layout, schema version, URLs, what a fire reads."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from atriggers import Status, StorageError, TaskContext, TriggerManager, task
from atriggers.storage import MemoryStorage, SQLiteStorage, open_storage
from atriggers.storage.sqlite import SCHEMA_VERSION


@task("st.ok")
async def ok(context: TaskContext) -> dict[str, Any]:
    return {"n": context.trigger_kwargs["tick"]["n"]}


async def test_fire_reads_only_unresolved_instances(sqlite_storage: SQLiteStorage) -> None:
    manager = TriggerManager(sqlite_storage, "history")
    await manager.update_configuration(
        {
            "t": {"after": [], "andEvery": "tick", "run": "st.ok"},
            "t_wait": {"after": ["never"], "andEvery": "tick", "run": "st.ok"},
        }
    )
    for n in range(50):
        await manager.fire("tick", {"n": n})
    await manager.join()
    working = await sqlite_storage.load("history")
    assert not working.complete
    assert len(working.instances) == 50 and {i.task_name for i in working.instances.values()} == {"t_wait"}
    assert working.instance_counts == {"t": 50, "t_wait": 50}
    named = await sqlite_storage.load("history", ["t#3"])
    assert named.instances["t#3"].status is Status.FINISHED
    full = await manager.get_state()
    assert full.complete and len(full.instances) == 100


async def test_schema_is_versioned(db_path: Path) -> None:
    async with SQLiteStorage(db_path):
        pass
    with closing(sqlite3.connect(db_path)) as db, db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"atriggers_sessions", "atriggers_triggers", "atriggers_instances"} <= tables


async def test_newer_schema_is_refused(db_path: Path) -> None:
    async with SQLiteStorage(db_path):
        pass
    with closing(sqlite3.connect(db_path)) as db, db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StorageError, match="newer than this atriggers understands"):
        async with SQLiteStorage(db_path):
            pass


async def test_state_is_json_in_the_database(sqlite_storage: SQLiteStorage, db_path: Path) -> None:
    import json

    manager = TriggerManager(sqlite_storage, "json")
    await manager.update_configuration({"t": {"after": [], "andEvery": "tick", "run": "st.ok"}})
    await manager.fire("tick", {"n": 1, "text": "héllo"})
    await manager.join()
    with closing(sqlite3.connect(db_path)) as db, db:
        body = db.execute("SELECT body FROM atriggers_instances WHERE name = 't#0'").fetchone()[0]
        kwargs = db.execute("SELECT kwargs FROM atriggers_triggers WHERE name = 'tick'").fetchone()[0]
    assert json.loads(body)["status"] == "finished"
    assert json.loads(kwargs) == {"n": 1, "text": "héllo"}


async def test_unopened_storage_says_so(db_path: Path) -> None:
    storage = SQLiteStorage(db_path)
    with pytest.raises(StorageError, match="not open"):
        await TriggerManager(storage, "u").fire("x")


async def test_unreadable_file_is_a_storage_error(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-db.db"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError):
        async with SQLiteStorage(bad):
            pass


async def test_open_storage_urls(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    async with open_storage("sqlite:///relative.db") as relative:
        assert isinstance(relative, SQLiteStorage)
        await TriggerManager(relative, "u").fire("x")
        assert relative.url == f"sqlite:///{tmp_path / 'relative.db'}"
    assert (tmp_path / "relative.db").exists()
    absolute = tmp_path / "absolute.db"
    async with open_storage(f"sqlite:///{absolute}") as storage:
        assert isinstance(storage, SQLiteStorage) and storage.path == absolute
        # The storage's own URL reopens the same file (what remote workers use).
        assert open_storage(storage.url).path == absolute  # type: ignore[attr-defined]
    async with open_storage("memory://") as memory:
        assert isinstance(memory, MemoryStorage)
    with pytest.raises(ValueError, match="no storage URL scheme registered as 'nosuch'"):
        open_storage("nosuch://x")
    with pytest.raises(ValueError, match="scheme://"):
        open_storage("state.db")


async def test_list_sessions(sqlite_storage: SQLiteStorage, memory_storage: MemoryStorage) -> None:
    for storage in (sqlite_storage, memory_storage):
        for uid in ("b", "a", "c"):
            await TriggerManager(storage, uid).fire("x")
        assert await storage.list_sessions() == ["a", "b", "c"]


async def test_memory_storage_refuses_what_json_cannot_hold(memory_storage: MemoryStorage) -> None:
    manager = TriggerManager(memory_storage, "m")
    await manager.update_configuration({"t": {"after": [], "andEvery": "tick", "run": "st.ok"}})
    await manager.fire("tick", {"n": 1})
    await manager.join()
    state = await manager.get_state()
    assert state.instances["t#0"].result == {"n": 1}
    # Snapshots are copies: changing one changes nothing stored.
    state.instances["t#0"].metadata["result"] = {"n": 2}
    assert (await manager.get_state()).instances["t#0"].result == {"n": 1}


async def test_missing_directory_is_a_clear_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        async with SQLiteStorage(tmp_path / "no" / "such" / "dir" / "state.db"):
            pass


def test_storage_urls_carry_the_owner_lease(tmp_path: Path) -> None:
    """``?lease=SECONDS`` sets the owner lease of a storage opened from its URL,
    and a storage's URL carries a lease that is not the default, so remote
    workers hold runs with the lease the app configured."""
    path = tmp_path / "state.db"
    default = open_storage(f"sqlite:///{path}")
    assert default.lease.duration == 30.0 and "?" not in default.url
    short = open_storage(f"sqlite:///{path}?lease=1.5")
    assert isinstance(short, SQLiteStorage) and short.path == path
    assert short.lease.duration == 1.5
    assert short.url == f"sqlite:///{path.resolve()}?lease=1.5"
    assert open_storage(short.url).lease.duration == 1.5
    assert SQLiteStorage(path, lease=2).url.endswith("?lease=2")
    pytest.importorskip("redis")
    from atriggers.storage.redis import RedisStorage

    redis = RedisStorage.from_url("redis://127.0.0.1:6379/3?prefix=p:&lease=2&socket_keepalive=true")
    assert redis.lease.duration == 2 and redis.prefix == "p:"
    assert "lease" not in redis.redis_url and "socket_keepalive=true" in redis.redis_url
    assert RedisStorage.from_url(redis.url).lease.duration == 2


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///x.db?lease=0",
        "sqlite:///x.db?lease=soon",
        "sqlite:///x.db?lease=inf",
        "sqlite:///x.db?timeout=3",
        "redis://127.0.0.1?lease=-1",
    ],
)
def test_bad_lease_in_storage_url(url: str) -> None:
    if url.startswith("redis"):
        pytest.importorskip("redis")
    with pytest.raises(ValueError, match=r"lease|unknown parameter"):
        open_storage(url)


async def test_storage_pool_opens_a_url_once_under_concurrent_requests(tmp_path: Path) -> None:
    """A worker's first tasks arriving together (a Celery threads pool) share
    one storage, hence one owner lease: none is opened twice and leaked."""
    from atriggers.remote import StoragePool

    async with SQLiteStorage(tmp_path / "state.db"):
        pass  # a worker never creates a store: it exists already
    pool = StoragePool()
    url = f"sqlite:///{tmp_path / 'state.db'}?lease=5"
    try:
        first, second, third = await asyncio.gather(pool.get(url), pool.get(url), pool.get(url))
        assert first is second is third
        assert first.lease.duration == 5
    finally:
        await pool.aclose()
    assert not first.is_open


async def test_a_stalled_process_keeps_its_owner_lease_if_it_has_not_lapsed() -> None:
    """Renewals late because the event loop stalled (more than half a lease),
    but the lease still valid in storage: the process keeps its owner id, so
    the runs it holds are not lost (and run again elsewhere) while it runs them."""
    async with MemoryStorage(lease=1.0) as storage:
        owner = await storage.lease.acquire()
        time.sleep(0.9)  # noqa: ASYNC251 - the stall is the point
        assert storage.lease.current() is None  # past the safety margin, not lapsed
        assert await storage.lease.acquire() == owner
        assert storage.lease.current() == owner
