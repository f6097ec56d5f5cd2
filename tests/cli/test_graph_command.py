"""`atriggers graph`: Mermaid and DOT from a file, coloured by a stored session."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import Cli


def test_mermaid_from_a_file(cli: Cli) -> None:
    result = cli("graph", "config.json")
    assert result.code == 0, result
    assert result.out.startswith("flowchart LR\n")
    assert "task1 --> task2" in result.out  # t_boom cascades into t_after_boom
    assert "classDef" not in result.out


def test_dot_to_a_file(cli: Cli, workdir: Path) -> None:
    result = cli("graph", "config.json", "--format", "dot", "--output", "flow.dot")
    assert (result.code, result.out) == (0, "")
    text = (workdir / "flow.dot").read_text()
    assert text.startswith('digraph "workflow" {')
    if shutil.which("dot"):
        subprocess.run(
            ["dot", "-Tsvg", "-o", str(workdir / "flow.svg"), str(workdir / "flow.dot")],
            check=True,
            timeout=30,
        )
        assert "t_after_boom" in (workdir / "flow.svg").read_text()


def test_coloured_by_session(cli: Cli, url: str, session: str) -> None:
    result = cli("graph", "config.json", "--session", url, session)
    assert result.code == 0, result
    assert "    class task1 failed" in result.out
    assert "    class task0 finished" in result.out
    assert "    class task2 waiting" in result.out
    assert "    class trigger0 fired" in result.out
    # Without a file, the session's own configuration is drawn.
    stored = cli("graph", "--session", url, session, "--format", "dot")
    assert stored.code == 0
    assert 'tooltip="failed"' in stored.out


def test_graph_errors(cli: Cli, url: str, workdir: Path) -> None:
    assert cli("graph").code == 2
    (workdir / "bad.json").write_text(json.dumps({"t": {"after": "x", "run": "r"}}))
    bad = cli("graph", "bad.json")
    assert bad.code == 1 and "directive" in bad.err and "after" in bad.err
    assert cli("graph", "config.json", "--format", "png").code == 2
    assert cli("graph", "--session", url, "nobody").code == 3


@pytest.mark.parametrize("fmt", ["mermaid", "dot"])
def test_graph_of_the_documented_example_is_current(cli: Cli, fmt: str) -> None:
    """docs/cli.md shows the questionnaire's graph: it must be what the command prints."""
    root = Path(__file__).resolve().parents[2]
    config = root / "docs" / "examples" / "questionnaire.json"
    result = cli("graph", str(config), "--format", fmt)
    assert result.code == 0
    docs = (root / "docs" / "cli.md").read_text(encoding="utf-8")
    if fmt == "mermaid":
        assert f"```mermaid\n{result.out}```" in docs
    else:
        assert (root / "docs" / "examples" / "questionnaire.dot").read_text() == result.out
