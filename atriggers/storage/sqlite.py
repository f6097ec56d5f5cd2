"""SQLite storage through aiosqlite: the embedded default.

Cost model: handing work to aiosqlite's thread and back costs far more than a
whole SQLite transaction, so every operation here is one hand-off, and operations
that arrive while one is in flight share the next hand-off and its transaction
(group commit: `atriggers.storage.sqlite_commit`). Several processes may share
one file: WAL lets readers proceed while one writer holds the lock, and each
write checks the session's version.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl

import aiosqlite

from ..clock import Clock
from ..due import DueEntry
from ..errors import StorageError
from ..state import Change, SessionState
from .base import Reapply, Storage, VersionConflict
from .codec import ConfigCache, EncodedChange, corrupt, decode_state, decode_tasks, encode_change
from .index import (
    FLAG_STATUSES,
    SessionCounts,
    SessionFilter,
    SessionPage,
    SessionSummary,
    build_summary,
    check_page,
)
from .lease import DEFAULT_LEASE, OWNER_RETENTION, lease_param
from .sqlite_commit import GroupCommit, Op, Outcome, call, run_alone, run_batch

__all__ = ["SCHEMA_VERSION", "SQLiteStorage"]

#: Stored in ``PRAGMA user_version``; later releases migrate older files.
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE atriggers_sessions (
    uid         TEXT PRIMARY KEY,
    version     INTEGER NOT NULL,
    config      TEXT NOT NULL,
    counts      TEXT NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE TABLE atriggers_triggers (
    uid     TEXT NOT NULL,
    name    TEXT NOT NULL,
    kwargs  TEXT NOT NULL,
    PRIMARY KEY (uid, name)
);
CREATE TABLE atriggers_instances (
    uid       TEXT NOT NULL,
    name      TEXT NOT NULL,
    task      TEXT NOT NULL,
    status    TEXT NOT NULL,
    resolved  INTEGER NOT NULL,
    body      TEXT NOT NULL,
    PRIMARY KEY (uid, name)
);
-- A fire reads only unresolved instances: its cost must not grow with history.
CREATE INDEX atriggers_instances_unresolved
    ON atriggers_instances (uid) WHERE resolved = 0;
CREATE INDEX atriggers_instances_status ON atriggers_instances (status, uid);
""" + (
    _DUE_SCHEMA := """
-- The due index (see atriggers.due): what must happen later, and who holds it.
CREATE TABLE atriggers_due (
    uid      TEXT NOT NULL,
    key      TEXT NOT NULL,
    at       REAL,
    owner    TEXT,
    payload  TEXT,
    PRIMARY KEY (uid, key)
);
-- A sweep reads what is due and what lapsed owners held: O(due), not O(sessions).
CREATE INDEX atriggers_due_at ON atriggers_due (at) WHERE at IS NOT NULL;
CREATE INDEX atriggers_due_owner ON atriggers_due (owner) WHERE owner IS NOT NULL;
CREATE TABLE atriggers_owners (
    owner       TEXT PRIMARY KEY,
    expires_at  REAL NOT NULL
);
"""
)


#: schema version -> statements that bring a file from that version to the next.
_MIGRATIONS: dict[int, str] = {1: _DUE_SCHEMA}


#: Seconds to wait for another connection's lock, unless told otherwise.
_DEFAULT_TIMEOUT = 30.0

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]

# -- work done in aiosqlite's thread -----------------------------------------------

_Rows = tuple[tuple[int, str, str] | None, list[tuple[str, str]], list[tuple[str, str]]]


def _select_session(db: sqlite3.Connection, uid: str, names: Collection[str], everything: bool) -> _Rows:
    header = db.execute(
        "SELECT version, config, counts FROM atriggers_sessions WHERE uid = ?", (uid,)
    ).fetchone()
    if header is None:
        return None, [], []
    triggers = db.execute("SELECT name, kwargs FROM atriggers_triggers WHERE uid = ?", (uid,)).fetchall()
    if everything:
        instances = db.execute("SELECT name, body FROM atriggers_instances WHERE uid = ?", (uid,)).fetchall()
    else:
        instances = db.execute(
            "SELECT name, body FROM atriggers_instances WHERE uid = ? AND resolved = 0", (uid,)
        ).fetchall()
        if names:
            loaded = {name for name, _ in instances}
            for name in names:
                if name not in loaded:
                    instances.extend(
                        db.execute(
                            "SELECT name, body FROM atriggers_instances WHERE uid = ? AND name = ?",
                            (uid, name),
                        ).fetchall()
                    )
    return header, triggers, instances


