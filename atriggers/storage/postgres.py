"""PostgreSQL storage through asyncpg: sessions shared by many machines.

Install with ``pip install 'atriggers[postgres]'``. Tested with PostgreSQL 15;
uses plain tables, partial indexes and PL/pgSQL functions, nothing newer than
PostgreSQL 9.5 (``ON CONFLICT``, ``SKIP LOCKED``).

Every operation is one statement, so one round trip: a server-side function
does the whole of it in the statement's transaction. A write checks the
session's version first (compare-and-swap) and then writes only the header,
triggers, instances and due entries the change touched; a read returns the
header, the triggers and only the unresolved instances (plus those asked for by
name), from one snapshot. asyncpg prepares each statement once per connection
and reuses it, so a steady fire costs one Bind/Execute exchange.

Tables, in the storage's PostgreSQL schema (``public`` unless ``?schema=``)::

    atriggers_schema     the schema version (migrations, like SQLite's user_version)
    atriggers_sessions   uid -> version, config, counts, updated_at, and the
                         session index: summary, failed, stuck, waiting, tasks
    atriggers_triggers   (uid, name) -> latest kwargs (JSON text)
    atriggers_instances  (uid, name) -> task, status, resolved, body (JSON text)
    atriggers_due        (uid, key) -> at, owner, payload: the due index
    atriggers_owners     owner -> expires_at: the owners' leases
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
from collections.abc import Collection, Iterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

try:
    import asyncpg  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "PostgresStorage needs asyncpg: install the extra with `pip install 'atriggers[postgres]'`"
    ) from exc

from ..clock import Clock
from ..due import DueEntry
from ..errors import InvalidInput, StorageError
from ..state import Change, SessionState
from .base import LOCK_AFTER_CONFLICTS, Reapply, Storage, VersionConflict, mask_url, with_params
from .codec import ConfigCache, corrupt, decode_state, decode_tasks, encode_change
from .index import FLAGS, SessionCounts, SessionFilter, SessionPage, SessionSummary, check_page, reindexed
from .lease import DEFAULT_LEASE, OWNER_RETENTION, lease_param

__all__ = ["DEFAULT_SCHEMA", "SCHEMA_VERSION", "PostgresStorage"]

DEFAULT_SCHEMA = "public"

#: Stored in ``atriggers_schema``; later releases migrate older schemas.
SCHEMA_VERSION = 1

# `{s}` is the quoted PostgreSQL schema. Keys and names are collated "C" (byte
# order, which for UTF-8 is code point order: `list_sessions` sorts like Python).
_TABLES = """
CREATE TABLE {s}.atriggers_schema (
    version  integer NOT NULL
);
CREATE TABLE {s}.atriggers_sessions (
    uid         text COLLATE "C" PRIMARY KEY,
    version     bigint NOT NULL,
    config      text NOT NULL,
    counts      text NOT NULL,
    updated_at  double precision NOT NULL,
    -- The session index (see atriggers.storage.index): the summary (JSON) and
    -- its flags and task names, set by the write that changes them.
    summary     text,
    failed      boolean NOT NULL DEFAULT false,
    stuck       boolean NOT NULL DEFAULT false,
    waiting     boolean NOT NULL DEFAULT false,
    tasks       text[] NOT NULL DEFAULT '{{}}'
);
-- One partial index per flag: listing the few failed sessions among many reads only those.
CREATE INDEX atriggers_sessions_failed ON {s}.atriggers_sessions (uid) WHERE failed;
CREATE INDEX atriggers_sessions_stuck ON {s}.atriggers_sessions (uid) WHERE stuck;
CREATE INDEX atriggers_sessions_waiting ON {s}.atriggers_sessions (uid) WHERE waiting;
CREATE TABLE {s}.atriggers_triggers (
    uid     text COLLATE "C" NOT NULL,
    name    text COLLATE "C" NOT NULL,
    kwargs  text NOT NULL,
    PRIMARY KEY (uid, name)
);
CREATE TABLE {s}.atriggers_instances (
    uid       text COLLATE "C" NOT NULL,
    name      text COLLATE "C" NOT NULL,
    task      text NOT NULL,
    status    text NOT NULL,
    resolved  boolean NOT NULL,
    body      text NOT NULL,
    PRIMARY KEY (uid, name)
);
-- A fire reads only unresolved instances: its cost must not grow with history.
CREATE INDEX atriggers_instances_unresolved ON {s}.atriggers_instances (uid) WHERE NOT resolved;
CREATE INDEX atriggers_instances_status ON {s}.atriggers_instances (status, uid);
-- The due index (see atriggers.due): what must happen later, and who holds it.
CREATE TABLE {s}.atriggers_due (
    uid      text COLLATE "C" NOT NULL,
    key      text COLLATE "C" NOT NULL,
    at       double precision,
    owner    text COLLATE "C",
    payload  text,
    PRIMARY KEY (uid, key)
);
-- A sweep reads what is due and what lapsed owners held: O(due), not O(sessions).
CREATE INDEX atriggers_due_at ON {s}.atriggers_due (at) WHERE at IS NOT NULL;
CREATE INDEX atriggers_due_owner ON {s}.atriggers_due (owner) WHERE owner IS NOT NULL;
CREATE TABLE {s}.atriggers_owners (
    owner       text COLLATE "C" PRIMARY KEY,
    expires_at  double precision NOT NULL
);
"""

# The working view of a session (no row: the session does not exist). STABLE:
# every statement in it reads the snapshot of the statement calling it, so the
# parts always belong to one version.
_READ = """
CREATE FUNCTION {s}.atriggers_read(p_uid text, p_everything boolean, p_names text[])
RETURNS TABLE (r_version bigint, r_config text, r_counts text, r_trigger_names text[],
               r_trigger_kwargs text[], r_names text[], r_bodies text[])
