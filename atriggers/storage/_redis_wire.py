"""The Redis wire protocol (RESP): commands packed to bytes, replies parsed from bytes.

Replies are parsed by hiredis (C) when it is installed (``pip install
'atriggers[redis]'`` brings it), else by `PyReader`, a pure-Python parser with the
same interface. Both give text as `str` (UTF-8; bytes that are not UTF-8 come back
as surrogate escapes, for the JSON decoder to reject, instead of breaking the
stream), integers as `int`, nil as None, and an error reply as a
`redis.exceptions.ResponseError` instance returned, not raised, so one command's
error is its caller's alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from redis.exceptions import InvalidResponse, ResponseError

__all__ = ["Arg", "Reader", "make_reader", "pack", "pack_args"]

#: What a command's argument may be (numbers are sent as their text).
Arg = str | bytes | int | float


class Reader(Protocol):
    """What the connection needs of a reply parser (hiredis.Reader's interface)."""

    def feed(self, data: bytes, /) -> None: ...

    def gets(self) -> Any: ...


def pack(args: Sequence[Arg]) -> bytes:
    """One command as RESP bytes. Text that is not valid Unicode (lone surrogates)
    raises UnicodeEncodeError here, in its caller, before anything is sent."""
    return b"*%d\r\n%b" % (len(args), pack_args(args))


def pack_args(args: Sequence[Arg]) -> bytes:
    """A command's arguments without the array header: parts packed once (a
    session's keys) are joined to the rest as they are."""
    # Commands are mostly ASCII (keys, numbers, JSON with escapes): built as one
    # str and encoded once, where lengths in characters are lengths in bytes.
    parts = []
    for arg in args:
        if type(arg) is not str:
            if isinstance(arg, bytes):
                return _pack_bytes(args)
            arg = str(arg)
        parts.append(f"${len(arg)}\r\n{arg}\r\n")
    text = "".join(parts)
    return text.encode() if text.isascii() else _pack_bytes(args)


def _pack_bytes(args: Sequence[Arg]) -> bytes:
    parts = []
    for arg in args:
        if isinstance(arg, str):
            raw = arg.encode()
        elif isinstance(arg, bytes):
            raw = arg
        else:
            raw = str(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(raw), raw))
    return b"".join(parts)


def make_reader() -> Reader:
    """hiredis's parser when installed, else the pure-Python one."""
    try:
        import hiredis
    except ImportError:
        return PyReader()
    reader: Reader = hiredis.Reader(
        protocolError=InvalidResponse, replyError=ResponseError, encoding="utf-8", errors="surrogateescape"
    )
    return reader


class _Incomplete(Exception):
    """The buffer ends before the reply does: wait for more bytes."""


class PyReader:
    """A RESP2 reply parser in Python (with the RESP3 types a server may send too):
    the fallback when hiredis is not installed."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        if self._pos:
            # Drop what was parsed already, so the buffer holds one reply's bytes at most.
            del self._buffer[: self._pos]
            self._pos = 0
        self._buffer += data

    def gets(self) -> Any:
        """The next complete reply, or False while its bytes have not all arrived."""
        try:
            reply, self._pos = self._parse(self._pos)
        except _Incomplete:
            return False
        return reply

    def _line(self, pos: int) -> tuple[bytes, int]:
        end = self._buffer.find(b"\r\n", pos)
        if end < 0:
            raise _Incomplete
        return bytes(self._buffer[pos:end]), end + 2

    def _parse(self, pos: int) -> tuple[Any, int]:
        line, pos = self._line(pos)
        kind, rest = line[:1], line[1:]
        if kind in (b"$", b"="):  # bulk string (verbatim: "txt:" first)
            size = int(rest)
            if size < 0:
                return None, pos
            if len(self._buffer) < pos + size + 2:
                raise _Incomplete
            text = self._buffer[pos : pos + size].decode("utf-8", "surrogateescape")
            return (text[4:] if kind == b"=" else text), pos + size + 2
        if kind in (b"*", b"~", b">", b"%"):  # array, set, push, map (flattened)
            count = int(rest)
            if count < 0:
                return None, pos
            items = []
            for _ in range(2 * count if kind == b"%" else count):
                item, pos = self._parse(pos)
                items.append(item)
            return items, pos
        if kind == b"+":
            return rest.decode("utf-8", "surrogateescape"), pos
        if kind == b":":
            return int(rest), pos
        if kind == b"-":
            return ResponseError(rest.decode("utf-8", "replace")), pos
        if kind == b"_":
            return None, pos
        if kind == b",":
            return float(rest), pos
        if kind == b"#":
            return rest == b"t", pos
        raise InvalidResponse(f"Protocol error: unexpected reply type {kind!r}")
