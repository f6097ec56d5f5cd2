"""The session page's "Why hasn't it run?" section: `atriggers.explain` as
rows (code, subject, sentence), the same story ``atriggers why`` tells."""

from __future__ import annotations

from dataclasses import dataclass

from ...explain import explain
from ...state import SessionState

__all__ = ["ExplanationRow", "explanations"]


@dataclass(frozen=True, slots=True)
class ExplanationRow:
    code: str
    #: The instance explained, else the task (a task with no instance yet).
    subject: str
    text: str


def explanations(state: SessionState, now: float) -> list[ExplanationRow]:
    """One row per configured task: where it stands and why."""
    return [ExplanationRow(e.code, e.instance or e.task, e.text) for e in explain(state, now=now)]
