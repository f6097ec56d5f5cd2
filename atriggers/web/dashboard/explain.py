"""EXPLANATIONS GO HERE: "why hasn't it run?".

The explanation of a session (which trigger each waiting task still waits for,
which condition holds it back) is a pure function of the session's state, built
separately from the dashboard. Once it exists, `explanations` calls it and the
session page shows what it returns in its "Why hasn't it run?" section; until
then that section says no explanation is available. No explanation logic lives
in the dashboard itself.
"""

from __future__ import annotations

from ...state import SessionState

__all__ = ["explanations"]


def explanations(state: SessionState) -> list[str]:
    """One sentence per thing that explains the session's state (none yet: see
    the module's docstring)."""
    return []
