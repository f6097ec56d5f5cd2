"""One pipelined connection to Redis, shared by every operation of a storage.

redis-py's asyncio client spends more per command than the round trip itself:
a pool lock per command, a pure-Python parser, and an ``asyncio.timeout`` around
every read. Here redis-py only opens the connection (address, TLS, AUTH,
SELECT: everything its URL says) and the socket is then driven directly:

- Commands are written as they come; those issued while replies are awaited go
  out together in one write at the end of the loop iteration, so operations of
  any number of sessions share round trips (Redis answers them in order, and
  runs each script atomically, so nothing but the round trip is shared).
- Replies are matched to their callers in order, straight from the protocol's
  `data_received` (no reader task). An error reply is its own command's only.
- A dead server is noticed by the connection, not per call: its loss fails the
  commands in flight, and one timer per connection (re-armed only as replies
  arrive) aborts it when a reply is awaited for `timeout` seconds without any
  byte coming back.
- A lost connection is reopened by the next command, after a short backoff, at
  most `retries` times per command.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._redis_wire import make_reader

__all__ = ["Channel"]


class _Link(asyncio.Protocol):
    """The protocol of one open connection: writes commands, hands out replies."""

    def __init__(self, transport: asyncio.Transport, previous: asyncio.BaseProtocol, timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport = transport
        # redis-py's stream protocol: told of the close, so its writer's wait_closed ends.
        self._previous = previous
        self._timeout = timeout
        self._reader = make_reader()
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._outgoing: list[bytes] = []
        self._last_progress = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        self.failure: Exception | None = None
        self.writer: asyncio.StreamWriter | None = None

    @property
    def alive(self) -> bool:
        return self.failure is None

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """Send `command`; the future gets its reply."""
        if self.failure is not None:
            raise type(self.failure)(str(self.failure))  # a fresh one: no traceback piles up
        future = self._loop.create_future()
        waiting = self._waiting
        if not waiting:
            self._last_progress = self._loop.time()
            if self._watchdog is None:
                self._watchdog = self._loop.call_later(self._timeout, self._check)
        waiting.append(future)
        if self._outgoing:
            self._outgoing.append(command)
        elif len(waiting) == 1:
            # Nothing in flight: no one to batch with, so no iteration's delay.
            self._write(command)
        else:
            # Replies are awaited: gather this iteration's commands in one write.
            self._outgoing.append(command)
            self._loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        if self.failure is None and self._outgoing:
            self._write(b"".join(self._outgoing))
        self._outgoing.clear()

    def _write(self, data: bytes) -> None:
        try:
            self._transport.write(data)
        except (OSError, RuntimeError) as exc:
            # The replies would no longer match their callers: end the connection.
            self._fail(RedisConnectionError(f"Connection to Redis lost: {exc}"))
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        self._last_progress = self._loop.time()
        reader = self._reader
        waiting = self._waiting
        try:
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                future = waiting.popleft()
                if not future.done():  # its caller may have been cancelled
                    future.set_result(reply)
        except (InvalidResponse, ValueError, IndexError) as exc:  # unreadable, or a reply nobody asked for
            self._fail(RedisConnectionError(f"Redis sent what cannot be read: {exc}"))
            self._transport.abort()

    def _check(self) -> None:
        self._watchdog = None
        if not self._waiting or self.failure is not None:
            return
        quiet = self._loop.time() - self._last_progress
        if quiet >= self._timeout:
            self._fail(RedisTimeoutError(f"Timeout reading from Redis: no reply for {self._timeout} s"))
            self._transport.abort()
        else:
            self._watchdog = self._loop.call_later(self._timeout - quiet, self._check)

    def eof_received(self) -> bool:
        # The server closed its side: nothing more will be answered.
        self._fail(RedisConnectionError("Connection to Redis lost: closed by the server"))
        return False  # and the transport closes ours

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"Connection to Redis lost: {exc or 'closed by the server'}"))
        self._previous.connection_lost(exc)

    def _fail(self, error: Exception) -> None:
        if self.failure is None:
            self.failure = error
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._outgoing.clear()
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(self.failure)

    def close(self) -> None:
        self._fail(RedisConnectionError("Connection to Redis closed"))
        self._transport.close()


class Channel:
    """Commands to one Redis server over one pipelined connection, reopened when lost.

    `connect` makes a (not yet connected) redis-py connection; `timeout` bounds
    the wait for a reply; `retries` is how many times a command is sent again
    after a lost connection.
    """

    def __init__(self, connect: Callable[[], AbstractConnection], *, timeout: float, retries: int) -> None:
        self._make = connect
        self._timeout = timeout
        self._retries = retries
        self._link: _Link | None = None
        self._opening: asyncio.Lock | None = None
        # Connection attempts made, and how the last one failed (None: it did not).
        self._attempts = 0
        self._failure: str | None = None
        self._closed = False

    async def execute(self, command: bytes) -> Any:
        """The reply to `command` (packed by `pack`): an error reply comes back as
        a `ResponseError` instance; a connection that cannot be (re)opened or is
        lost raises redis-py's ConnectionError or TimeoutError."""
        failures = 0
        while True:
            link = self._link
            try:
                if link is None or not link.alive:
                    link = await self._open()
                return await link.send(command)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                failures = await self._retry_after(exc, failures)

    async def execute_all(self, commands: list[bytes]) -> list[Any]:
        """The replies to `commands` (as `execute`), sent back to back: Redis runs
        them in this order, with none of this channel's other commands between
        them (another client's may be). A lost connection sends them all again."""
        failures = 0
        while True:
            link = self._link
            try:
                if link is None or not link.alive:
                    link = await self._open()
                futures: list[asyncio.Future[Any]] = []
                try:
                    for command in commands:
                        futures.append(link.send(command))
                    return [await future for future in futures]
                finally:
                    for future in futures:
                        if not future.done():
                            future.cancel()  # (its caller left: the link drops its reply)
                        elif not future.cancelled():
                            future.exception()  # (the link fails them all at once: heard)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                failures = await self._retry_after(exc, failures)

    async def _retry_after(self, exc: Exception, failures: int) -> int:
        """After the `failures`-th lost connection of a command: raise `exc` if
        it may not be sent again, else wait a backoff and count one more."""
        if self._closed or failures >= self._retries:
            raise exc
        failures += 1
        # As redis-py's ExponentialBackoff(cap=0.5, base=0.05), with jitter.
        await asyncio.sleep(random.uniform(0, min(0.5, 0.05 * 2**failures)))
        return failures

    async def _open(self) -> _Link:
        if self._closed:
            raise RedisConnectionError("the storage is closed")
        if self._opening is None:
            self._opening = asyncio.Lock()
        attempts = self._attempts
        async with self._opening:  # callers of a lost link wait for one new connection
            link = self._link
            if link is not None and link.alive:
                return link
            if self._attempts != attempts and self._failure is not None:
                # The attempt this caller waited for failed: that is its answer
                # too (each waiter trying again in turn would take N timeouts).
                raise RedisConnectionError(self._failure)
            self._attempts += 1
            connection = self._make()
            try:
                await connection.connect()  # type: ignore[no-untyped-call]
            except Exception as exc:
                self._failure = f"{type(exc).__name__}: {exc}"
                raise
            self._failure = None
            if self._closed:  # closed while connecting: the socket is nobody's
                await connection.disconnect()
                raise RedisConnectionError("the storage is closed")
            writer = connection._writer
            if writer is None:  # pragma: no cover - redis-py connected or raised
                raise RedisConnectionError("redis-py opened no stream")
            transport = writer.transport
            assert isinstance(transport, asyncio.Transport)
            timeout = connection.socket_timeout or self._timeout
            link = _Link(transport, transport.get_protocol(), timeout)
            transport.set_protocol(link)
            # Held as long as the link: a StreamWriter collected closes its transport.
            link.writer = writer
            # The socket is the link's now: redis-py must neither use nor close it.
            connection._reader = connection._writer = None
            self._link = link
            return link

    def close(self) -> None:
        self._closed = True
        if self._link is not None:
            self._link.close()
            self._link = None
