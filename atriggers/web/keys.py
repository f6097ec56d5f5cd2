"""HTTP ``Idempotency-Key`` support: a retried request fires once.

Clients and proxies retry requests that timed out. With the request's
``Idempotency-Key`` header passed to `TriggerManager.fire` as ``key``, the
retry changes nothing and gets the instances the first request scheduled, so a
response built from them (their names) is the first response again; reusing a
key for another request is answered 409.

- `idempotency_key` reads the header from an ASGI scope or a headers mapping;
- `fire_outcome` fires and describes the outcome as an HTTP status and JSON body;
- `FireEndpoint` is a raw ASGI app doing both (``triggers.fire_endpoint()``);
- ``triggers.idempotency_key()`` is the FastAPI dependency (see `Triggers`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from ..errors import IdempotencyConflict, InvalidInput, TriggerError
from ..idempotency import check_key

if TYPE_CHECKING:
    from ..manager import TriggerManager
    from .integration import Receive, Scope, Send, Triggers

__all__ = ["IDEMPOTENCY_HEADER", "MAX_BODY", "FireEndpoint", "fire_outcome", "idempotency_key"]

#: The request header (as in the IETF draft "The Idempotency-Key HTTP Header Field").
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: Largest request body `FireEndpoint` reads (bytes); larger ones are answered 413.
MAX_BODY = 1 << 20


def idempotency_key(source: Mapping[str, Any] | Iterable[tuple[bytes, bytes]]) -> str | None:
    """The ``Idempotency-Key`` of a request, or None without one.

    `source` is an ASGI scope (its raw ``headers``) or a mapping of header names
    to values (case-insensitive, such as Starlette's ``request.headers``). A key
    that is blank, longer than 255 characters or sent twice raises `InvalidInput`.
    """
    if isinstance(source, Mapping) and "headers" in source and "type" in source:
        source = source["headers"]
    found: list[str] = []
    if isinstance(source, Mapping):
        found = [str(v) for k, v in source.items() if str(k).lower() == "idempotency-key"]
    else:
        found = [v.decode("latin-1") for k, v in source if k.lower() == b"idempotency-key"]
    if not found:
        return None
    if len(found) > 1:
        raise InvalidInput(f"the {IDEMPOTENCY_HEADER} header was sent {len(found)} times: send it once")
    # Quoted keys ("...", as some clients send them, per the draft) are the same key.
    key = found[0].strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    return check_key(key)


def _error(exc: TriggerError) -> dict[str, Any]:
    body: dict[str, Any] = {"error": type(exc).__name__, "detail": str(exc)}
    if isinstance(exc, IdempotencyConflict):
        body["key"] = exc.key
        body["differs"] = exc.differs
    return body


async def fire_outcome(
    manager: TriggerManager, trigger: str, kwargs: Mapping[str, Any] | None, key: str | None
) -> tuple[int, dict[str, Any]]:
    """Fire `trigger` with `kwargs` (and idempotency `key`) and describe what
    happened as ``(HTTP status, JSON body)``: 200 and ``{"uid", "trigger",
    "scheduled": [instance names]}``, the same again for a retry with the same
    key; 409 for a key reused with another trigger or other kwargs; else the
    status of `status_code_for` and ``{"error", "detail"}``."""
    from .integration import status_code_for

    try:
        scheduled = await manager.fire(trigger, kwargs, key=key)
    except TriggerError as exc:
        return status_code_for(exc), _error(exc)
    return 200, {"uid": manager.uid, "trigger": trigger, "scheduled": [i.name for i in scheduled]}


class FireEndpoint:
    """A raw ASGI app firing triggers: ``POST .../{uid}/{trigger}`` with a JSON
    object body (the kwargs; empty body: none) and an optional
    ``Idempotency-Key`` header, answered as `fire_outcome` says. The last two
    path segments are the uid and the trigger (URL-decoded), so the app can be
    mounted under any prefix."""

    def __init__(self, triggers: Triggers) -> None:
        self.triggers = triggers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        status, body = await self._handle(scope, receive)
        payload = json.dumps(body, ensure_ascii=False).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    async def _handle(self, scope: Scope, receive: Receive) -> tuple[int, dict[str, Any]]:
        if scope["method"] != "POST":
            return 405, {"error": "MethodNotAllowed", "detail": "fire with POST .../{uid}/{trigger}"}
        parts = [unquote(p) for p in str(scope["path"]).split("/") if p]
        if len(parts) < 2:
            return 404, {"error": "NotFound", "detail": "fire with POST .../{uid}/{trigger}"}
        uid, trigger = parts[-2], parts[-1]
        raw = b""
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return 400, {"error": "Disconnected", "detail": "the client went away"}
            raw += message.get("body", b"")
            more = message.get("more_body", False)
            if len(raw) > MAX_BODY:
                return 413, {"error": "TooLarge", "detail": f"the body is larger than {MAX_BODY} bytes"}
        try:
            key = idempotency_key(scope)
            kwargs = json.loads(raw) if raw.strip() else None
            manager = self.triggers.manager(uid)
        except InvalidInput as exc:
            return 422, _error(exc)
        except ValueError as exc:
            return 422, {"error": "InvalidJSON", "detail": f"the body is not JSON: {exc}"}
        if kwargs is not None and not isinstance(kwargs, dict):
            return 422, {"error": "InvalidInput", "detail": "the body must be a JSON object (the kwargs)"}
        return await fire_outcome(manager, trigger, kwargs, key)