LANGUAGE plpgsql STABLE AS $$
BEGIN
    SELECT s.version, s.config, s.counts INTO r_version, r_config, r_counts
        FROM {s}.atriggers_sessions s WHERE s.uid = p_uid;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT array_agg(t.name), array_agg(t.kwargs) INTO r_trigger_names, r_trigger_kwargs
        FROM {s}.atriggers_triggers t WHERE t.uid = p_uid;
    IF p_everything THEN
        SELECT array_agg(i.name), array_agg(i.body) INTO r_names, r_bodies
            FROM {s}.atriggers_instances i WHERE i.uid = p_uid;
    ELSE
        -- Two index scans: the partial index of unresolved instances, and the
        -- primary key for the resolved ones asked for by name.
        SELECT array_agg(w.name), array_agg(w.body) INTO r_names, r_bodies FROM (
            SELECT i.name, i.body FROM {s}.atriggers_instances i
                WHERE i.uid = p_uid AND NOT i.resolved
            UNION ALL
            SELECT i.name, i.body FROM {s}.atriggers_instances i
                WHERE i.uid = p_uid AND i.name = ANY(p_names) AND i.resolved
        ) w;
    END IF;
    RETURN NEXT;
END
$$;
"""

# Compare-and-swap and the incremental write, in one statement. Returns one row:
# r_ok, and on a conflict the session's current working view (r_version NULL:
# the session does not exist).
_STORE = """
CREATE FUNCTION {s}.atriggers_store(
    p_uid text, p_expected bigint, p_version bigint, p_config text, p_counts text, p_now double precision,
    p_trigger_names text[], p_trigger_kwargs text[],
    p_names text[], p_tasks text[], p_statuses text[], p_resolved boolean[], p_bodies text[],
    p_due_keys text[], p_due_at double precision[], p_due_owners text[], p_due_payloads text[],
    p_due_gone text[],
    p_summary text, p_failed boolean, p_stuck boolean, p_waiting boolean, p_task_names text[])
RETURNS TABLE (r_ok boolean, r_version bigint, r_config text, r_counts text, r_trigger_names text[],
               r_trigger_kwargs text[], r_names text[], r_bodies text[])
