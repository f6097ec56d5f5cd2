"""The `atriggers` command, run as a subprocess against real SQLite files."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

TASKS_MODULE = textwrap.dedent(
    """
    import asyncio

    from atriggers import task, with_context


    @task("app.echo")
    async def echo(context):
        return {"seen": sorted(context.trigger_kwargs)}


    @task("app.boom")
    async def boom(context):
        if context.trigger_kwargs.get("go", {}).get("fixed"):
            return {"fixed": True}
        raise with_context(ValueError("bad score"), {"score": 3})


    @task("app.slow")
    async def slow(context):
        await asyncio.sleep(30)
    """
)

CONFIG: dict[str, Any] = {
    "t_echo": {"after": ["go"], "run": "app.echo"},
    "t_boom": {"after": ["go"], "run": "app.boom"},
    "t_after_boom": {"after": ["t_boom"], "run": "app.echo"},
}


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


Cli = Callable[..., Result]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "apptasks.py").write_text(TASKS_MODULE, encoding="utf-8")
    (tmp_path / "config.json").write_text(json.dumps(CONFIG), encoding="utf-8")
    return tmp_path


@pytest.fixture
def url(workdir: Path) -> str:
    # Relative to the working directory of the command, as an operator types it.
    return "sqlite:///state.db"


@pytest.fixture
def cli(workdir: Path) -> Cli:
    def run(*args: str, stdin: str | None = None) -> Result:
        done = subprocess.run(
            [sys.executable, "-m", "atriggers", *args],
            cwd=workdir,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    return run


@pytest.fixture
def session(cli: Cli, url: str) -> str:
    """Session "s1" configured with CONFIG and fired: t_echo#0 finished, t_boom#0 failed."""
    assert cli("configure", url, "s1", "config.json").code == 0
    result = cli("fire", url, "s1", "go", "--kwargs", '{"x": 1}', "--import", "apptasks")
    assert result.code == 6, result
    return "s1"
