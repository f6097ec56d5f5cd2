"""Group commit through aiosqlite's thread: one hand-off, one transaction.

Handing work to aiosqlite's thread and back costs more than a whole SQLite
transaction, and so does every event-loop iteration on the way. So an operation
is sent to the thread by its caller directly (no task in between), operations
that arrive while a batch is in the thread go together in the next one, and the
thread's answer wakes the callers itself (no future or task relays it): a lone
operation costs one hand-off and two loop iterations, as little as one
``await`` of aiosqlite's own.

Waiting for another process's write lock is done here too, with short sleeps:
SQLite's own busy handler sleeps 1, 2, 5, 10... ms between attempts, so a
writer that just missed the lock waits far longer than the lock is held.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Callable, Sequence
from functools import partial
from time import monotonic, sleep
from typing import Any, Protocol

import aiosqlite

from ..errors import InvalidInput, StorageError

__all__ = ["AIOSQLITE_CLOSED", "GroupCommit", "Op", "Runner", "call", "run_batch", "translate"]

#: aiosqlite's ValueError messages once its connection is closed (from `_conn`
#: and from `_execute`).
AIOSQLITE_CLOSED = frozenset({"no active connection", "Connection closed"})

#: First pause after finding the write lock held, and the longest: a write
#: transaction holds it for well under a millisecond, so a waiter looks again
#: soon, and a few waiters polling cost little (a failed BEGIN IMMEDIATE takes a
#: few microseconds). A longer cap lets a waiter sleep through several turns of
#: the lock: with 4 processes on one session, a 2 ms cap made the 99th
#: percentile fire wait 4-4.6 ms, and this one 2.5 ms.
FIRST_PAUSE = 50e-6
LONGEST_PAUSE = 100e-6


class Op(Protocol):
    """Work for one caller, run inside the batch's transaction in the thread."""

    @property
    def writes(self) -> bool: ...

    def __call__(self, db: sqlite3.Connection) -> Any: ...


#: Per operation of a batch: (True, its result) or (False, what it raised).
Outcome = tuple[bool, Any]


def translate(exc: BaseException) -> BaseException:
    """The error a caller sees for `exc` raised in aiosqlite's thread: driver
    errors become the TriggerError hierarchy here, and nowhere else."""
    if isinstance(exc, sqlite3.Error):
        error: BaseException = StorageError(f"SQLite error: {exc}")
    elif isinstance(exc, UnicodeEncodeError):
        # A name or text that is not valid Unicode reached a query (callers of
        # the storage API itself; managers refuse it earlier).
        error = InvalidInput(f"{exc.object!r} is not valid Unicode text: it cannot be stored")
    elif isinstance(exc, ValueError) and str(exc) in AIOSQLITE_CLOSED:
        # How aiosqlite says its connection was closed under us; a ValueError
        # from an operation itself is a bug of ours and keeps its type.
        error = StorageError("the SQLite connection was closed")
    else:
        return exc
    error.__cause__ = exc
    return error


def _busy(exc: sqlite3.OperationalError) -> bool:
    """Whether `exc` says another connection holds a lock (any SQLITE_BUSY_*)."""
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_BUSY


def _transaction(db: sqlite3.Connection, ops: Sequence[Op], writes: bool) -> list[Any]:
    db.execute("BEGIN IMMEDIATE" if writes else "BEGIN")
    try:
        results = [op(db) for op in ops]
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return results


def run_batch(
    db: sqlite3.Connection, ops: Sequence[Op], same_file: Callable[[], None], patience: float
) -> list[Any]:
    """One transaction for the whole batch; a database error aborts all of it.
    A batch that writes first checks that the file is still the one opened.

    While another connection holds a lock the batch is tried again (nothing of
    it was written: its transaction rolled back) after a short pause that grows
    with each attempt, for `patience` seconds at most. Operations are pure
    functions of the database (a write's re-apply included), so running one
    again is safe.
    """
    writes = any(op.writes for op in ops)
    if writes:
        same_file()
    pause = FIRST_PAUSE
    deadline: float | None = None
    while True:
        try:
            return _transaction(db, ops, writes)
        except sqlite3.OperationalError as exc:
            if not _busy(exc):
                raise
            now = monotonic()
            if deadline is None:
                deadline = now + patience
            if now >= deadline:
                raise
        # Jitter: waiters that found the lock held together do not all come back together.
        sleep(pause * (0.5 + random.random()))
        pause = min(pause * 2, LONGEST_PAUSE)