@dataclass(slots=True)
class _Read:
    uid: str
    names: Collection[str]
    everything: bool = False

    writes = False

    def __call__(self, db: sqlite3.Connection) -> _Rows:
        try:
            return _select_session(db, self.uid, self.names, self.everything)
        except sqlite3.OperationalError as exc:
            if "decode" not in str(exc):
                raise
            # Text that is not UTF-8 in this session's rows: its fault, named.
            raise corrupt(self.uid, "data", exc) from exc


@dataclass(slots=True)
class _Conflict:
    rows: _Rows


@dataclass(slots=True)
class _Reapplied:
    change: Change | None


@dataclass(slots=True)
class _Refused:
    error: Exception


# Upserts, not INSERT OR REPLACE: a replaced row is deleted and inserted again,
# which rewrites every index of the table, while an upsert changes the existing
# row in place and only the indexes of the columns it sets: fewer pages for the
# commit to write.
_UPSERT_TRIGGER = (
    "INSERT INTO atriggers_triggers (uid, name, kwargs) VALUES (?, ?, ?) "
    "ON CONFLICT (uid, name) DO UPDATE SET kwargs = excluded.kwargs"
)
_UPSERT_INSTANCE = (
    "INSERT INTO atriggers_instances (uid, name, task, status, resolved, body) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (uid, name) DO UPDATE SET task = excluded.task, status = excluded.status, "
    "resolved = excluded.resolved, body = excluded.body"
)
#: An instance whose status did not change: its indexed columns stay as they are.
_UPDATE_BODY = "UPDATE atriggers_instances SET body = ? WHERE uid = ? AND name = ? AND status = ?"
_UPSERT_DUE = (
    "INSERT INTO atriggers_due (uid, key, at, owner, payload) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (uid, key) DO UPDATE SET at = excluded.at, owner = excluded.owner, "
    "payload = excluded.payload"
)


def _write_change(db: sqlite3.Connection, uid: str, expected: int, c: EncodedChange, reindex: bool) -> bool:
    """Write `c` if the session is at `expected`; False (nothing written) if not.
    Unless `reindex` (see `Change.reindex`), `c` creates no instance and changes
    no instance's status."""
    if expected == 0:
        cursor = db.execute(
            "INSERT OR IGNORE INTO atriggers_sessions "
            "(uid, version, config, counts, updated_at) VALUES (?, ?, ?, ?, ?)",
            (uid, c.version, c.tasks or "{}", c.counts or "{}", time.time()),
        )
    else:
        cursor = db.execute(
            "UPDATE atriggers_sessions SET version = ?, config = coalesce(?, config), "
            "counts = coalesce(?, counts), updated_at = ? WHERE uid = ? AND version = ?",
            (c.version, c.tasks, c.counts, time.time(), uid, expected),
        )
    if cursor.rowcount != 1:
        return False
    if c.triggers:
        db.executemany(_UPSERT_TRIGGER, [(uid, name, kwargs) for name, kwargs in c.triggers])
    if c.instances:
        # The session is at the version `c` was computed from, so every instance
        # it changes without reindexing is there with the status it keeps.
        kept = not reindex and (
            db.executemany(
                _UPDATE_BODY, [(body, uid, name, status) for name, _, status, _, body in c.instances]
            ).rowcount
            == len(c.instances)
        )
        if not kept:
            db.executemany(_UPSERT_INSTANCE, [(uid, *row) for row in c.instances])
    for key, due in c.due:
        if due is None:
            db.execute("DELETE FROM atriggers_due WHERE uid = ? AND key = ?", (uid, key))
        else:
            db.execute(_UPSERT_DUE, (uid, key, due.at, due.owner, due.payload))
    return True


