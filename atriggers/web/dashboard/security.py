"""Who may change what, and proof that a change was asked for by this page.

Read-only unless the application's `authorize(request, action)` says yes. Every
change is a POST carrying a CSRF token: a random value signed with the app's
secret, set as a cookie (SameSite=Strict, HttpOnly) and repeated in each form
(double submit). A forged form from another site cannot read the cookie, so it
cannot repeat it; a cookie planted by a sibling domain is refused because it is
not signed with this app's secret.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import logging
import secrets
from collections.abc import Awaitable, Callable

from starlette.requests import Request

_log = logging.getLogger("atriggers.web.dashboard")

__all__ = ["ACTIONS", "CSRF_COOKIE", "CSRF_FIELD", "Authorize", "Guard"]

#: Every action the dashboard offers, as passed to `authorize`.
ACTIONS: tuple[str, ...] = ("replay", "skip", "resolve-logs", "set-status", "bulk-replay", "bulk-skip")

CSRF_COOKIE = "atriggers_csrf"
CSRF_FIELD = "csrf"

#: ``authorize(request, action) -> bool`` (or an awaitable of it).
Authorize = Callable[[Request, str], bool | Awaitable[bool]]


class Guard:
    """The dashboard's authorization and CSRF checks."""

    def __init__(self, authorize: Authorize | None, secret: bytes | None = None) -> None:
        self._authorize = authorize
        self._secret = secret or secrets.token_bytes(32)

    @property
    def read_only(self) -> bool:
        return self._authorize is None

    async def allows(self, request: Request, action: str) -> bool:
        """Whether `authorize` lets this request do `action`: only if it returns
        True (never without `authorize`; an exception in it refuses, and is logged)."""
        if self._authorize is None or action not in ACTIONS:
            return False
        try:
            answer = self._authorize(request, action)
            if inspect.isawaitable(answer):
                answer = await answer
        except Exception:  # noqa: BLE001 - the application's code: fail closed
            _log.exception("authorize(request, %r) failed: refused", action)
            return False
        return answer is True

    async def allowed(self, request: Request) -> dict[str, bool]:
        return {action: await self.allows(request, action) for action in ACTIONS}

    # -- CSRF -------------------------------------------------------------------------

    def _sign(self, nonce: str) -> str:
        return hmac.new(self._secret, nonce.encode(), hashlib.sha256).hexdigest()

    def new_token(self) -> str:
        nonce = secrets.token_urlsafe(24)
        return f"{nonce}.{self._sign(nonce)}"

    def valid_token(self, token: str | None) -> bool:
        if not token or token.count(".") != 1:
            return False
        nonce, signature = token.split(".")
        # Bytes: compare_digest refuses str holding non-ASCII (a forged cookie may).
        return hmac.compare_digest(signature.encode(), self._sign(nonce).encode())

    def token_for(self, request: Request) -> str:
        """The request's token (from its cookie) if valid, else a new one that the
        response sets (see `remember`)."""
        token = request.cookies.get(CSRF_COOKIE)
        if self.valid_token(token):
            assert token is not None
            return token
        fresh: str | None = request.scope.setdefault("state", {}).get("atriggers_new_csrf")
        if fresh is None:
            fresh = self.new_token()
            request.scope["state"]["atriggers_new_csrf"] = fresh
        return fresh

    def check_post(self, request: Request, form_token: str | None) -> str | None:
        """Why a POST is refused (None: its CSRF token and origin are fine)."""
        cookie = request.cookies.get(CSRF_COOKIE)
        if (
            not self.valid_token(cookie)
            or not form_token
            or not hmac.compare_digest(cookie or "", form_token)
        ):
            return "the form's CSRF token is missing or wrong: reload the page and try again"
        origin = request.headers.get("origin")
        if origin is not None:
            # The host the browser addressed: ours, or the one a proxy in front says.
            hosts = {request.headers.get("host"), request.headers.get("x-forwarded-host")}
            if origin.split("://", 1)[-1] not in hosts:
                return "the request came from another site"
        return None