#: Runs a batch's operations in one transaction (`run_batch`, with what the
#: storage passes it); called in aiosqlite's thread.
Runner = Callable[[sqlite3.Connection, list[Op]], list[Any]]


def _run_each(run: Runner, db: sqlite3.Connection, ops: list[Op]) -> list[Outcome]:
    """The batch in one transaction; if it fails, each operation again in a
    transaction of its own, so that one operation's failure is not the others'
    (still in the thread: no more hand-offs)."""
    try:
        return [(True, result) for result in run(db, ops)]
    except Exception as exc:  # noqa: BLE001 - handed to the callers
        if len(ops) == 1:
            return [(False, exc)]
    outcomes: list[Outcome] = []
    for op in ops:
        try:
            [result] = run(db, [op])
        except Exception as exc:  # noqa: BLE001 - this caller's error
            outcomes.append((False, exc))
        else:
            outcomes.append((True, result))
    return outcomes


class _Reply:
    """Where aiosqlite's thread reports a batch, in place of the asyncio future
    it expects: it calls ``get_loop().call_soon_threadsafe(set_result, reply,
    outcomes)`` and its `set_result` helper checks `done` first. The callers'
    futures get their outcomes in that very callback."""

    __slots__ = ("_commit", "_futures", "_loop")

    def __init__(
        self, commit: GroupCommit, futures: list[asyncio.Future[Any]], loop: asyncio.AbstractEventLoop
    ) -> None:
        self._commit = commit
        self._futures = futures
        self._loop = loop

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def done(self) -> bool:
        return False

    def set_result(self, outcomes: list[Outcome]) -> None:
        self._commit._finished(self._futures, outcomes)

    def set_exception(self, exc: BaseException) -> None:
        # Only a BaseException that is not an Exception gets here (`_run_each`
        # answers for the others): every caller of the batch gets it.
        self._commit._finished(self._futures, [(False, exc)] * len(self._futures))


class GroupCommit:
    """Runs operations on one aiosqlite connection, batching those that arrive
    while a batch is in the thread into one transaction."""

    def __init__(self, conn: aiosqlite.Connection, run: Runner) -> None:
        self._conn = conn
        self._run = run
        self._pending: list[tuple[Op, asyncio.Future[Any]]] = []
        self._in_thread = False
        self._idle: asyncio.Future[None] | None = None
        #: Hand-offs to aiosqlite's thread so far (batches sent).
        self.hand_offs = 0

    async def submit(self, op: Op) -> Any:
        """Run `op` in the next batch; its result, or what it raised (translated)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((op, future))
        if not self._in_thread:
            self._send()
        # A cancelled caller leaves the batch be: the others of it still get
        # their outcomes (and this operation may still take effect).
        return await future

    async def wait_idle(self) -> None:
        """Return once no batch is in the thread or waiting for it."""
        while self._in_thread:
            if self._idle is None:
                self._idle = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._idle)

    def _send(self) -> None:
        batch, self._pending = self._pending, []
        futures = [future for _, future in batch]
        conn = self._conn
        # What `aiosqlite.Connection._execute` checks: nothing may be queued
        # behind the thread's stop, or it would never be answered.
        if not conn._running or conn._connection is None:
            self._finished(futures, [(False, ValueError("Connection closed"))] * len(futures))
            return
        self._in_thread = True
        self.hand_offs += 1
        work = partial(_run_each, self._run, conn._connection, [op for op, _ in batch])
        conn._tx.put_nowait((_Reply(self, futures, futures[0].get_loop()), work))  # type: ignore[arg-type]

    def _finished(self, futures: list[asyncio.Future[Any]], outcomes: list[Outcome]) -> None:
        self._in_thread = False
        if self._pending:
            # The thread works on the next batch while this one's callers wake.
            self._send()
        elif self._idle is not None:
            idle, self._idle = self._idle, None
            idle.set_result(None)
        for future, (ok, value) in zip(futures, outcomes, strict=True):
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(translate(value))


async def call(conn: aiosqlite.Connection, fn: Callable[..., Any], *args: Any) -> Any:
    """Run `fn(sqlite3_connection, *args)` in aiosqlite's thread, outside any
    batch (setting a connection up); driver errors translated."""
    try:
        db = conn._conn
        return await conn._execute(fn, db, *args)  # type: ignore[no-untyped-call]
    except Exception as exc:
        error = translate(exc)
        if error is exc:
            raise
        raise error from exc
