"""What `SQLiteStorage` needs from aiosqlite beyond its public API.

`SQLiteStorage._call` runs a whole transaction in one hand-off to aiosqlite's
thread through the private `Connection._conn` and `Connection._execute`; the
group commit (atriggers.storage.sqlite_commit) queues its batches on the
private `Connection._tx` itself, with a reply object in place of a future.
pyproject.toml pins aiosqlite to the releases these tests passed on; when a new
release fails here, fix `_call` or `GroupCommit` (and these tests) before
widening the pin.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import aiosqlite
import pytest

from atriggers import StorageError
from atriggers.storage import SQLiteStorage
from atriggers.storage.sqlite_commit import AIOSQLITE_CLOSED as _AIOSQLITE_CLOSED


@contextmanager
def private_api(name: str) -> Iterator[None]:
    """Turn a failure into one message naming the private API that changed."""
    try:
        yield
    except (Exception, pytest.fail.Exception) as exc:  # noqa: BLE001 - any change, one message
        pytest.fail(
            f"aiosqlite {version('aiosqlite')} changed its private {name}, which "
            f"atriggers.storage.sqlite.SQLiteStorage._call relies on: {exc!r}. "
            "Adapt _call and this test, then widen the aiosqlite pin in pyproject.toml.",
            pytrace=False,
        )


async def test_execute_runs_a_function_with_the_sqlite3_connection_in_its_thread(db_path: Path) -> None:
    async with aiosqlite.connect(db_path, isolation_level=None) as conn:
        with private_api("Connection._conn"):
            db = conn._conn
            assert isinstance(db, sqlite3.Connection), f"_conn is a {type(db).__name__}"

        def work(db: sqlite3.Connection, value: int) -> tuple[int, int]:
            db.execute("BEGIN")
            db.execute("CREATE TABLE t (v INTEGER)")
            db.execute("INSERT INTO t VALUES (?)", (value,))
            db.execute("COMMIT")
            (stored,) = db.execute("SELECT v FROM t").fetchone()
            return threading.get_ident(), stored

        with private_api("Connection._execute(fn, *args)"):
            thread, stored = await conn._execute(work, db, 7)  # type: ignore[no-untyped-call]
            assert stored == 7
            # The point of the private call: the sqlite3 connection is used in
            # aiosqlite's own thread, never in the event loop's.
            assert thread != threading.get_ident(), "fn ran in the event loop's thread"


async def test_the_thread_answers_a_queued_function_through_the_reply_it_is_given(db_path: Path) -> None:
    """`GroupCommit._send` queues ``(reply, fn)`` on `Connection._tx`; the thread
    calls ``fn()``, then ``reply.get_loop().call_soon_threadsafe(set_result,
    reply, result)``, where aiosqlite's `set_result` checks ``reply.done()``."""
    loop = asyncio.get_running_loop()
    answered: asyncio.Future[tuple[int, int]] = loop.create_future()

    class Reply:
        def get_loop(self) -> asyncio.AbstractEventLoop:
            return loop

        def done(self) -> bool:
            return False

        def set_result(self, result: tuple[int, int]) -> None:
            assert threading.get_ident() == loop_thread, "answered outside the loop's thread"
            answered.set_result(result)

        def set_exception(self, exc: BaseException) -> None:
            answered.set_exception(exc)

    loop_thread = threading.get_ident()
    async with aiosqlite.connect(db_path, isolation_level=None) as conn:
        with private_api("Connection._running and Connection._connection"):
            assert conn._running is True
            db = conn._connection
            assert isinstance(db, sqlite3.Connection)

        def work() -> tuple[int, int]:
            (one,) = db.execute("SELECT 1").fetchone()
            return threading.get_ident(), one

        with private_api("Connection._tx and the worker's reply protocol"):
            conn._tx.put_nowait((Reply(), work))  # type: ignore[arg-type]
            thread, one = await asyncio.wait_for(answered, timeout=10)
            assert one == 1
            assert thread != loop_thread, "the function ran in the event loop's thread"
        await conn.close()
        with private_api("Connection._running once closed"):
            assert conn._running is False and conn._connection is None


async def test_a_closed_connection_raises_the_value_errors_we_translate(db_path: Path) -> None:
    conn = await aiosqlite.connect(db_path)
    await conn.close()
    with private_api("Connection._conn on a closed connection"), pytest.raises(ValueError) as caught:
        _ = conn._conn
    assert str(caught.value) in _AIOSQLITE_CLOSED, f"_conn says {caught.value}: update _AIOSQLITE_CLOSED"
    with (
        private_api("Connection._execute on a closed connection"),
        pytest.raises(ValueError) as caught,
    ):
        await conn._execute(lambda: None)  # type: ignore[no-untyped-call]
    assert str(caught.value) in _AIOSQLITE_CLOSED, f"_execute says {caught.value}: update _AIOSQLITE_CLOSED"


async def test_a_connection_closed_under_the_storage_is_a_storage_error(db_path: Path) -> None:
    async with SQLiteStorage(db_path) as storage:
        conn = storage._require()
        await conn.close()
        with pytest.raises(StorageError, match="connection was closed") as caught:
            await storage.load("s1")
        assert isinstance(caught.value.__cause__, ValueError)
        with pytest.raises(StorageError, match="connection was closed"):
            await storage.list_sessions()


async def test_a_connection_closing_while_the_storage_waits_is_a_storage_error(db_path: Path) -> None:
    async with SQLiteStorage(db_path) as storage:
        conn = storage._require()
        # aiosqlite's thread is busy: the close is queued, and the load queued
        # behind it finds the sqlite3 connection closed.
        release = threading.Event()
        busy = asyncio.create_task(SQLiteStorage._call(conn, lambda db: release.wait(10)))
        await asyncio.sleep(0)
        closing = asyncio.create_task(conn.close())
        await asyncio.sleep(0)
        load = asyncio.create_task(storage.load("s1"))
        await asyncio.sleep(0)
        release.set()
        await busy
        await closing
        with pytest.raises(StorageError):
            await load


async def test_execute_refusing_a_closed_connection_is_a_storage_error() -> None:
    """The other message aiosqlite uses (`_execute` on a stopped connection
    whose thread has not closed it yet): a race too narrow to stage."""

    class Stopped:
        _conn = None

        async def _execute(self, fn: object, *args: object) -> None:
            raise ValueError("Connection closed")

    with pytest.raises(StorageError, match="connection was closed"):
        await SQLiteStorage._call(Stopped(), lambda db: None)  # type: ignore[arg-type]


async def test_other_value_errors_are_not_mistaken_for_a_closed_connection(db_path: Path) -> None:
    def broken(db: sqlite3.Connection) -> None:
        raise ValueError("a bug in the work sent to the thread")

    async with SQLiteStorage(db_path) as storage:
        with pytest.raises(ValueError, match="a bug"):
            await SQLiteStorage._call(storage._require(), broken)


async def test_every_caller_of_a_batch_gets_the_error_and_later_calls_too(db_path: Path) -> None:
    """Operations that share a group commit all fail, and the next one is not
    left waiting behind a stuck flush."""
    async with SQLiteStorage(db_path) as storage:
        await storage._require().close()
        outcomes = await asyncio.gather(*(storage.load(f"s{i}") for i in range(5)), return_exceptions=True)
        assert all(isinstance(outcome, StorageError) for outcome in outcomes), outcomes
        with pytest.raises(StorageError):
            await asyncio.wait_for(storage.load("later"), timeout=5)
