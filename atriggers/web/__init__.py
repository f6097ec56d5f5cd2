"""ASGI integration: `Triggers` opens one storage per process with the app.

This package needs no web framework; FastAPI helpers need the ``web`` extra.
"""

from .integration import ASGIApp, Message, Receive, Scope, Send, Triggers, status_code_for

__all__ = ["ASGIApp", "Message", "Receive", "Scope", "Send", "Triggers", "status_code_for"]
