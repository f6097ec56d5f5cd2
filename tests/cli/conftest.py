"""The `atriggers` command against real SQLite files.

`cli` runs it in this process through `atriggers.cli.main` (so coverage sees
it); `console` runs the installed console script, for what only a real process
shows (the entry point, exit statuses, tasks run in that process).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import sysconfig
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from atriggers.cli import main
from atriggers.tasks import registry

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
def cli(workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Cli]:
    """Run the command in this process, in `workdir`, as an operator would type it."""
    monkeypatch.chdir(workdir)
    # `--import` puts the working directory on sys.path and registers the
    # module's tasks: none of it may outlive the test (another test checks what
    # happens when the tasks are *not* imported).
    monkeypatch.setattr(sys, "path", list(sys.path))
    tasks_before = set(registry)

    def run(*args: str, stdin: str | None = None) -> Result:
        capsys.readouterr()
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = main(list(args))
        out, err = capsys.readouterr()
        return Result(code, out, err)

    yield run
    for name in set(registry) - tasks_before:
        registry.unregister(name)
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(workdir)):
            del sys.modules[name]


#: The ``atriggers`` script pip installed next to this interpreter.
SCRIPT = Path(sysconfig.get_path("scripts")) / "atriggers"


@pytest.fixture
def console(workdir: Path) -> Cli:
    """Run the installed ``atriggers`` console script in `workdir`."""

    def run(*args: str, stdin: str | None = None) -> Result:
        done = subprocess.run(
            [str(SCRIPT), *args],
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