LANGUAGE plpgsql AS $$
BEGIN
    IF p_expected = 0 THEN
        INSERT INTO {s}.atriggers_sessions AS s
                (uid, version, config, counts, updated_at, summary, failed, stuck, waiting, tasks)
            VALUES (p_uid, p_version, coalesce(p_config, '{{}}'), coalesce(p_counts, '{{}}'), p_now,
                    p_summary, coalesce(p_failed, false), coalesce(p_stuck, false),
                    coalesce(p_waiting, false), coalesce(p_task_names, '{{}}'))
            ON CONFLICT (uid) DO NOTHING;
    ELSE
        -- The session index changes with this write (p_summary not NULL): in
        -- the same row, the same statement.
        UPDATE {s}.atriggers_sessions s SET version = p_version, config = coalesce(p_config, s.config),
                counts = coalesce(p_counts, s.counts), updated_at = p_now,
                summary = coalesce(p_summary, s.summary), failed = coalesce(p_failed, s.failed),
                stuck = coalesce(p_stuck, s.stuck), waiting = coalesce(p_waiting, s.waiting),
                tasks = coalesce(p_task_names, s.tasks)
            WHERE s.uid = p_uid AND s.version = p_expected;
    END IF;
    IF NOT FOUND THEN
        -- Another writer got there first: nothing is written, and the caller
        -- gets the current state (a new snapshot: this function is VOLATILE).
        r_ok := false;
        RETURN QUERY SELECT false, r.* FROM {s}.atriggers_read(p_uid, false, p_names) r;
        IF NOT FOUND THEN
            RETURN NEXT;
        END IF;
        RETURN;
    END IF;
    IF cardinality(p_trigger_names) > 0 THEN
        INSERT INTO {s}.atriggers_triggers AS t (uid, name, kwargs)
            SELECT p_uid, u.name, u.kwargs FROM unnest(p_trigger_names, p_trigger_kwargs) AS u(name, kwargs)
            ON CONFLICT (uid, name) DO UPDATE SET kwargs = excluded.kwargs;
    END IF;
    IF cardinality(p_names) > 0 THEN
        INSERT INTO {s}.atriggers_instances AS i (uid, name, task, status, resolved, body)
            SELECT p_uid, u.name, u.task, u.status, u.resolved, u.body
                FROM unnest(p_names, p_tasks, p_statuses, p_resolved, p_bodies)
                    AS u(name, task, status, resolved, body)
            ON CONFLICT (uid, name) DO UPDATE SET task = excluded.task, status = excluded.status,
                resolved = excluded.resolved, body = excluded.body;
    END IF;
    IF cardinality(p_due_gone) > 0 THEN
        DELETE FROM {s}.atriggers_due d WHERE d.uid = p_uid AND d.key = ANY(p_due_gone);
    END IF;
    IF cardinality(p_due_keys) > 0 THEN
        INSERT INTO {s}.atriggers_due AS d (uid, key, at, owner, payload)
            SELECT p_uid, u.key, u.at, u.owner, u.payload
                FROM unnest(p_due_keys, p_due_at, p_due_owners, p_due_payloads) AS u(key, at, owner, payload)
            ON CONFLICT (uid, key) DO UPDATE SET at = excluded.at, owner = excluded.owner,
                payload = excluded.payload;
    END IF;
    r_ok := true;
    RETURN NEXT;
END
$$;
"""

# The working view like atriggers_read, after locking the session's row until
# the transaction ends: the locked path of a write re-applied after conflicts.
# VOLATILE, so the read takes its snapshot after the lock is granted.
_LOCK_READ = """
CREATE FUNCTION {s}.atriggers_lock_read(p_uid text, p_names text[])
RETURNS TABLE (r_version bigint, r_config text, r_counts text, r_trigger_names text[],
               r_trigger_kwargs text[], r_names text[], r_bodies text[])
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM {s}.atriggers_sessions s WHERE s.uid = p_uid FOR UPDATE;
    RETURN QUERY SELECT * FROM {s}.atriggers_read(p_uid, false, p_names);
END
$$;
"""

# Claim due entries: what lapsed owners held, then what is due by time, oldest
# first. Rows another claimer (or a write) holds locked are skipped, not waited
# for: any number of sweepers work side by side, each entry claimed once.
# p_uids/p_keys (not NULL): only those entries, if due.
_CLAIM = """
CREATE FUNCTION {s}.atriggers_claim(
    p_now double precision, p_until double precision, p_limit integer, p_alive double precision,
    p_forget double precision, p_uids text[], p_keys text[])
