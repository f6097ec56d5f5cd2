"""ASGI integration: `Triggers` opens one storage per process with the app;
`dashboard` is the operator dashboard, an ASGI app to mount.

This package needs no web framework; FastAPI helpers need the ``web`` extra,
the dashboard the ``dashboard`` extra.
"""

# Bound after the subpackage's import: `atriggers.web.dashboard` is the function.
from .dashboard import dashboard
from .integration import ASGIApp, Message, Receive, Scope, Send, Triggers, status_code_for
from .keys import IDEMPOTENCY_HEADER, FireEndpoint, fire_outcome, idempotency_key

__all__ = [
    "IDEMPOTENCY_HEADER",
    "ASGIApp",
    "FireEndpoint",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "Triggers",
    "dashboard",
    "fire_outcome",
    "idempotency_key",
    "status_code_for",
]
