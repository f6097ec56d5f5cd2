"""`atriggers fire ... --key KEY` against a real SQLite file."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import Cli
from .test_sessions import snapshot


def test_fire_with_a_key_happens_once(cli: Cli, url: str, workdir: Path) -> None:
    (workdir / "every.json").write_text(
        json.dumps({"t_echo": {"after": [], "andEvery": "go", "run": "app.echo"}})
    )
    assert cli("configure", url, "k1", "every.json").code == 0
    first = cli("fire", url, "k1", "go", "--kwargs", '{"x": 1}', "--key", "req-1", "--import", "apptasks")
    assert first.code == 0, first
    assert "scheduled: t_echo#0" in first.out
    again = cli("fire", url, "k1", "go", "--kwargs", '{"x": 1}', "--key", "req-1", "--import", "apptasks")
    assert again.code == 0, again
    assert "scheduled: t_echo#0" in again.out
    other = cli("fire", url, "k1", "go", "--kwargs", '{"x": 2}', "--key", "req-1")
    assert other.code != 0
    assert "idempotency key 'req-1'" in other.err and "nothing was written" in other.err
    blank = cli("fire", url, "k1", "go", "--key", " ")
    assert blank.code != 0 and "idempotency key" in blank.err
    assert sorted(snapshot(Path(workdir), "k1").instances) == ["t_echo#0"]