RETURNS TABLE (r_uid text, r_key text, r_at double precision, r_owner text, r_payload text, r_lapsed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    e record;
    n integer := 0;
BEGIN
    IF p_uids IS NOT NULL THEN
        FOR e IN
            SELECT d.uid, d.key, d.at, d.owner, d.payload, coalesce(o.expires_at <= p_alive, false) AS lapsed
                FROM (SELECT DISTINCT w.uid, w.key FROM unnest(p_uids, p_keys) AS w(uid, key)) w
                JOIN {s}.atriggers_due d ON d.uid = w.uid AND d.key = w.key
                LEFT JOIN {s}.atriggers_owners o ON o.owner = d.owner
                WHERE d.at <= p_now OR o.expires_at <= p_alive
                ORDER BY d.at NULLS FIRST
                LIMIT p_limit
                FOR UPDATE OF d SKIP LOCKED
        LOOP
            UPDATE {s}.atriggers_due SET at = p_until, owner = NULL WHERE uid = e.uid AND key = e.key;
            RETURN QUERY SELECT e.uid, e.key, e.at, e.owner, e.payload, e.lapsed;
        END LOOP;
        RETURN;
    END IF;
    FOR e IN
        SELECT d.uid, d.key, d.at, d.owner, d.payload
            FROM {s}.atriggers_due d JOIN {s}.atriggers_owners o ON o.owner = d.owner
            WHERE o.expires_at <= p_alive
            LIMIT p_limit
            FOR UPDATE OF d SKIP LOCKED
    LOOP
        UPDATE {s}.atriggers_due SET at = p_until, owner = NULL WHERE uid = e.uid AND key = e.key;
        n := n + 1;
        RETURN QUERY SELECT e.uid, e.key, e.at, e.owner, e.payload, true;
    END LOOP;
    IF n < p_limit THEN
        -- Entries claimed just above are due at p_until now: not picked twice.
        FOR e IN
            SELECT d.uid, d.key, d.at, d.owner, d.payload, coalesce(o.expires_at <= p_alive, false) AS lapsed
                FROM {s}.atriggers_due d LEFT JOIN {s}.atriggers_owners o ON o.owner = d.owner
                WHERE d.at <= p_now
                ORDER BY d.at
                LIMIT p_limit - n
                FOR UPDATE OF d SKIP LOCKED
        LOOP
            UPDATE {s}.atriggers_due SET at = p_until, owner = NULL WHERE uid = e.uid AND key = e.key;
            RETURN QUERY SELECT e.uid, e.key, e.at, e.owner, e.payload, e.lapsed;
        END LOOP;
    END IF;
    -- Owners that lapsed long ago and hold nothing are forgotten.
    DELETE FROM {s}.atriggers_owners o WHERE o.owner IN (
        SELECT f.owner FROM {s}.atriggers_owners f
            WHERE f.expires_at <= p_forget
              AND NOT EXISTS (SELECT 1 FROM {s}.atriggers_due d WHERE d.owner = f.owner)
            LIMIT 1000
            FOR UPDATE SKIP LOCKED);
END
$$;
"""

# Register (p_create) or renew an owner's lease; renewing one that is unknown or
# already lapsed changes nothing and returns false.
_OWNER = """
CREATE FUNCTION {s}.atriggers_owner(p_owner text, p_expires double precision, p_now double precision,
                                    p_create boolean)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF p_create THEN
        INSERT INTO {s}.atriggers_owners AS o (owner, expires_at) VALUES (p_owner, p_expires)
            ON CONFLICT (owner) DO UPDATE SET expires_at = excluded.expires_at;
        RETURN true;
    END IF;
    UPDATE {s}.atriggers_owners o SET expires_at = p_expires
        WHERE o.owner = p_owner AND o.expires_at > p_now;
    RETURN FOUND;
END
$$;
"""

_SCHEMA = [_TABLES, _READ, _STORE, _LOCK_READ, _CLAIM, _OWNER]

#: schema version -> statements that bring a schema from that version to the next
#: (`{s}` is the schema). To change the schema in a release: bump SCHEMA_VERSION,
#: add the statements here (new tables and columns; a function whose parameters
#: change is dropped and created again, as `_SCHEMA` now creates it) and update
#: `_SCHEMA`, used for new schemas.
_MIGRATIONS: dict[int, list[str]] = {}


#: A session whose summary was never written (a change built without one).
_NO_SUMMARY = '{"c":{},"t":[]}'

#: Query parameters of a storage URL that are ours, not asyncpg's.
_OWN_PARAMS = ("schema", "lease", "max_connections")

_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

#: What asyncpg raises when an operation fails (the server's errors, the
#: client's, the network's; TimeoutError is an OSError).
_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)

#: What PostgreSQL says of text it cannot hold (a NUL character).
_DATA_ERRORS = (
    asyncpg.exceptions.CharacterNotInRepertoireError,
    asyncpg.exceptions.UntranslatableCharacterError,
)


async def _reset(connection: asyncpg.Connection) -> None:
    """What a connection needs before going back to the pool. asyncpg's default
    (``RESET ALL``, ``UNLISTEN *``, ...) costs a round trip per operation; this
    storage leaves no session state behind, only ever an aborted transaction."""
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")


class PostgresStorage(Storage):
    """Sessions in PostgreSQL, shareable by any number of processes and machines.

    ``PostgresStorage("postgresql://user:password@host:5432/db", schema="myapp")``,
    or ``open_storage("postgresql://user:password@host/db?schema=myapp")``
    (``postgres://`` too). Other query parameters go to asyncpg (``sslmode=...``).

    `schema` is the PostgreSQL schema holding the tables (give each application
    its own; it is created if missing). Each process keeps a pool of at most
    `max_connections` connections; more concurrent operations wait for a free
    one (up to `timeout` seconds, then `StorageError`). `command_timeout` bounds
    one statement.

    A write that cannot reach the server raises `StorageError` and either landed
    entirely or not at all (it is one transaction). Durability is PostgreSQL's:
    with its defaults (``fsync`` and ``synchronous_commit`` on) nothing
    acknowledged is lost, even on power loss.
    """

    scheme = "postgresql"
    reapplies_conflicts = True

    def __init__(
        self,
        url: str = "postgresql://127.0.0.1:5432/postgres",
        *,
        schema: str = DEFAULT_SCHEMA,
        max_connections: int = 10,
        timeout: float = 10.0,
        command_timeout: float | None = 30.0,
        cache_size: int = 1024,
        close_timeout: float = 30.0,
        lease: float = DEFAULT_LEASE,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(cache_size=cache_size, close_timeout=close_timeout, lease=lease, clock=clock)
        if urlsplit(url).scheme not in ("postgresql", "postgres"):
            raise ValueError(
                f"PostgreSQL URLs start with postgresql:// or postgres://, not {mask_url(url)!r}"
            )
        if not isinstance(schema, str) or not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(
                f"schema must be a PostgreSQL name of letters, digits and underscores "
                f"(not starting with a digit, at most 63), not {schema!r}"
            )
        if not isinstance(max_connections, int) or max_connections < 1:
            raise ValueError(f"max_connections must be an integer >= 1, not {max_connections!r}")
        self.postgres_url = url
        self.schema = schema
        #: Connections this storage opens at most; more concurrent operations wait.
        self.max_connections = max_connections
        self.timeout = timeout
        self.command_timeout = command_timeout
        self._pool: asyncpg.Pool | None = None
        #: uid -> how many writes in a row lost to other writers (see `store_or_reapply`).
        self._contended: dict[str, int] = {}
        self._configs = ConfigCache()
        s = f'"{schema}"'
        self._sql_load = f"SELECT * FROM {s}.atriggers_read($1, $2, $3)"
        self._sql_lock_read = f"SELECT * FROM {s}.atriggers_lock_read($1, $2)"
        self._sql_store = (
            f"SELECT * FROM {s}.atriggers_store($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, "
            "$14, $15, $16, $17, $18, $19, $20, $21, $22, $23)"
        )
        self._sql_claim = f"SELECT * FROM {s}.atriggers_claim($1, $2, $3, $4, $5, $6, $7)"
        self._sql_owner = f"SELECT {s}.atriggers_owner($1, $2, $3, $4)"
        self._sql_sessions = f"SELECT uid FROM {s}.atriggers_sessions ORDER BY uid"
        self._sql_count = f"SELECT (SELECT count(*) FROM {s}.atriggers_sessions), " + ", ".join(
            f"(SELECT count(*) FROM {s}.atriggers_sessions WHERE {flag})" for flag in FLAGS
        )

    @property
    def url(self) -> str:
        params: list[tuple[str, str]] = []
        if self.schema != DEFAULT_SCHEMA:
            params.append(("schema", self.schema))
        if self.lease.duration != DEFAULT_LEASE:
            params.append(("lease", format(self.lease.duration, "g")))
        return with_params(self.postgres_url, params)

    @classmethod
    def from_url(cls, url: str) -> PostgresStorage:
        """``postgresql://[user[:password]@]host[:port]/dbname[?schema=NAME&lease=SECONDS&...]``
        (``postgres://`` too; ``schema``: where the tables are, default
        ``public``; ``lease``: the owner lease of the processes opening it,
        default 30 s; ``max_connections``: the pool's size, default 10; other
        parameters go to asyncpg)."""
        parts = urlsplit(url)
        own: dict[str, str] = {}
        rest: list[tuple[str, str]] = []
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key in _OWN_PARAMS:
                own[key] = value
            else:
                rest.append((key, value))
        postgres_url = urlunsplit(parts._replace(query=urlencode(rest)))
        lease = lease_param(mask_url(url), own["lease"]) if "lease" in own else DEFAULT_LEASE
        options: dict[str, Any] = {}
        if "max_connections" in own:
            try:
                options["max_connections"] = int(own["max_connections"])
            except ValueError:
                raise ValueError(
                    f"max_connections in {mask_url(url)!r} must be an integer, not {own['max_connections']!r}"
                ) from None
        return cls(postgres_url, schema=own.get("schema", DEFAULT_SCHEMA), lease=lease, **options)

    def __repr__(self) -> str:
        return f"<PostgresStorage {mask_url(self.postgres_url)} schema={self.schema!r}>"

    # -- lifecycle ------------------------------------------------------------------

    async def exists(self) -> bool:
        """Whether this storage's tables are there (False: opening creates them)."""
        with self._errors("connect"):
            connection = await asyncpg.connect(self.postgres_url, timeout=self.timeout)
        try:
            with self._errors("read"):
                found = await connection.fetchval(
                    "SELECT to_regclass($1) IS NOT NULL", f'"{self.schema}".atriggers_sessions'
                )
        finally:
            await connection.close()
        return bool(found)

    async def connect(self) -> None:
        with self._errors("connect"):
            pool = await asyncpg.create_pool(
                self.postgres_url,
                min_size=1,
                max_size=self.max_connections,
                timeout=self.timeout,
                command_timeout=self.command_timeout,
                reset=_reset,
                server_settings={"application_name": "atriggers"},
            )
        try:
            with self._errors("schema setup"):
                async with pool.acquire() as connection:
                    await self._setup(connection)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def _setup(self, connection: asyncpg.Connection) -> None:
        """Create the schema, or migrate it to `SCHEMA_VERSION`, in one
        transaction that other processes opening the storage wait for."""
        s = f'"{self.schema}"'
        lock = int.from_bytes(
            hashlib.sha256(f"atriggers:{self.schema}".encode()).digest()[:8], "big", signed=True
        )
        async with connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", lock)
            if not await connection.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", self.schema):
                await connection.execute(f"CREATE SCHEMA {s}")
            ours = await connection.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{s}.atriggers_sessions")
            stamped = await connection.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{s}.atriggers_schema")
            if not ours and not stamped:
                for statement in _SCHEMA:
                    await connection.execute(statement.format(s=s))
                await connection.execute(
                    f"INSERT INTO {s}.atriggers_schema (version) VALUES ($1)", SCHEMA_VERSION
                )
                return
            version = (
                await connection.fetchval(f"SELECT max(version) FROM {s}.atriggers_schema") if stamped else 0
            )
            if (
                not ours
                or not stamped
                or version is None
                or (version < SCHEMA_VERSION and version not in _MIGRATIONS)
            ):
                # Another application's tables, or tables of ours without the
                # version atriggers stamps on every schema it sets up.
                raise StorageError(
                    f"schema {self.schema!r} of {mask_url(self.postgres_url)} does not hold atriggers "
                    f"tables of a known version (version {version}): refusing to use it"
                )
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"schema {self.schema!r} is at version {version}, newer than this atriggers "
                    f"understands ({SCHEMA_VERSION}); upgrade atriggers"
                )
            while version < SCHEMA_VERSION:
                for statement in _MIGRATIONS[version]:
                    await connection.execute(statement.format(s=s))
                version += 1
                await connection.execute(f"UPDATE {s}.atriggers_schema SET version = $1", version)

    async def disconnect(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), self.timeout)
            except _DRIVER_ERRORS:
                pool.terminate()

    # -- reads and writes -------------------------------------------------------------

    async def load(self, uid: str, names: Collection[str] = ()) -> SessionState:
        row = await self._fetchrow("read", self._sql_load, uid, False, list(names))
        return self._decode(uid, row, complete=False)

    async def load_all(self, uid: str) -> SessionState:
        row = await self._fetchrow("read", self._sql_load, uid, True, [])
        return self._decode(uid, row, complete=True)

    async def store(self, uid: str, expected_version: int, change: Change) -> None:
        row = await self._fetchrow("write", self._sql_store, *_store_args(uid, expected_version, change))
        if not row["r_ok"]:
            raise VersionConflict(uid, expected_version, self._decode(uid, row, complete=False))

    async def store_or_reapply(
        self, uid: str, expected_version: int, change: Change, reapply: Reapply | None
    ) -> Change | None:
        """Write `change`; after a conflict, re-apply the operation to the state
        the failed write returned and write that (one round trip more). A
        process whose writes to a session keep losing (its every attempt just
        too late, others out-writing it) re-applies the operation holding the
        session's row lock instead, which cannot fail: no writer starves. Not
        sooner: a lock held across round trips makes the other writers queue."""
        try:
            await self.store(uid, expected_version, change)
        except VersionConflict as conflict:
            if reapply is None or conflict.fresh is None:
                raise
            current = conflict.fresh
        else:
            self._contended.pop(uid, None)
            return change
        redo = reapply(current)
        if redo is None:
            self._contended.pop(uid, None)
            return None
        try:
            await self.store(uid, current.version, redo)
        except VersionConflict:
            lost = self._contended.get(uid, 0) + 1
            if lost < LOCK_AFTER_CONFLICTS:
                self._contended[uid] = lost
                raise  # the manager retries, after a random pause
        else:
            self._contended.pop(uid, None)
            return redo
        self._contended.pop(uid, None)
        names = list(dict.fromkeys(i.name for i in (*change.instances, *redo.instances)))
        return await self._reapply_locked(uid, names, reapply)

    async def _reapply_locked(self, uid: str, names: list[str], reapply: Reapply) -> Change | None:
        pool = self._require()
        with self._errors("write"):
            async with pool.acquire(timeout=self.timeout) as connection:
                try:
                    async with connection.transaction():
                        row = await connection.fetchrow(self._sql_lock_read, uid, names)
                        current = self._decode(uid, row, complete=False)
                        # Exceptions of `reapply` roll the transaction back.
                        redo = reapply(current)
                        if redo is None:
                            return None
                        args = _store_args(uid, current.version, redo)
                        row = await connection.fetchrow(self._sql_store, *args)
                        if not row["r_ok"]:
                            # Only when the session did not exist yet: nothing to lock.
                            raise VersionConflict(
                                uid, current.version, self._decode(uid, row, complete=False)
                            )
                except asyncpg.InternalClientError:
                    connection.terminate()
                    raise
        return redo

    async def claim_due(
        self,
        now: float,
        until: float,
        limit: int = 100,
        keys: Collection[tuple[str, str]] | None = None,
    ) -> list[DueEntry]:
        uids: list[str] | None = None
        names: list[str] | None = None
        if keys is not None:
            if not keys:
                return []
            uids = [uid for uid, _ in keys]
            names = [key for _, key in keys]
        alive = time.time()
        rows = await self._fetch(
            "claim of due entries",
            self._sql_claim,
            now,
            until,
            limit,
            alive,
            alive - OWNER_RETENTION,
            uids,
            names,
        )
        return [
            DueEntry(
                row["r_uid"],
                row["r_key"],
                row["r_at"],
                row["r_owner"],
                row["r_payload"],
                bool(row["r_lapsed"]),
            )
            for row in rows
        ]

    async def renew_owner(self, owner: str, expires_at: float, *, create: bool = False) -> bool:
        row = await self._fetchrow("owner lease", self._sql_owner, owner, expires_at, time.time(), create)
        return row is not None and bool(row[0])

    async def release_owner(self, owner: str) -> None:
        await self._fetchrow("owner release", self._sql_owner, owner, float("-inf"), float("inf"), True)

    async def list_sessions(self) -> list[str]:
        rows = await self._fetch("list of sessions", self._sql_sessions)
        return [row[0] for row in rows]

    async def list_summaries(
        self, filter: SessionFilter | None = None, *, after: str | None = None, limit: int = 50
    ) -> SessionPage:
        check_page(after, limit)
        wanted = filter or SessionFilter()
        # One statement per shape of filter (asyncpg prepares each once): the
        # flags are literal so that the planner walks the flag's partial index.
        where = ["uid > $1"]
        args: list[Any] = [after if after is not None and after >= wanted.prefix else wanted.prefix]
        if after is None or after < wanted.prefix:
            where[0] = "uid >= $1"
        if wanted.prefix:
            # Uids sort by byte ("C"): U+10FFFF after every other character.
            args.append(wanted.prefix + "\U0010ffff")
            where.append(f"uid < ${len(args)}")
        where += [flag for flag in FLAGS if getattr(wanted, flag)]
        if wanted.task is not None:
            args.append(wanted.task)
            where.append(f"${len(args)} = ANY(tasks)")
        args.append(limit + 1)
        query = (
            f"SELECT uid, coalesce(summary, '{_NO_SUMMARY}'), version, updated_at "
            f'FROM "{self.schema}".atriggers_sessions WHERE {" AND ".join(where)} '
            f"ORDER BY uid LIMIT ${len(args)}"
        )
        rows = await self._fetch("index read", query, *args)
        found: list[SessionSummary] = []
        for uid, text, version, updated in rows[:limit]:
            try:
                summary = SessionSummary.from_json(uid, text, version, updated)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise corrupt(uid, "session index entry", exc) from exc
            if wanted.matches(summary):
                found.append(summary)
        more = len(rows) > limit
        return SessionPage(tuple(found), rows[limit - 1][0] if more else None)

    async def count_sessions(self) -> SessionCounts:
        row = await self._fetchrow("index count", self._sql_count)
        return SessionCounts(*(int(n) for n in row))

    def _decode(self, uid: str, row: Any, *, complete: bool) -> SessionState:
        if row is None or row["r_version"] is None:
            return SessionState(uid=uid, complete=complete)
        return decode_state(
            uid,
            row["r_version"],
            decode_tasks(self._configs, row["r_config"], uid),
            row["r_counts"],
            _pairs(row["r_trigger_names"], row["r_trigger_kwargs"]),
            _pairs(row["r_names"], row["r_bodies"]),
            complete=complete,
        )

    # -- plumbing: the one place driver errors are translated ------------------------------

    def _require(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StorageError(
                f"{self!r} is not open: use `async with PostgresStorage(...)` or `await storage.open()`"
            )
        return self._pool

    async def _fetchrow(self, what: str, query: str, *args: Any) -> Any:
        rows = await self._fetch(what, query, *args)
        return rows[0] if rows else None

    async def _fetch(self, what: str, query: str, *args: Any) -> list[Any]:
        pool = self._require()
        with self._errors(what):
            async with pool.acquire(timeout=self.timeout) as connection:
                try:
                    rows: list[Any] = await connection.fetch(query, *args)
                except asyncpg.InternalClientError:
                    # The connection's protocol state is unknown: never reuse it.
                    connection.terminate()
                    raise
                return rows

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except UnicodeEncodeError as exc:
            raise InvalidInput(f"{exc.object!r} is not valid Unicode text: it cannot be stored") from exc
        except _DATA_ERRORS as exc:
            # A NUL character: valid Unicode, but PostgreSQL text cannot hold it.
            raise InvalidInput(f"PostgreSQL cannot store this text: {exc}") from exc
        except _DRIVER_ERRORS as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, UnicodeEncodeError):
                # asyncpg wraps the encoding error of a query argument.
                raise InvalidInput(
                    f"{cause.object!r} is not valid Unicode text: it cannot be stored"
                ) from exc
            raise StorageError(
                f"PostgreSQL {what} failed at {mask_url(self.postgres_url)}: {type(exc).__name__}: {exc}"
            ) from exc


