"""rich tables and progress bars on a terminal; plain text otherwise, or
without rich installed."""

from __future__ import annotations

import io
import sys

import pytest

from atriggers.cli import style
from atriggers.cli.render import table


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


ROWS = [["t#0", "failed"], ["t#1", "running for 14 min (OVERDUE)"]]


def test_plain_text_when_not_a_terminal() -> None:
    assert not style.active(io.StringIO())
    assert table(ROWS, ["instance", "status"]).splitlines()[1] == "--------  ----------------------------"


def test_rich_tables_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr(sys, "stdout", Terminal())
    assert style.active()
    drawn = table(ROWS, ["instance", "status"])
    assert "\x1b[1;31mfailed" in drawn  # failed in bold red
    assert "\x1b[34mrunning for 14 min (OVERDUE)" in drawn
    assert "-----" not in drawn


def test_plain_without_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rich", None)  # as if not installed
    assert not style.active(Terminal())
    with style.progress(3, "repairing", Terminal()) as advance:
        advance(3)


def test_progress_bar_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm")
    out = Terminal()
    with style.progress(4, "repairing", out) as advance:
        advance(2)
        advance(2)
    assert "repairing" in out.getvalue() and "4/4" in out.getvalue()
    quiet = io.StringIO()
    with style.progress(4, "repairing", quiet) as advance:
        advance(4)
    assert quiet.getvalue() == ""