@dataclass(slots=True)
class _Write:
    uid: str
    expected: int
    change: EncodedChange
    #: `Change.reindex` of the change encoded.
    reindex: bool
    reapply: Reapply | None
    decode: Callable[[str, _Rows], SessionState]

    writes = True

    def __call__(self, db: sqlite3.Connection) -> _Conflict | _Reapplied | _Refused | None:
        if _write_change(db, self.uid, self.expected, self.change, self.reindex):
            return None
        # Another process wrote first. We hold the database's write lock, so the
        # current state cannot move: re-apply the operation to it right here.
        # The instances the operation changed are the ones it may have asked for
        # by name (a resolved instance is not in the working view otherwise).
        names = [row[0] for row in self.change.instances]
        rows = _select_session(db, self.uid, names, False)
        if self.reapply is None:
            return _Conflict(rows)
        current = self.decode(self.uid, rows)
        try:
            change = self.reapply(current)
        except Exception as exc:  # noqa: BLE001 - belongs to this operation only
            return _Refused(exc)
        if change is not None:
            written = _write_change(db, self.uid, current.version, encode_change(change), change.reindex)
            assert written, "the session cannot change while we hold the write lock"
        return _Reapplied(change)


_CLAIMABLE = "SELECT d.uid, d.key, d.at, d.owner, d.payload, o.expires_at FROM atriggers_due d "


@dataclass(slots=True)
class _Claim:
    now: float
    until: float
    limit: int
    keys: Collection[tuple[str, str]] | None
    #: Real time, for owners' leases.
    alive_until: float

    writes = True

    def __call__(self, db: sqlite3.Connection) -> list[DueEntry]:
        rows: list[tuple[str, str, float | None, str | None, str | None, float | None]]
        if self.keys is not None:
            rows = []
            for uid, key in self.keys:
                row = db.execute(
                    _CLAIMABLE
                    + "LEFT JOIN atriggers_owners o ON o.owner = d.owner WHERE d.uid = ? AND d.key = ?",
                    (uid, key),
                ).fetchone()
                if row is not None and (
                    (row[2] is not None and row[2] <= self.now)
                    or (row[5] is not None and row[5] <= self.alive_until)
                ):
                    rows.append(row)
        else:
            # What lapsed owners held, then what is due by time: both through indexes.
            rows = db.execute(
                _CLAIMABLE + "JOIN atriggers_owners o ON o.owner = d.owner WHERE o.expires_at <= ? LIMIT ?",
                (self.alive_until, self.limit),
            ).fetchall()
            if len(rows) < self.limit:
                rows += db.execute(
                    _CLAIMABLE + "LEFT JOIN atriggers_owners o ON o.owner = d.owner "
                    "WHERE d.at <= ? ORDER BY d.at LIMIT ?",
                    (self.now, self.limit),
                ).fetchall()
            db.execute(
                "DELETE FROM atriggers_owners WHERE expires_at <= ? AND NOT EXISTS "
                "(SELECT 1 FROM atriggers_due WHERE atriggers_due.owner = atriggers_owners.owner)",
                (self.alive_until - OWNER_RETENTION,),
            )
        claimed: dict[tuple[str, str], DueEntry] = {}
        for uid, key, at, owner, payload, expires in rows:
            if (uid, key) not in claimed and len(claimed) < self.limit:
                lapsed = expires is not None and expires <= self.alive_until
                claimed[uid, key] = DueEntry(uid, key, at, owner, payload, lapsed)
        # Claimed: due again at `until` unless handled, and no longer bound to
        # its owner (the claimer answers for it now).
        db.executemany(
            "UPDATE atriggers_due SET at = ?, owner = NULL WHERE uid = ? AND key = ?",
            [(self.until, uid, key) for uid, key in claimed],
        )
        return list(claimed.values())