def _store_args(uid: str, expected_version: int, change: Change) -> tuple[Any, ...]:
    """The arguments of ``atriggers_store`` for `change`."""
    encoded = encode_change(change)
    # The last write of an instance in a change wins (as it would in SQLite's
    # INSERT OR REPLACE); ON CONFLICT refuses one row written twice.
    instances = list({row[0]: row for row in encoded.instances}.values())
    due_keys: list[str] = []
    due_at: list[float | None] = []
    due_owners: list[str | None] = []
    due_payloads: list[str | None] = []
    gone: list[str] = []
    for key, due in encoded.due:
        if due is None:
            gone.append(key)
        else:
            due_keys.append(key)
            due_at.append(due.at)
            due_owners.append(due.owner)
            due_payloads.append(due.payload)
    return (
        uid,
        expected_version,
        encoded.version,
        encoded.tasks,
        encoded.counts,
        time.time(),
        [name for name, _ in encoded.triggers],
        [kwargs for _, kwargs in encoded.triggers],
        [i[0] for i in instances],
        [i[1] for i in instances],
        [i[2] for i in instances],
        [i[3] for i in instances],
        [i[4] for i in instances],
        due_keys,
        due_at,
        due_owners,
        due_payloads,
        gone,
        *_index_args(reindexed(change)),
    )


def _index_args(summary: SessionSummary | None) -> tuple[Any, ...]:
    """summary, failed, stuck, waiting, tasks (all None: leave them as they are)."""
    if summary is None:
        return (None, None, None, None, None)
    return (summary.to_json(), summary.failed, summary.stuck, summary.waiting, list(summary.tasks))


def _pairs(names: Sequence[str] | None, values: Sequence[str] | None) -> list[tuple[str, str]]:
    if not names or not values:
        return []
    return list(zip(names, values, strict=True))
