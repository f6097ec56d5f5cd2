"""Redis storage through redis-py's asyncio client: sessions shared by many machines.

Install with ``pip install 'atriggers[redis]'``. Tested with Redis 7.0; uses only
hashes, sets, sorted sets and Lua scripts, which older servers and Valkey have too.

Key layout, for a session ``uid`` and the storage's ``prefix`` (default
``atriggers:``)::

    {prefix}{<uid>}:session     hash  version, config, counts, recent, updated
    {prefix}{<uid>}:triggers    hash  trigger name -> latest kwargs (JSON); idempotency key slots
    {prefix}{<uid>}:instances   hash  instance name -> instance (JSON)
    {prefix}{<uid>}:unresolved  set   names of the unresolved instances
    {prefix}{<uid>}:lock        str   fairness lock: the token of a starved writer (ttl)
    {prefix}due                 zset  due-index entries by time (+inf: owner-bound)
    {prefix}due:data            hash  entry -> owner, newline, payload
    {prefix}owners              zset  owner id -> lease expiry
    {prefix}owner:<owner id>    set   the entries an owner holds
    {prefix}index               hash  uid -> session summary (JSON, see storage.index)
    {prefix}index:all           zset  every uid, score 0 (ordered by uid: paged by lex range)
    {prefix}index:failed        zset  uids of sessions with a failed instance (also
    {prefix}index:stuck               :stuck, in flight; :waiting, unstarted)

A write updates the session's summary in the same script; listing walks one of
the index's sorted sets by lex range (never SCAN), and drops entries whose
session expired (`ttl`) as it meets them.

An entry is named ``<bytes of uid>:<uid><key>``. The braces are a Redis Cluster
hash tag, but a write touches the session's keys and the shared due index in one
script: use one Redis server (with replicas), not a cluster. Every read and every write
is one Lua script, so one round trip and atomic (a read of many instances: see
below): a write checks the session's
version first (compare-and-swap) and then writes only the header fields, triggers
and instances the change touched; a read fetches only the unresolved instances
plus those asked for by name, so neither grows with a session's history. Past
`SPILL_AT` instances a read's bodies come by a plain command after the script,
with the version checked again: a round trip more, a fifth of the server's time;
a read that finds the session written in between reads it again.

Every command goes over one pipelined connection (`_redis_channel`): the scripts
of concurrent operations, whatever their sessions, share writes and round trips,
and each still gets its own reply or error. They run by EVALSHA, with their
keys packed once per session.

A process whose writes to a session lost to other writers 8 times in a row
(`LOCK_AFTER_CONFLICTS`) sets the session's ``lock`` key (``SET NX PX``, waiting
while another holds it) and writes with its token; every write script refuses, as
a conflict, a write to a session locked by another token (that writer waits for
the release, then re-applies), and the holder's landed write deletes the key.
The key expires after `lock_ttl` seconds, so a holder that died blocks the
session that long at most. Without a lock a write costs one GET
more inside its script, no round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import time
import uuid
from collections.abc import Callable, Collection, Coroutine, Iterable, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError, ResponseError

    from ._redis_channel import Channel
    from ._redis_wire import Arg, pack, pack_args
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "RedisStorage needs the redis client: install the extra with `pip install 'atriggers[redis]'`"
    ) from exc

from ..clock import Clock
from ..due import DueEntry
from ..errors import InvalidInput, StorageError
from ..state import Change, SessionState
from .base import LOCK_AFTER_CONFLICTS, Reapply, Storage, VersionConflict, mask_url, with_params
from .codec import ConfigCache, corrupt, decode_state, decode_tasks, encode_change
from .index import FLAGS, SessionCounts, SessionFilter, SessionPage, SessionSummary, check_page, reindexed
from .lease import DEFAULT_LEASE, OWNER_RETENTION, lease_param

__all__ = ["DEFAULT_PREFIX", "RedisStorage"]

DEFAULT_PREFIX = "atriggers:"

#: How long a session's fairness lock lives at most (seconds): a holder that
#: crashed blocks the session's other writers no longer than this.
DEFAULT_LOCK_TTL = 2.0

#: Instances past which a read fetches their bodies outside its script (see
#: `_READ_STATE`): a round trip more, worth it from about a hundred bodies on.
SPILL_AT = 128
_SPILL = str(SPILL_AT)

# Shared by the scripts: the working view of a session, as
# {version, config, counts, {trigger, kwargs...}, {instance, body...}} (everything),
# or {version, config, counts, {trigger, kwargs...}, {instance...}, {body...}} (the
# unresolved and named instances), or {} when the session does not exist.
# KEYS = session, triggers, instances, unresolved.
#
# Past `spill` instances the bodies are left out (false in their place) for the
# client to fetch with a plain HGETALL or HMGET: Lua copies every string it passes
# along, in and out, and for a session of 1,000 instances that took 80% of the
# script's time. So are the triggers past `spill` of them (a session holding many
# idempotency keys). The client checks the version in the same pipeline (`_unspill`).
_READ_STATE = (
    f"local SPILL = {SPILL_AT}\n"
    + """
