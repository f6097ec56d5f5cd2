"""`atriggers validate`, `schema` and the command itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import atriggers
from atriggers.cli import ExitCode, main
from atriggers.schema import schema_json

from .conftest import SCRIPT, Cli


def test_console_script_is_installed(console: Cli) -> None:
    assert SCRIPT.exists(), "pip install -e . should install the atriggers script"
    done = console("--version")
    assert done.code == 0 and done.out.startswith("atriggers ")


def test_help_lists_commands_and_exit_codes(cli: Cli) -> None:
    result = cli("--help")
    assert result.code == 0
    for command in ("validate", "show", "fire", "replay", "skip", "sessions", "graph", "schema"):
        assert command in result.out
    assert "3 not_found" in result.out


def test_valid_configuration(cli: Cli) -> None:
    result = cli("validate", "config.json")
    assert (result.code, result.out) == (0, "config.json: valid configuration (3 tasks)\n")


def test_every_problem_is_listed_with_task_and_directive(cli: Cli, workdir: Path) -> None:
    bad = {
        "t_a": {"after": "go", "run": "app.a"},
        "t_b": {"after": [], "run": "app.b", "withParams": {"x": 1}},
        "t_c": {"run": 3},
        "t_ok": {"after": ["go"], "run": "app.ok"},
    }
    (workdir / "bad.json").write_text(json.dumps(bad))
    result = cli("validate", "bad.json")
    assert result.code == 1
    lines = result.out.splitlines()
    assert lines[0] == "bad.json: 5 problem(s)"
    assert lines[1].split() == ["task", "directive", "problem"]
    rows = [line.split(maxsplit=2) for line in lines[3:]]
    assert [(r[0], r[1]) for r in rows] == [
        ("t_a", "after"),
        ("t_b", "withParams"),
        ("t_b", "after"),
        ("t_c", "after"),
        ("t_c", "run"),
    ]
    assert "not a single string" in rows[0][2]

    as_json = cli("validate", "bad.json", "--json")
    assert as_json.code == 1
    data = as_json.json()
    assert data["valid"] is False
    assert {"task": "t_c", "directive": "after", "message": "is required"} in data["problems"]


def test_configuration_that_is_not_an_object(cli: Cli) -> None:
    result = cli("validate", "-", stdin="[1, 2]")
    assert result.code == 1
    assert "configuration must be a dict" in result.out


def test_bad_json_file_names_line_and_column(cli: Cli, workdir: Path) -> None:
    (workdir / "broken.json").write_text('{\n  "t_a": {"after": ["go"],}\n}')
    result = cli("validate", "broken.json")
    assert result.code == 2
    assert result.err.startswith("atriggers: error: broken.json:2:")
    assert "not valid JSON" in result.err


def test_missing_file(cli: Cli) -> None:
    result = cli("validate", "nope.json")
    assert result.code == 2
    assert "no such file 'nope.json'" in result.err


def test_unknown_command_and_option(cli: Cli) -> None:
    assert cli("explode").code == 2
    result = cli("show", "sqlite:///x.db")
    assert result.code == 2 and "UID" in result.err


def test_schema_command(cli: Cli, workdir: Path) -> None:
    result = cli("schema")
    assert (result.code, result.out) == (0, schema_json())
    assert cli("schema", "--output", "s.json").code == 0
    assert (workdir / "s.json").read_text() == schema_json()
    checked = cli("schema", "--check", "s.json")
    assert checked.code == 0 and "up to date" in checked.out
    (workdir / "s.json").write_text("{}")
    stale = cli("schema", "--check", "s.json")
    assert stale.code == 1 and "out of date" in stale.err


@pytest.mark.parametrize("module", ["atriggers", "atriggers.cli"])
def test_python_dash_m(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout == f"atriggers {atriggers.__version__}\n"


def test_main_returns_the_code_of_help_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """`main` is a function for Python callers: argparse's exits become return values."""
    assert main(["--version"]) == 0
    assert main(["show"]) == ExitCode.USAGE
    assert "the following arguments are required" in capsys.readouterr().err
