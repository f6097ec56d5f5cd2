"""Group commit through aiosqlite's thread: one hand-off, one transaction.

Handing work to aiosqlite's thread and back costs more than a whole SQLite
transaction, and so does every event-loop iteration on the way. So an operation
is sent to the thread by its caller directly (no task in between), operations
that arrive while a batch is in the thread go together in the next one, and the
thread's answer wakes the callers itself (no future or task relays it): a lone
operation costs one hand-off and two loop iterations, as little as one
``await`` of aiosqlite's own.

A lone write, with nothing in the thread (nor another write run so in the same
turn of the loop), may even run at once on the event loop (`run_alone`, when the
storage allows it: no sync to disk at commit):
a write transaction in WAL mode costs tens of microseconds, less than the
hand-off, and never waits here: if another connection holds the write lock it
goes to the thread, which waits. The connection then never checkpoints on its
own, which would sync to disk on the loop: every `CHECKPOINT_EVERY` operations
a checkpoint runs instead, in two steps. Copying the WAL into
the database costs about as much as the writes that filled it, so the bulk of
it runs beside the writes, on a connection and in a thread of its own, while
they go on; then the little they added meanwhile is copied in aiosqlite's
thread, as a batch of its own, with the writes waiting: the next write finds
the whole WAL copied and starts it over, so it does not grow without bound
(writes arriving during a checkpoint beside would otherwise keep it from ever
being complete).

Waiting for another process's write lock is done here too, with short sleeps:
SQLite's own busy handler sleeps 1, 2, 5, 10... ms between attempts, so a
writer that just missed the lock waits far longer than the lock is held.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from time import monotonic, sleep
from typing import Any, Protocol

import aiosqlite

from ..errors import InvalidInput, StorageError

__all__ = [
    "AIOSQLITE_CLOSED",
    "CHECKPOINT_EVERY",
    "Beside",
    "GroupCommit",
    "Op",
    "Runner",
    "call",
    "run_alone",
    "run_batch",
    "translate",
]

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

#: Operations between two checkpoints of a connection whose lone writes run on
#: the event loop (about SQLite's own default of 1,000 WAL pages: a fire writes
#: a few pages).
CHECKPOINT_EVERY = 300

log = logging.getLogger("atriggers.storage.sqlite")


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


def run_alone(db: sqlite3.Connection, op: Op, same_file: Callable[[], None]) -> Outcome | None:
    """Write `op` in a transaction of its own, now, in the calling thread (the
    event loop's); None, with nothing written, when another connection holds
    the write lock: the caller then sends it to the thread, which waits."""
    try:
        same_file()
        [result] = _transaction(db, [op], True)
    except sqlite3.OperationalError as exc:
        if _busy(exc):
            return None
        return False, exc
    except Exception as exc:  # noqa: BLE001 - handed to the caller
        return False, exc
    return True, result


class _Checkpoint:
    """Copy the WAL into the database (PASSIVE: waits for no reader or writer)."""

    writes = False

    def __call__(self, db: sqlite3.Connection) -> None:
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")


#: Runs a batch's operations in one transaction (`run_batch`, with what the
#: storage passes it); called in aiosqlite's thread.
Runner = Callable[[sqlite3.Connection, list[Op]], list[Any]]

#: Runs a lone write on the event loop (`run_alone`, with what the storage
#: passes it): its outcome, or None to send it to the thread.
Alone = Callable[[sqlite3.Connection, Op], Outcome | None]

#: Runs a PASSIVE checkpoint on another connection, in another thread, while
#: writes go on (see the module's docstring).
Beside = Callable[[], Awaitable[None]]


def _run_each(run: Runner, db: sqlite3.Connection, ops: list[Op]) -> list[Outcome]:
    """The batch in one transaction; if it fails, each operation again in a
    transaction of its own, so that one operation's failure is not the others'
    (still in the thread: no more hand-offs)."""
    if len(ops) == 1 and isinstance(ops[0], _Checkpoint):
        try:
            return [(True, ops[0](db))]  # (outside any transaction: it cannot run in one)
        except Exception as exc:  # noqa: BLE001 - nobody waits for it; the next one may do
            return [(False, exc)]
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

    def __init__(
        self,
        conn: aiosqlite.Connection,
        run: Runner,
        alone: Alone | None = None,
        beside: Beside | None = None,
    ) -> None:
        self._conn = conn
        self._run = run
        #: Runs a lone write on the event loop (None: every operation goes to the thread).
        self._alone = alone
        #: Checkpoints beside the writes (None: all of each one in the thread).
        self._beside = beside
        #: The checkpoint running beside the writes, if one is.
        self._checkpointing: asyncio.Task[None] | None = None
        self._pending: list[tuple[Op, asyncio.Future[Any]]] = []
        self._in_thread = False
        self._idle: asyncio.Future[None] | None = None
        #: Whether a write ran on the loop in this turn of it.
        self._turn = False
        #: Operations since the last checkpoint (with `alone` only).
        self._writes = 0
        #: Hand-offs to aiosqlite's thread so far (batches sent).
        self.hand_offs = 0
        #: Writes run on the event loop so far, and checkpoints begun.
        self.alone = 0
        self.checkpoints = 0

    async def submit(self, op: Op) -> Any:
        """Run `op` in the next batch; its result, or what it raised (translated)."""
        alone = self._alone
        if alone is not None and op.writes and not (self._in_thread or self._pending or self._turn):
            conn = self._conn
            db = conn._connection
            if conn._running and db is not None:
                outcome = alone(db, op)
                if outcome is not None:
                    # The writes that come in the same turn of the loop (a burst of
                    # concurrent operations) go to the thread, together.
                    self._turn = True
                    asyncio.get_running_loop().call_soon(self._turn_over)
                    self.alone += 1
                    self._wrote(1)
                    # One turn of the loop, as a hand-off would take: a write still
                    # suspends its caller (what it dispatched starts before it goes
                    # on; a caller writing in a loop lets the others run).
                    await asyncio.sleep(0)
                    ok, value = outcome
                    if ok:
                        return value
                    raise translate(value)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((op, future))
        if not self._in_thread:
            self._send()
        # A cancelled caller leaves the batch be: the others of it still get
        # their outcomes (and this operation may still take effect).
        return await future

    async def wait_idle(self) -> None:
        """Return once no batch is in the thread or waiting for it, and no
        checkpoint runs."""
        while self._in_thread or self._checkpointing is not None:
            if self._checkpointing is not None:
                await asyncio.shield(self._checkpointing)
                continue
            if self._idle is None:
                self._idle = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._idle)

    def _turn_over(self) -> None:
        self._turn = False

    def _wrote(self, operations: int) -> None:
        """Count operations written; past `CHECKPOINT_EVERY`, a checkpoint
        begins (beside the writes if it can, else in the thread)."""
        self._writes += operations
        if self._writes < CHECKPOINT_EVERY or self._in_thread or self._checkpointing is not None:
            return
        self._writes = 0
        self.checkpoints += 1
        if self._beside is None:
            self._checkpoint_here()
            return
        task = asyncio.get_running_loop().create_task(self._checkpoint_beside(self._beside))
        if not task.done():  # (an eager task may have ended already)
            self._checkpointing = task

    async def _checkpoint_beside(self, beside: Beside) -> None:
        try:
            await beside()
        except Exception as exc:  # noqa: BLE001 - the thread does all of it then
            log.debug("checkpoint beside the writes failed: %r", exc)
        finally:
            self._checkpointing = None
        self._checkpoint_here()

    def _checkpoint_here(self) -> None:
        """A checkpoint in the thread, as a batch of its own: now if the thread
        is free, else after the batch it holds."""
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.add_done_callback(_forget)
        self._pending.insert(0, (_Checkpoint(), done))
        if not self._in_thread:
            self._send()

    def _send(self) -> None:
        if self._pending and isinstance(self._pending[0][0], _Checkpoint):
            batch, self._pending = self._pending[:1], self._pending[1:]  # (a batch of its own)
        else:
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
        if self._alone is not None:
            self._wrote(len(futures))  # (may send a checkpoint)
        if self._in_thread:
            pass
        elif self._pending:
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


def _forget(done: asyncio.Future[Any]) -> None:
    if not done.cancelled():
        done.exception()  # (retrieved: a failed checkpoint is tried again later)


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