local function hmget_chunked(key, names)
  -- unpack() is bounded by Lua's C stack: fetch in slices.
  local out = {}
  for first = 1, #names, 1000 do
    local last = math.min(first + 999, #names)
    local part = redis.call('HMGET', key, unpack(names, first, last))
    for i = 1, #part do out[first + i - 1] = part[i] end
  end
  return out
end

local function read_state(everything, names, spill)
  local header = redis.call('HMGET', KEYS[1], 'version', 'config', 'counts')
  if not header[1] then return {} end
  local triggers = false
  if not (spill and redis.call('HLEN', KEYS[2]) > spill) then
    triggers = redis.call('HGETALL', KEYS[2])
  end
  if everything then
    if spill and redis.call('HLEN', KEYS[3]) > spill then
      return {header[1], header[2], header[3], triggers, false}
    end
    return {header[1], header[2], header[3], triggers, redis.call('HGETALL', KEYS[3])}
  end
  local wanted = redis.call('SMEMBERS', KEYS[4])
  if #names > 0 then
    local seen = {}
    for _, name in ipairs(wanted) do seen[name] = true end
    for _, name in ipairs(names) do
      if not seen[name] then
        seen[name] = true
        wanted[#wanted + 1] = name
      end
    end
  end
  if spill and #wanted > spill then
    return {header[1], header[2], header[3], triggers, wanted, false}
  end
  -- Names and bodies side by side (a body is nil, false in the reply, for a
  -- name asked for that does not exist): the client pairs them.
  return {header[1], header[2], header[3], triggers, wanted, hmget_chunked(KEYS[3], wanted)}
end
"""
)

# ARGV = everything ('1' or '0'), spill ('' none), then instance names wanted
# whatever their status.
_LOAD = (
    _READ_STATE
    + """
local names = {}
for i = 3, #ARGV do names[#names + 1] = ARGV[i] end
return read_state(ARGV[1] == '1', names, tonumber(ARGV[2]))
"""
)


# ARGV = expected version, new version, change token, ttl in ms (0: none), now,
# config ('' unchanged), counts ('' unchanged), number of triggers,
# number of due entries, owner-set key prefix, uid, summary ('' none), summary
# flags (failed, stuck, waiting as three '0'/'1'), then trigger/kwargs pairs, then
# member/score/owner/payload quads of due entries (score '': delete), then
# name/resolved/body triples; ARGV[14], between the summary flags and the pairs, is
# the writer's fairness-lock token ('' none). KEYS 5 and 6: the due index's zset
# and data hash; 7 to 11: the session index's hash, and its all, failed, stuck,
# waiting zsets; 12: the session's fairness lock.
#
# Everything that can fail is checked before the first write: Redis does not roll
# a script back, so a script must not stop half-way.
_STORE = (
    _READ_STATE
    + """
local expected = tonumber(ARGV[1])
local header = redis.call('HMGET', KEYS[1], 'version', 'recent')
local current = tonumber(header[1] or '0')
local recent = header[2] or ''
-- A session whose fairness lock another writer holds refuses the write like a
-- conflict: the holder, starved so far, goes first. (One GET when no lock.)
local lock = redis.call('GET', KEYS[12])
if current ~= expected or (lock and lock ~= ARGV[14]) then
  if string.find(recent, ARGV[3], 1, true) then
    -- This very change already landed (the client resent it after losing the
    -- reply), possibly with other writers' changes after it.
    return {'applied'}
  end
  if current == expected then
    return {'conflict', read_state(false, {}, SPILL), 'locked'}
  end
  return {'conflict', read_state(false, {}, SPILL)}
end
-- The tokens of the last 16 changes, newest first (32 hex digits and a space each).
recent = string.sub(ARGV[3] .. ' ' .. recent, 1, 33 * 16)
local fields = {'version', ARGV[2], 'recent', recent, 'updated', ARGV[5]}
if expected == 0 then
  -- A session that expired key by key may have left parts behind.
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
  fields[#fields + 1] = 'config'
  fields[#fields + 1] = (ARGV[6] ~= '' and ARGV[6]) or '{}'
  fields[#fields + 1] = 'counts'
  fields[#fields + 1] = (ARGV[7] ~= '' and ARGV[7]) or '{}'
else
  if ARGV[6] ~= '' then
    fields[#fields + 1] = 'config'
    fields[#fields + 1] = ARGV[6]
  end
  if ARGV[7] ~= '' then
    fields[#fields + 1] = 'counts'
    fields[#fields + 1] = ARGV[7]
  end
end
redis.call('HSET', KEYS[1], unpack(fields))
if ARGV[12] ~= '' then
  redis.call('HSET', KEYS[7], ARGV[11], ARGV[12])
  redis.call('ZADD', KEYS[8], 0, ARGV[11])
  for f = 1, 3 do
    if string.sub(ARGV[13], f, f) == '1' then
      redis.call('ZADD', KEYS[8 + f], 0, ARGV[11])
    else
      redis.call('ZREM', KEYS[8 + f], ARGV[11])
    end
  end
end
local n_triggers = tonumber(ARGV[8])
local n_due = tonumber(ARGV[9])
local i = 15
for _ = 1, n_triggers do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
for _ = 1, n_due do
  local member, score, owner = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local old = redis.call('HGET', KEYS[6], member)
  if old then
    local old_owner = string.match(old, '^([^\\n]*)')
    if old_owner ~= '' then redis.call('SREM', ARGV[10] .. old_owner, member) end
  end
  if score == '' then
    redis.call('ZREM', KEYS[5], member)
    redis.call('HDEL', KEYS[6], member)
  else
    redis.call('ZADD', KEYS[5], score, member)
    redis.call('HSET', KEYS[6], member, owner .. '\\n' .. ARGV[i + 3])
    if owner ~= '' then redis.call('SADD', ARGV[10] .. owner, member) end
  end
  i = i + 4
end
while i <= #ARGV do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 2])
  if ARGV[i + 1] == '1' then
    redis.call('SREM', KEYS[4], ARGV[i])
  else
    redis.call('SADD', KEYS[4], ARGV[i])
  end
  i = i + 3
end
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  for k = 1, 4 do redis.call('PEXPIRE', KEYS[k], ttl) end
end
-- The holder's write landed: the others may go again.
if lock then redis.call('DEL', KEYS[12]) end
return {'ok'}
"""
)

# The working view of a session, once its fairness lock is free. KEYS = session,
# triggers, instances, unresolved, lock. ARGV = instance names wanted whatever
# their status. Returns {state} (state {} if no such session), or {} while locked.
_LOAD_UNLOCKED = (
    _READ_STATE
    + """
if redis.call('EXISTS', KEYS[5]) == 1 then return {} end
return {read_state(false, ARGV)}
"""
)

# Release a session's fairness lock if this token still holds it. KEYS = lock.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Claim due entries. KEYS = due zset, due data hash, owners zset. ARGV = now,
# until, limit, owner-set key prefix, forget lapsed owners expired before this,
# real time now (for leases), session key prefix, then (optional) the members to
# claim if due. Entries of sessions that no longer exist (expired by `ttl`) are
# dropped instead of claimed. Returns member, score, owner,
# payload, lapsed ('1'/'0') for each claimed entry.
_CLAIM = """
local now, limit, alive = tonumber(ARGV[1]), tonumber(ARGV[3]), tonumber(ARGV[6])
local out, seen = {}, {}
local function lapsed(owner)
  if owner == '' then return false end
  local expires = tonumber(redis.call('ZSCORE', KEYS[3], owner) or 'x')
  return expires ~= nil and expires <= alive
end
local function consider(member, by_time)
  if seen[member] or #out >= limit then return end
  local data = redis.call('HGET', KEYS[2], member)
  if not data then return end
  local score = redis.call('ZSCORE', KEYS[1], member)
  local owner, payload = string.match(data, '^([^\\n]*)\\n(.*)$')
  local size = string.match(member, '^(%d+):')
  local uid = string.sub(member, #size + 2, #size + 1 + tonumber(size))
  if redis.call('EXISTS', ARGV[7] .. '{' .. uid .. '}:session') == 0 then
    seen[member] = true
    redis.call('ZREM', KEYS[1], member)
    redis.call('HDEL', KEYS[2], member)
    if owner ~= '' then redis.call('SREM', ARGV[4] .. owner, member) end
    return
  end
  local gone = lapsed(owner)
  local at = tonumber(score or 'x')
  if by_time and not gone and not (at ~= nil and at <= now) then return end
  seen[member] = true
  out[#out + 1] = {member, score or '', owner, payload, gone and '1' or '0'}
end
if #ARGV > 7 then
  for j = 8, #ARGV do consider(ARGV[j], true) end
else
  for _, owner in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', alive)) do
    local held = redis.call('SRANDMEMBER', ARGV[4] .. owner, limit)
    if #held == 0 then
      if tonumber(redis.call('ZSCORE', KEYS[3], owner)) <= tonumber(ARGV[5]) then
        redis.call('ZREM', KEYS[3], owner)
      end
    end
    for _, member in ipairs(held) do consider(member, false) end
    if #out >= limit then break end
  end
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)) do
    consider(member, false)
  end
end
for _, entry in ipairs(out) do
  if entry[3] ~= '' then redis.call('SREM', ARGV[4] .. entry[3], entry[1]) end
  redis.call('ZADD', KEYS[1], ARGV[2], entry[1])
  redis.call('HSET', KEYS[2], entry[1], '\\n' .. entry[4])
end
return out
"""

# One page of the session index. KEYS = index hash, the zset walked, then the
# failed, stuck, waiting and all zsets. ARGV = lex range start and end, limit,
# budget (entries examined at most), session key prefix, flags required besides
# the walked set's ('0'/'1' for failed, stuck, waiting), task ('' any). Returns
# {uid, summary, version, updated, uid...} (the last two from the session's
# header), then 'more' (a next page after the last uid), 'partial' and the last
# uid examined (the budget ran out), or 'done'.
_LIST_INDEX = """
local lo, hi = ARGV[1], ARGV[2]
local limit, budget = tonumber(ARGV[3]), tonumber(ARGV[4])
local out, examined = {}, 0
while true do
  local chunk = redis.call('ZRANGEBYLEX', KEYS[2], lo, hi, 'LIMIT', 0, 256)
  if #chunk == 0 then return {out, 'done'} end
  for _, uid in ipairs(chunk) do
    examined = examined + 1
    local text = redis.call('HGET', KEYS[1], uid)
    local head = redis.call('HMGET', ARGV[5] .. '{' .. uid .. '}:session', 'version', 'updated')
    if (not text) or (not head[1]) then
      -- The session expired (ttl): its entry goes too.
      redis.call('HDEL', KEYS[1], uid)
      for k = 3, 6 do redis.call('ZREM', KEYS[k], uid) end
    else
      local ok = true
      for f = 1, 3 do
        if string.sub(ARGV[6], f, f) == '1' and not redis.call('ZSCORE', KEYS[2 + f], uid) then
          ok = false
        end
      end
      if ok and ARGV[7] ~= '' then
        ok = false
        for _, t in ipairs(cjson.decode(text)['t']) do
          if t == ARGV[7] then ok = true end
        end
      end
      if ok then
        if #out >= 4 * limit then return {out, 'more'} end
        out[#out + 1] = uid
        out[#out + 1] = text
        out[#out + 1] = head[1]
        out[#out + 1] = head[2] or ''
      end
    end
    if examined >= budget then return {out, 'partial', uid} end
    lo = '(' .. uid
  end
end
"""

# Register (ARGV[4] = '1') or renew an owner. KEYS = owners zset. ARGV = owner,
# expires at, now, create. Renewing a lapsed or unknown owner returns 0.
_OWNER = """
if ARGV[4] ~= '1' then
  local expires = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or 'x')
  if expires == nil or expires <= tonumber(ARGV[3]) then return 0 end
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
"""


class _Refused(VersionConflict):
    """A write refused only because another writer holds the session's fairness lock."""


def _member(uid: str, key: str) -> str:
    """A due entry's member: the uid's length in bytes, a colon, uid, key."""
    return f"{len(uid.encode())}:{uid}{key}"


def _unmember(member: str) -> tuple[str, str]:
    size, _, rest = member.partition(":")
    raw = rest.encode()
    return raw[: int(size)].decode(), raw[int(size) :].decode()


def _score(at: float | None) -> str:
    return "+inf" if at is None else repr(at)


#: Query parameters of a storage URL that are ours, not redis-py's.
_OWN_PARAMS = ("prefix", "ttl", "lease")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(reply: list[str] | dict[str, str]) -> Iterable[tuple[str, str]]:
    """A reply of names and values as pairs (replies are `str` already: the
    channel's parser decodes them): flat, as a Lua script's table, or a dict, as
    hiredis gives a plain HGETALL's over RESP3."""
    if isinstance(reply, dict):
        return reply.items()
    return zip(reply[::2], reply[1::2], strict=True)


def _spilled(state: list[Any]) -> bool:
    """Whether a script's state left triggers or bodies out (see `_READ_STATE`)."""
    return bool(state) and (state[3] is None or state[-1] is None)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisStorage(Storage):
    """Sessions in Redis, shareable by any number of processes and machines.

    ``RedisStorage("redis://host:6379/0", prefix="myapp:", ttl=86400)``, or
    ``open_storage("redis://host:6379/0?prefix=myapp:&ttl=86400")`` (``rediss://``
    for TLS). Other query parameters go to redis-py (``socket_timeout=...``).

    `prefix` starts every key (give each application its own). `ttl` (seconds, the
    original library's ``timeout``) makes a session expire that long after its last
    write; None keeps sessions forever. Every operation goes over one pipelined
    connection, so operations of any number of sessions share round trips (and
    never more than `max_connections` connections are open). `socket_timeout`
    bounds the wait for a reply; `retries` resends an operation after a lost
    connection.

    A write that cannot reach Redis raises `StorageError` and either landed
    entirely or not at all. Durability across a Redis crash is Redis's: use
    ``appendonly yes`` (and ``appendfsync always`` to lose no acknowledged write
    even on power loss).
    """

    scheme = "redis"
    # A conflict comes back with the current state, so a session this process
    # has not read is written as if new: a new one costs one round trip, an
    # existing one two (the manager re-applies the operation to the state the
    # failed write returned), as a read and a write would.
    reapplies_conflicts = True

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = DEFAULT_PREFIX,
        ttl: float | None = None,
        socket_timeout: float = 5.0,
        retries: int = 2,
        max_connections: int = 64,
        client: aioredis.Redis | None = None,
        cache_size: int = 1024,
        close_timeout: float = 30.0,
        lease: float = DEFAULT_LEASE,
        clock: Clock | None = None,
        lock_ttl: float = DEFAULT_LOCK_TTL,
    ) -> None:
        super().__init__(cache_size=cache_size, close_timeout=close_timeout, lease=lease, clock=clock)
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"Redis URLs start with redis://, rediss:// or unix://, not {url!r}")
        if not isinstance(prefix, str) or "{" in prefix or "}" in prefix:
            # Braces would move the cluster hash tag off the uid.
            raise ValueError(f"the key prefix must be a string without braces, not {prefix!r}")
        if ttl is not None and not ttl > 0:
            raise ValueError(f"ttl must be a positive number of seconds or None, not {ttl!r}")
        if not lock_ttl > 0:
            raise ValueError(f"lock_ttl must be a positive number of seconds, not {lock_ttl!r}")
        self.redis_url = url
        #: Lifetime of a session's fairness lock (see `store_or_reapply`).
        self.lock_ttl = lock_ttl
        # Writes to a session lost in a row, by uid (this process's managers
        # take turns on a session: `Storage.lock`).
        self._contended: dict[str, int] = {}
        self._unlock_script: Any = None
        self._load_unlocked_script: Any = None
        self.prefix = prefix
        self.ttl = ttl
        self.socket_timeout = socket_timeout
        self.retries = retries
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, not {max_connections!r}")
        #: Connections this storage opens at most; more concurrent operations wait.
        self.max_connections = max_connections
        self._client = client
        self._owns_client = client is None
        self._channel: Channel | None = None
        self._configs = ConfigCache()
        self._load_script: Any = None
        self._store_script: Any = None
        self._claim_script: Any = None
        self._owner_script: Any = None
        # The due index is shared by every session (so a sweep reads only what
        # is due): one zset of entries by time, their data, and the owners' leases.
        self._due_keys = [f"{prefix}due", f"{prefix}due:data", f"{prefix}owners"]
        self._owner_prefix = f"{prefix}owner:"
        # The session index: summaries, then every uid and the uids by flag.
        self._index_keys = [f"{prefix}index", *(f"{prefix}index:{n}" for n in ("all", *FLAGS))]
        self._list_script: Any = None

    @property
    def url(self) -> str:
        params: list[tuple[str, str]] = []
        if self.prefix != DEFAULT_PREFIX:
            params.append(("prefix", self.prefix))
        if self.ttl is not None:
            params.append(("ttl", format(self.ttl, "g")))
        if self.lease.duration != DEFAULT_LEASE:
            params.append(("lease", format(self.lease.duration, "g")))
        return with_params(self.redis_url, params)

    @classmethod
    def from_url(cls, url: str) -> RedisStorage:
        """``redis://[user:password@]host[:port][/db][?prefix=...&ttl=seconds&lease=seconds&...]``
        (``lease``: the owner lease of the processes opening it, default 30 s;
        other parameters go to redis-py)."""
        parts = urlsplit(url)
        own: dict[str, str] = {}
        rest: list[tuple[str, str]] = []
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key in _OWN_PARAMS:
                own[key] = value
            else:
                rest.append((key, value))
        redis_url = urlunsplit(parts._replace(query=urlencode(rest)))
        ttl: float | None = None
        if own.get("ttl"):
            try:
                ttl = float(own["ttl"])
            except ValueError:
                raise ValueError(f"ttl in {url!r} must be a number of seconds") from None
        lease = lease_param(url, own["lease"]) if "lease" in own else DEFAULT_LEASE
        return cls(redis_url, prefix=own.get("prefix", DEFAULT_PREFIX), ttl=ttl, lease=lease)

    def __repr__(self) -> str:
        return f"<RedisStorage {mask_url(self.redis_url)} prefix={self.prefix!r}>"

    def keys(self, uid: str) -> list[str]:
        """The keys of session `uid`: session, triggers, instances, unresolved."""
        base = f"{self.prefix}{{{uid}}}:"
        return [base + "session", base + "triggers", base + "instances", base + "unresolved"]

    def _store_keys(self, uid: str) -> list[str]:
        return [*self.keys(uid), *self._due_keys[:2], *self._index_keys, self.lock_key(uid)]

    def lock_key(self, uid: str) -> str:
        """The key of session `uid`'s fairness lock (present only while held)."""
        return f"{self.prefix}{{{uid}}}:lock"

    # -- lifecycle ------------------------------------------------------------------

    async def connect(self) -> None:
        if self._client is None:
            # Only its `make_connection` is used: the connection it makes (with
            # everything the URL says) becomes the storage's one pipelined channel,
            # which retries a lost connection itself (`retries` times, with backoff).
            pool = aioredis.BlockingConnectionPool.from_url(
                self.redis_url,
                max_connections=self.max_connections,
                timeout=self.socket_timeout + 5.0,
                decode_responses=True,
                socket_timeout=self.socket_timeout,
                socket_connect_timeout=self.socket_timeout,
                retry=Retry(NoBackoff(), 0),
            )
            self._client = aioredis.Redis.from_pool(pool)  # closing the client closes the pool
        client = self._client
        # Every command goes over one pipelined connection of ours (see
        # `_redis_channel`); redis-py opens it, with everything the URL says.
        channel = Channel(
            client.connection_pool.make_connection, timeout=self.socket_timeout, retries=self.retries
        )
        self._channel = channel
        try:
            await self._command(("PING",), "connect")
        except BaseException:
            channel.close()
            self._channel = None
            if self._owns_client:
                self._client = None
                await client.aclose()
            raise
        self._load_script = _Script(_LOAD, self.keys)
        self._store_script = _Script(_STORE, self._store_keys)
        self._claim_script = _Script(_CLAIM)
        self._owner_script = _Script(_OWNER)
        self._list_script = _Script(_LIST_INDEX)
        self._unlock_script = _Script(_UNLOCK)
        self._load_unlocked_script = _Script(_LOAD_UNLOCKED)

    async def disconnect(self) -> None:
        self._load_script = self._store_script = self._claim_script = self._owner_script = None
        self._list_script = self._unlock_script = self._load_unlocked_script = None
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    # -- reads and writes -------------------------------------------------------------

    async def load(self, uid: str, names: Collection[str] = ()) -> SessionState:
        return self._decode(uid, await self._read(uid, "0", names), complete=False)

    async def load_all(self, uid: str) -> SessionState:
        return self._decode(uid, await self._read(uid, "1", ()), complete=True)

    async def _read(self, uid: str, everything: str, names: Collection[str]) -> list[Any]:
        script = self._script(self._load_script)
        reply = await self._eval(script, uid, [everything, _SPILL, *names], "read")
        if _spilled(reply):
            unspilled = await self._unspill(uid, reply)
            if unspilled is None:  # written meanwhile: read it whole in the script
                return await self._eval(script, uid, [everything, "", *names], "read")  # type: ignore[no-any-return]
            reply = unspilled
        return reply  # type: ignore[no-any-return]

    async def _unspill(self, uid: str, state: list[Any]) -> list[Any] | None:
        """The state a script read, with the triggers and instance bodies it left
        out (see `_READ_STATE`) fetched; None if the session was written since.
        They come by plain commands, then the version again: Redis runs a
        connection's commands in order, so the same version means no write
        landed since the script, and what came is of its state."""
        session, triggers, instances, _ = self.keys(uid)
        commands: list[tuple[Arg, ...]] = []
        if state[3] is None:
            commands.append(("HGETALL", triggers))
        if state[-1] is None:
            # (Five parts: everything, by HGETALL; six: the names of those wanted.)
            commands.append(("HGETALL", instances) if len(state) == 5 else ("HMGET", instances, *state[4]))
        commands.append(("HGET", session, "version"))
        *fetched, version = await self._commands(commands, "read")
        if version != state[0]:
            return None
        if state[3] is None:
            state[3] = fetched.pop(0)
        if state[-1] is None:
            state[-1] = fetched.pop(0)
        return state

    async def store(self, uid: str, expected_version: int, change: Change) -> None:
        await self._store(uid, expected_version, change, "")

    async def store_or_reapply(
        self, uid: str, expected_version: int, change: Change, reapply: Reapply | None
    ) -> Change | None:
        """Write `change`; a lost race goes to the manager, which re-reads and
        retries. A process whose writes to a session lost 8 times in a row (each
        just too late, others out-writing it) takes the session's fairness lock
        instead: while it holds it every other write to the session is refused,
        so its own, re-applied to the current state, lands. Not sooner: the lock
        costs a round trip and makes the other writers wait.

        A write refused by another process's lock waits here for its release and
        re-applies itself then, without the manager's growing pauses: the
        writers it waited for must not fall behind the holder for good."""
        if reapply is None:
            await self.store(uid, expected_version, change)
            return change
        names = [i.name for i in change.instances]
        if self._contended.get(uid, 0) >= LOCK_AFTER_CONFLICTS:
            return await self._store_locked(uid, expected_version, names, reapply)
        for _ in range(LOCK_AFTER_CONFLICTS):
            try:
                await self._store(uid, expected_version, change, "")
            except _Refused:
                # Not a lost race: another starved writer is being served.
                current = await self._load_unlocked(uid, names)
                if current is None:
                    raise  # still locked: the manager retries later
                redo = reapply(current)
                if redo is None:
                    return None
                expected_version, change = current.version, redo
                continue
            except VersionConflict:
                self._contended[uid] = self._contended.get(uid, 0) + 1
                raise
            self._contended.pop(uid, None)
            return change
        # Refused again and again (a rotation of starved writers): the manager's turn.
        raise VersionConflict(uid, expected_version, None)

    async def _load_unlocked(self, uid: str, names: list[str]) -> SessionState | None:
        """The session once no writer holds its fairness lock (None if one still
        does after a few holders' turns)."""
        keys = [*self.keys(uid), self.lock_key(uid)]
        deadline = time.monotonic() + 4 * self.lock_ttl
        pause = 0.001
        while True:
            reply = await self._eval(self._script(self._load_unlocked_script), None, names, "read", keys=keys)
            if reply:
                return self._decode(uid, reply[0], complete=False)
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(random.uniform(0, pause))
            pause = min(2 * pause, 0.005)

    async def _store_locked(
        self, uid: str, expected_version: int, names: list[str], reapply: Reapply
    ) -> Change | None:
        key, token = self.lock_key(uid), uuid.uuid4().hex
        ttl_ms = max(1, round(self.lock_ttl * 1000))
        # Other starved writers of the session may hold it: wait for them, a
        # few of their turns at most, then leave it to the manager's retries.
        deadline = time.monotonic() + 4 * self.lock_ttl
        pause = 0.001
        while not await self._command(("SET", key, token, "NX", "PX", ttl_ms), "fairness lock"):
            if time.monotonic() >= deadline:
                raise VersionConflict(uid, expected_version, None)
            await asyncio.sleep(random.uniform(0, pause))
            pause = min(2 * pause, 0.005)
        landed = False
        try:
            for attempt in range(3):
                # Nobody else writes now: read, re-apply, write. (Another write
                # can land only if the lock expired under a slow holder.)
                current = await self.load(uid, names)
                redo = reapply(current)
                if redo is None:
                    return None
                try:
                    await self._store(uid, current.version, redo, token)
                except VersionConflict:
                    if attempt == 2:
                        raise
                    continue
                landed = True  # and the script released the lock
                self._contended.pop(uid, None)
                return redo
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            if not landed:
                with contextlib.suppress(StorageError):  # then it expires after lock_ttl
                    await self._eval(self._script(self._unlock_script), None, [token], "unlock", keys=[key])

    async def _store(self, uid: str, expected_version: int, change: Change, token: str) -> None:
        encoded = encode_change(change)
        ttl_ms = 0 if self.ttl is None else max(1, round(self.ttl * 1000))
        args: list[str | int] = [
            expected_version,
            encoded.version,
            # The change's token: 32 hex digits, as random as uuid4's (and cheaper).
            os.urandom(16).hex(),
            ttl_ms,
            repr(time.time()),
            encoded.tasks or "",
            encoded.counts or "",
            len(encoded.triggers),
            len(encoded.due),
            self._owner_prefix,
            uid,
        ]
        summary = reindexed(change)
        if summary is None:
            args += ("", "000")
        else:
            args += (summary.to_json(), "".join("1" if getattr(summary, f) else "0" for f in FLAGS))
        args.append(token)
        for name, kwargs in encoded.triggers:
            args += (name, kwargs)
        for key, due in encoded.due:
            if due is None:
                args += (_member(uid, key), "", "", "")
            else:
                args += (_member(uid, key), _score(due.at), due.owner or "", due.payload or "")
        for name, _task, _status, resolved, body in encoded.instances:
            args += (name, "1" if resolved else "0", body)
        reply = await self._eval(self._script(self._store_script), uid, args, "write")
        if _text(reply[0]) == "conflict":
            state = reply[1]
            if _spilled(state):
                try:
                    # (Written again since the conflict: read as a load does.)
                    state = await self._unspill(uid, state) or await self._read(uid, "0", ())
                except StorageError:
                    # Nothing was written: a conflict still, whose state is unknown.
                    raise VersionConflict(uid, expected_version, None) from None
            fresh = self._decode(uid, state, complete=False)
            if len(reply) > 2:
                raise _Refused(uid, expected_version, fresh)
            raise VersionConflict(uid, expected_version, fresh)

    async def claim_due(
        self,
        now: float,
        until: float,
        limit: int = 100,
        keys: Collection[tuple[str, str]] | None = None,
    ) -> list[DueEntry]:
        args: list[str | int | float] = [repr(now), repr(until), limit, self._owner_prefix]
        alive = time.time()
        args += [repr(alive - OWNER_RETENTION), repr(alive), self.prefix]
        if keys is not None:
            if not keys:
                return []
            args += [_member(uid, key) for uid, key in keys]
        reply = await self._eval(
            self._script(self._claim_script), None, args, "claim of due entries", keys=self._due_keys
        )
        claimed = []
        for member, score, owner, payload, lapsed in reply:
            uid, key = _unmember(_text(member))
            at = float(_text(score)) if _text(score) else None
            claimed.append(
                DueEntry(
                    uid,
                    key,
                    None if at == float("inf") else at,
                    _text(owner) or None,
                    _text(payload) or None,
                    _text(lapsed) == "1",
                )
            )
        return claimed

    async def renew_owner(self, owner: str, expires_at: float, *, create: bool = False) -> bool:
        args = [owner, repr(expires_at), repr(time.time()), "1" if create else "0"]
        reply = await self._eval(
            self._script(self._owner_script), None, args, "owner lease", keys=self._due_keys[2:]
        )
        return int(reply) == 1

    async def release_owner(self, owner: str) -> None:
        await self._eval(
            self._script(self._owner_script),
            None,
            [owner, "0", "0", "1"],
            "owner release",
            keys=self._due_keys[2:],
        )

    async def list_sessions(self) -> list[str]:
        """Every session's uid, found by scanning for session keys: O(keys in the
        database), meant for tools, not for requests."""
        pattern = _glob_escape(self.prefix) + "{*}:session"
        start, end = len(self.prefix) + 1, -len("}:session")
        found: set[str] = set()
        cursor = "0"
        while True:
            cursor, keys = await self._command(("SCAN", cursor, "MATCH", pattern, "COUNT", 1000), "scan")
            found.update(_text(key)[start:end] for key in keys)
            if _text(cursor) == "0":
                return sorted(found)

    async def list_summaries(
        self, filter: SessionFilter | None = None, *, after: str | None = None, limit: int = 50
    ) -> SessionPage:
        check_page(after, limit)
        wanted = filter or SessionFilter()
        prefix = wanted.prefix.encode()
        start = b"(" + after.encode() if after is not None and after >= wanted.prefix else b"[" + prefix
        # No UTF-8 text holds the byte 0xff: it sorts after every uid with the prefix.
        end = b"[" + prefix + b"\xff" if prefix else b"+"
        flag = wanted.flag
        walked = self._index_keys[2 + FLAGS.index(flag)] if flag is not None else self._index_keys[1]
        others = "".join("1" if getattr(wanted, f) and f != flag else "0" for f in FLAGS)
        keys = [self._index_keys[0], walked, *self._index_keys[2:], self._index_keys[1]]
        args: list[Any] = [start, end, limit, max(1000, 20 * limit), self.prefix, others, wanted.task or ""]
        reply = await self._eval(self._script(self._list_script), None, args, "index read", keys=keys)
        flat, how = reply[0], _text(reply[1])
        found: list[SessionSummary] = []
        for i in range(0, len(flat), 4):
            uid, text, version, updated = (_text(v) for v in flat[i : i + 4])
            try:
                at = float(updated) if updated else None
                found.append(SessionSummary.from_json(uid, text, int(version), at))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise corrupt(uid, "session index entry", exc) from exc
        if how == "more":
            return SessionPage(tuple(found), found[-1].uid)
        if how == "partial":
            return SessionPage(tuple(found), _text(reply[2]))
        return SessionPage(tuple(found), None)

    async def count_sessions(self) -> SessionCounts:
        # Sent together: the channel pipelines them in one round trip.
        counts = await asyncio.gather(
            *(self._command(("ZCARD", key), "index count") for key in self._index_keys[1:])
        )
        total, *flags = (int(n) for n in counts)
        return SessionCounts(total, *flags)

    def _decode(self, uid: str, reply: Sequence[Any], *, complete: bool) -> SessionState:
        if not reply:
            return SessionState(uid=uid, complete=complete)
        version, config, counts, triggers, *instances = reply
        if len(instances) == 1:
            found: Iterable[tuple[str, str]] = _pairs(instances[0])
        else:
            names, bodies = instances
            if len(names) != len(bodies):
                raise StorageError(
                    f"session {uid!r}: a read returned {len(bodies)} bodies for {len(names)} names"
                )
            found = zip(names, bodies, strict=True)
            if None in bodies:  # Lua's false: a name asked for that has no instance
                found = [(name, body) for name, body in found if body is not None]
        return decode_state(
            uid,
            int(version),
            decode_tasks(self._configs, config, uid),
            counts,
            _pairs(triggers),
            found,
            complete=complete,
        )

    # -- plumbing -----------------------------------------------------------------------

    def _require(self) -> Channel:
        if self._channel is None or self._load_script is None:
            raise StorageError(
                f"{self!r} is not open: use `async with RedisStorage(...)` or `await storage.open()`"
            )
        return self._channel

    def _script(self, script: _Script | None) -> _Script:
        self._require()
        assert script is not None
        return script

    def _eval(
        self, script: _Script, uid: str | None, args: Sequence[Arg], what: str, *, keys: Sequence[str] = ()
    ) -> Coroutine[Any, Any, Any]:
        """Run `script` (from `_script`, which checks the storage is open) on
        session `uid`'s keys (or on `keys`): its reply, or `StorageError`
        (`InvalidInput`, raised at once, for text that is not Unicode). Not a
        coroutine of its own: one frame fewer on every round trip's way."""
        try:
            if uid is None:
                count, head = len(keys), pack_args((len(keys), *keys))
            else:
                count, head = script.head(uid)
            tail = pack_args(args)
        except UnicodeEncodeError as exc:
            raise _not_text(exc) from exc
        total = b"*%d\r\n" % (3 + count + len(args))
        # A restarted or flushed server answers NOSCRIPT: EVAL sends the text, and caches it again.
        return self._send(
            b"".join((total, script.sha_head, head, tail)), what, (total, script.eval_head, head, tail)
        )

    async def _command(self, args: Sequence[Arg], what: str) -> Any:
        """One Redis command's reply, or `StorageError` (`InvalidInput`, as `_eval`)."""
        try:
            packed = pack(args)
        except UnicodeEncodeError as exc:
            raise _not_text(exc) from exc
        return await self._send(packed, what)

    async def _commands(self, commands: Sequence[Sequence[Arg]], what: str) -> list[Any]:
        """The replies to `commands`, sent back to back (Redis runs them in this
        order); errors as `_send`."""
        try:
            packed = [pack(args) for args in commands]
        except UnicodeEncodeError as exc:
            raise _not_text(exc) from exc
        channel = self._channel if self._channel is not None else self._require()
        try:
            replies = await channel.execute_all(packed)
            for reply in replies:
                if isinstance(reply, ResponseError):
                    raise reply
            return replies
        except (RedisError, OSError) as exc:
            raise self._failed(what, exc) from exc

    async def _send(self, packed: bytes, what: str, noscript: tuple[bytes, ...] | None = None) -> Any:
        """The reply to `packed` (sent again as the parts of `noscript` joined if the
        server lacks the script); Redis's errors translated to `StorageError`, here
        and in `_commands` only."""
        channel = self._channel if self._channel is not None else self._require()
        try:
            reply = await channel.execute(packed)
            if noscript is not None and type(reply) is ResponseError and str(reply).startswith("NOSCRIPT"):
                reply = await channel.execute(b"".join(noscript))
            if isinstance(reply, ResponseError):
                raise reply
            return reply
        except (RedisError, OSError) as exc:
            raise self._failed(what, exc) from exc

    def _failed(self, what: str, exc: BaseException) -> StorageError:
        return StorageError(f"Redis {what} failed at {mask_url(self.redis_url)}: {type(exc).__name__}: {exc}")


def _not_text(exc: UnicodeEncodeError) -> InvalidInput:
    return InvalidInput(f"{exc.object!r} is not valid Unicode text: it cannot be stored")


class _Script:
    """A Lua script run by EVALSHA (its text is sent only when the server lacks
    it). Scripts of one session keep their keys packed, by uid (`heads`)."""

    def __init__(self, text: str, keys: Callable[[str], list[str]] | None = None) -> None:
        self.sha = hashlib.sha1(text.encode()).hexdigest()
        self.sha_head = pack_args(("EVALSHA", self.sha))
        self.eval_head = pack_args(("EVAL", text))
        #: The keys of a session's scripts, from its uid.
        self.keys = keys
        #: uid -> (number of keys, the keys packed with their number first).
        self.heads: dict[str, tuple[int, bytes]] = {}

    def head(self, uid: str) -> tuple[int, bytes]:
        found = self.heads.get(uid)
        if found is None:
            assert self.keys is not None
            keys = self.keys(uid)
            found = (len(keys), pack_args((len(keys), *keys)))
            if len(self.heads) >= _HEADS_KEPT:
                self.heads.clear()  # a working set that does not fit: start over
            self.heads[uid] = found
        return found


#: Sessions whose packed keys a script keeps (a few hundred bytes each).
_HEADS_KEPT = 4096