@dataclass(slots=True)
class _Owner:
    owner: str
    expires_at: float
    now: float
    create: bool

    writes = True

    def __call__(self, db: sqlite3.Connection) -> bool:
        if self.create:
            db.execute(
                "INSERT OR REPLACE INTO atriggers_owners (owner, expires_at) VALUES (?, ?)",
                (self.owner, self.expires_at),
            )
            return True
        cursor = db.execute(
            "UPDATE atriggers_owners SET expires_at = ? WHERE owner = ? AND expires_at > ?",
            (self.expires_at, self.owner, self.now),
        )
        return cursor.rowcount == 1


def _holding(flag: str, column: str) -> str:
    """SQL: the session `column` names holds an instance with `flag`'s statuses.
    (Literal statuses, so that the planner uses the (status, uid) index: this
    backend's session index is its instances table, nothing more to write.)"""
    statuses = ", ".join(f"'{status}'" for status in FLAG_STATUSES[flag])
    return f"EXISTS (SELECT 1 FROM atriggers_instances f WHERE f.status IN ({statuses}) AND f.uid = {column})"


@dataclass(slots=True)
class _ListIndex:
    """One page of sessions matching a filter, with what their summaries need.

    The first flag asked for picks the candidates from the instances' (status,
    uid) index in uid order (only sessions holding such an instance are read);
    without one, the sessions table does. Other conditions are checked on each
    candidate; the task filter reads the candidate's configuration.
    """

    filter: SessionFilter
    after: str | None
    limit: int

    writes = False

    def __call__(self, db: sqlite3.Connection) -> _Listed:
        wanted = self.filter
        flags = [flag for flag in FLAG_STATUSES if getattr(wanted, flag)]
        if flags:
            statuses = ", ".join(f"'{status}'" for status in FLAG_STATUSES[flags[0]])
            source = f"SELECT DISTINCT uid FROM atriggers_instances WHERE status IN ({statuses})"
            flags = flags[1:]
        else:
            source = "SELECT uid FROM atriggers_sessions WHERE 1"
        where: list[str] = []
        params: list[Any] = []
        if wanted.prefix:
            where += ["uid >= ?", "uid < ?"]
            params += [wanted.prefix, wanted.prefix + "\U0010ffff"]
        if self.after is not None:
            where.append("uid > ?")
            params.append(self.after)
        where += [_holding(flag, "c.uid") for flag in flags]
        if wanted.task is not None:
            where.append(
                "EXISTS (SELECT 1 FROM atriggers_sessions t, json_each(t.config) "
                "WHERE t.uid = c.uid AND json_each.key = ?)"
            )
            params.append(wanted.task)
        conditions = "".join(f" AND {condition}" for condition in where)
        uids = [
            uid
            for (uid,) in db.execute(
                f"SELECT uid FROM ({source}) c WHERE 1{conditions} ORDER BY uid LIMIT ?",
                (*params, self.limit + 1),
            )
        ]
        page = uids[: self.limit]
        marks = ", ".join("?" * len(page))
        sessions = db.execute(
            f"SELECT uid, version, config, counts, updated_at FROM atriggers_sessions WHERE uid IN ({marks})",
            page,
        ).fetchall()
        unresolved: dict[str, dict[str, int]] = {}
        for uid, status, n in db.execute(
            "SELECT uid, status, count(*) FROM atriggers_instances "
            f"WHERE resolved = 0 AND uid IN ({marks}) GROUP BY uid, status",
            page,
        ):
            unresolved.setdefault(uid, {})[status] = n
        return _Listed(sorted(sessions), unresolved, more=len(uids) > self.limit)


@dataclass(frozen=True, slots=True)
class _Listed:
    #: (uid, version, config, counts, updated_at) of each session listed, by uid.
    sessions: list[tuple[str, int, str, str, float]]
    #: uid -> unresolved instances by status.
    unresolved: dict[str, dict[str, int]]
    #: Whether more sessions match after the last one listed.
    more: bool


@dataclass(slots=True)
class _CountIndex:
    writes = False

    def __call__(self, db: sqlite3.Connection) -> SessionCounts:
        (total,) = db.execute("SELECT count(*) FROM atriggers_sessions").fetchone()
        flags = {}
        for flag, statuses in FLAG_STATUSES.items():
            marks = ", ".join(f"'{status}'" for status in statuses)
            query = f"SELECT count(DISTINCT uid) FROM atriggers_instances WHERE status IN ({marks})"
            flags[flag] = db.execute(query).fetchone()[0]
        return SessionCounts(sessions=total, **flags)


