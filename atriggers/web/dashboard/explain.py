"""EXPLANATIONS GO HERE: "why hasn't it run?".

The explanation of a session (which trigger each waiting task still waits for,
why an instance failed or was skipped) is a pure function of the session's
state, `atriggers.explain.explain(state, now=...)`, built apart from the
dashboard. The session page shows what it returns in its "Why hasn't it run?"
section; where this release has no such function yet, that section says no
explanation is available. No explanation logic lives in the dashboard itself.
"""

from __future__ import annotations

import importlib
from typing import Any

from ...state import SessionState

__all__ = ["explanations"]


def _explain() -> Any:
    try:
        return importlib.import_module("atriggers.explain").explain
    except (ImportError, AttributeError):
        return None


def explanations(state: SessionState, now: float) -> list[str]:
    """One sentence per configured task saying where it stands and why (none
    without `atriggers.explain`: see the module's docstring)."""
    explain = _explain()
    if explain is None:
        return []
    return [str(explanation.text) for explanation in explain(state, now=now)]