@dataclass(slots=True)
class _ListUids:
    writes = False

    def __call__(self, db: sqlite3.Connection) -> list[str]:
        return [uid for (uid,) in db.execute("SELECT uid FROM atriggers_sessions ORDER BY uid")]


_Op = _Read | _Write | _Claim | _Owner | _ListIndex | _CountIndex | _ListUids


class _Opened:
    """The database file a storage opened, as its batches need it in the thread.

    Calling it refuses to write when the file was deleted or replaced since it
    was opened: the writes would land in a file nobody will read again.
    """

    __slots__ = ("file", "path", "patience", "shown")

    def __init__(self, path: Path, patience: float) -> None:
        #: The file SQLite opened (resolved now: a later chdir must not change it).
        self.path = path.resolve()
        self.file = _identity(self.path)
        #: The path as the application gave it, for messages.
        self.shown = path
        #: Seconds a batch waits for another connection's lock before failing.
        self.patience = patience

    def __call__(self) -> None:
        if _identity(self.path) != self.file:
            raise StorageError(
                f"the SQLite database {str(self.shown)!r} was deleted or replaced while open: "
                f"nothing was written; reopen the storage"
            )


def _run_batch(db: sqlite3.Connection, ops: list[Op], same_file: _Opened) -> list[Any]:
    """The batch's operations in one transaction (see `run_batch`), waiting for
    another connection's lock as long as the storage's `timeout` says."""
    return run_batch(db, ops, same_file, same_file.patience)


def _run_alone(db: sqlite3.Connection, op: Op, same_file: _Opened) -> Outcome | None:
    """A lone write, at once, on the event loop (see `run_alone`)."""
    return run_alone(db, op, same_file)


def _identity(path: Path) -> tuple[int, int] | None:
    """Which file `path` is (device, inode), or None if there is none."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _setup(db: sqlite3.Connection, synchronous: str) -> None:
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(f"PRAGMA synchronous = {synchronous}")
    db.execute("BEGIN IMMEDIATE")
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        ours = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'atriggers_sessions'").fetchone()
        if version == 0 and not ours:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            version = SCHEMA_VERSION
        elif not ours or (version not in _MIGRATIONS and version < SCHEMA_VERSION):
            # Another application's database, or tables of ours without the
            # version atriggers stamps on every file it sets up.
            raise StorageError(
                f"not an atriggers database (schema version {version}, "
                f"{'atriggers tables' if ours else 'no atriggers tables'}): refusing to use it"
            )
        while version < SCHEMA_VERSION:
            for statement in _MIGRATIONS[version].split(";"):
                if statement.strip():
                    db.execute(statement)
            version += 1
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"database schema version {version} is newer than this atriggers "
                f"understands ({SCHEMA_VERSION}); upgrade atriggers"
            )
        db.execute(f"PRAGMA user_version = {version}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    # From now on a lock held by another connection is waited for by
    # `run_batch`, in short steps, not by SQLite's coarse busy handler.
    db.execute("PRAGMA busy_timeout = 0")
    if synchronous in _ALONE:
        # Lone writes run on the event loop: checkpoints (which sync to disk)
        # go to the thread instead (`GroupCommit`).
        db.execute("PRAGMA wal_autocheckpoint = 0")


def _checkpoint(db: sqlite3.Connection, synchronous: str) -> None:
    # (Syncing to disk as the writes' connection would: a checkpoint syncs
    # unless synchronous is OFF.)
    db.execute(f"PRAGMA synchronous = {synchronous}")
    db.execute("PRAGMA wal_checkpoint(PASSIVE)")


#: The `synchronous` settings whose commits do not wait for the disk: a lone
#: write may then run on the event loop (see `sqlite_commit`).
_ALONE = ("NORMAL", "OFF")


class SQLiteStorage(Storage):
    """Sessions in one SQLite file (WAL mode), shareable by many processes.

    ``synchronous="NORMAL"`` (the default) is durable across application crashes;
    in WAL mode a power loss can undo the last transactions but never corrupts the
    file. Use ``"FULL"`` to survive power loss too, at a cost per commit.
    """

    scheme = "sqlite"
    reapplies_conflicts = True

    def __init__(
        self,
        path: str | Path,
        *,
        timeout: float = _DEFAULT_TIMEOUT,
        synchronous: Synchronous = "NORMAL",
        cache_size: int = 1024,
        close_timeout: float = 30.0,
        lease: float = DEFAULT_LEASE,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(cache_size=cache_size, close_timeout=close_timeout, lease=lease, clock=clock)
        if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
        self.path = Path(path)
        self.timeout = timeout
        self.synchronous = synchronous
        self._conn: aiosqlite.Connection | None = None
        #: The connection checkpointing beside the writes (opened at the first checkpoint).
        self._checkpointer: aiosqlite.Connection | None = None
        self._configs = ConfigCache()
        self._commit: GroupCommit | None = None

    @property
    def url(self) -> str:
        url = f"sqlite:///{self.path.resolve()}"
        if self.lease.duration != DEFAULT_LEASE:
            # Workers that reach the session through this URL hold its runs
            # with the same lease.
            url += f"?lease={self.lease.duration:g}"
        return url

    @classmethod
    def from_url(cls, url: str) -> SQLiteStorage:
        """``sqlite:///relative/path`` or ``sqlite:////absolute/path``, optionally
        with ``?lease=SECONDS`` (the owner lease of the processes opening it:
        silent this long, what they run or hold is recovered elsewhere; default
        30). The path cannot hold a ``?``."""
        prefix = "sqlite:///"
        path, _, query = url.partition("?")
        if not path.startswith(prefix) or path == prefix:
            raise ValueError(
                f"SQLite URLs look like sqlite:///relative/path or sqlite:////absolute/path, not {url!r}"
            )
        lease = DEFAULT_LEASE
        for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
            if key != "lease":
                raise ValueError(f"unknown parameter {key!r} in SQLite URL {url!r} (known: lease)")
            lease = lease_param(url, value)
        return cls(path[len(prefix) :], lease=lease)

    # -- lifecycle ------------------------------------------------------------------

    async def exists(self) -> bool:
        return self.path.exists()

    async def connect(self) -> None:
        if not self.path.parent.is_dir():
            # Checked here: a failed aiosqlite.connect can leave its thread racing
            # the event loop's shutdown.
            raise StorageError(
                f"cannot open SQLite database {str(self.path)!r}: "
                f"directory {str(self.path.parent)!r} does not exist"
            )
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one per batch.
            # check_same_thread=False: a lone write may run on the event loop
            # while aiosqlite's thread is idle (`GroupCommit` sees to it).
            conn = await aiosqlite.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open SQLite database {str(self.path)!r}: {exc}") from exc
        try:
            await self._call(conn, _setup, self.synchronous)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        opened = _Opened(self.path, self.timeout)
        # `_run_batch` and `_run_alone` looked up at each call: a profiler may wrap them.
        alone = self.synchronous in _ALONE
        self._commit = GroupCommit(
            conn,
            lambda db, ops: _run_batch(db, ops, opened),
            (lambda db, op: _run_alone(db, op, opened)) if alone else None,
            (lambda: self._checkpoint_beside(opened)) if alone else None,
        )

    async def _checkpoint_beside(self, opened: _Opened) -> None:
        """A PASSIVE checkpoint on a connection of its own (see `sqlite_commit`)."""
        conn = self._checkpointer
        if conn is None:
            # mode=rw: a file deleted since it was opened is not created again.
            # (`disconnect` waits for a checkpoint before it closes anything.)
            conn = self._checkpointer = await aiosqlite.connect(
                f"{opened.path.as_uri()}?mode=rw", uri=True, timeout=self.timeout, isolation_level=None
            )
        await self._call(conn, _checkpoint, self.synchronous)

    async def disconnect(self) -> None:
        if self._commit is not None:
            await self._commit.wait_idle()
        if self._checkpointer is not None:
            checkpointer, self._checkpointer = self._checkpointer, None
            await checkpointer.close()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    # -- reads and writes -------------------------------------------------------------

    async def load(self, uid: str, names: Collection[str] = ()) -> SessionState:
        rows = await self._submit(_Read(uid, tuple(names)))
        return self._decode(uid, rows, complete=False)

    async def load_all(self, uid: str) -> SessionState:
        rows = await self._submit(_Read(uid, (), everything=True))
        return self._decode(uid, rows, complete=True)

    async def store(self, uid: str, expected_version: int, change: Change) -> None:
        await self.store_or_reapply(uid, expected_version, change, None)

    async def store_or_reapply(
        self, uid: str, expected_version: int, change: Change, reapply: Reapply | None
    ) -> Change | None:
        op = _Write(
            uid, expected_version, encode_change(change), change.reindex, reapply, self._decode_working
        )
        outcome = await self._submit(op)
        if outcome is None:
            return change
        if isinstance(outcome, _Reapplied):
            return outcome.change
        if isinstance(outcome, _Refused):
            raise outcome.error
        raise VersionConflict(uid, expected_version, self._decode_working(uid, outcome.rows))

    def _decode_working(self, uid: str, rows: _Rows) -> SessionState:
        return self._decode(uid, rows, complete=False)

    async def claim_due(
        self,
        now: float,
        until: float,
        limit: int = 100,
        keys: Collection[tuple[str, str]] | None = None,
    ) -> list[DueEntry]:
        claimed: list[DueEntry] = await self._submit(_Claim(now, until, limit, keys, time.time()))
        return claimed

    async def renew_owner(self, owner: str, expires_at: float, *, create: bool = False) -> bool:
        renewed: bool = await self._submit(_Owner(owner, expires_at, time.time(), create))
        return renewed

    async def release_owner(self, owner: str) -> None:
        await self._submit(_Owner(owner, float("-inf"), float("inf"), True))

    async def list_sessions(self) -> list[str]:
        uids: list[str] = await self._submit(_ListUids())
        return uids

    async def list_summaries(
        self, filter: SessionFilter | None = None, *, after: str | None = None, limit: int = 50
    ) -> SessionPage:
        check_page(after, limit)
        listed: _Listed = await self._submit(_ListIndex(filter or SessionFilter(), after, limit))
        found: list[SessionSummary] = []
        for uid, version, config, counts, updated in listed.sessions:
            try:
                tasks = json.loads(config)
                total = sum(json.loads(counts).values())
                if not isinstance(tasks, dict) or not isinstance(total, int):
                    raise TypeError("not a configuration and instance counts")
            except (ValueError, TypeError, AttributeError) as exc:
                raise corrupt(uid, "session header", exc) from exc
            found.append(build_summary(uid, version, listed.unresolved.get(uid, {}), total, tasks, updated))
        return SessionPage(tuple(found), found[-1].uid if listed.more else None)

    async def count_sessions(self) -> SessionCounts:
        counts: SessionCounts = await self._submit(_CountIndex())
        return counts

    def _decode(self, uid: str, rows: _Rows, *, complete: bool) -> SessionState:
        header, triggers, instances = rows
        if header is None:
            return SessionState(uid=uid, complete=complete)
        version, config, counts = header
        return decode_state(
            uid,
            version,
            decode_tasks(self._configs, config, uid),
            counts,
            triggers,
            instances,
            complete=complete,
        )

    # -- group commit -------------------------------------------------------------------

    def _require(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise StorageError(
                f"{self!r} is not open: use `async with SQLiteStorage(...)` or `await storage.open()`"
            )
        return self._conn

    async def _submit(self, op: _Op) -> Any:
        self._require()
        assert self._commit is not None
        return await self._commit.submit(op)

    @staticmethod
    async def _call(conn: aiosqlite.Connection, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(sqlite3_connection, *args)` in aiosqlite's thread, outside the
        group commit (setting the connection up): one hand-off."""
        return await call(conn, fn, *args)
