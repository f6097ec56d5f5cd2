"""`atriggers worker`: a standalone sweeper, in this process and as the console script."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

from atriggers import Status, TriggerManager
from atriggers.storage import SQLiteStorage

from .conftest import SCRIPT, Cli
from .test_sessions import snapshot


async def _fire_later(workdir: Path, delay: float) -> None:
    """Store a delayed fire of "go" into session s1, from a process that is gone
    (closed) before it is due: only a sweeper can apply it."""
    async with SQLiteStorage(workdir / "state.db") as storage:
        manager = TriggerManager(storage, "s1")
        await manager.update_configuration({"t_echo": {"after": ["go"], "run": "app.echo"}})
        assert await manager.fire("go", {"x": 1}, delay=delay) == []


def test_worker_once_applies_what_is_due(cli: Cli, url: str, workdir: Path) -> None:
    asyncio.run(_fire_later(workdir, 0.05))
    time.sleep(0.1)
    result = cli("worker", url, "--once", "--import", "apptasks")
    assert result.code == 0, result
    assert result.out.strip() == "handled 1 due entry: 1 delay"
    assert snapshot(workdir).instances["t_echo#0"].status is Status.FINISHED
    again = cli("worker", url, "--once")
    assert again.out.strip() == "handled 0 due entries: nothing"


def test_worker_refuses_bad_settings(cli: Cli, url: str, workdir: Path) -> None:
    asyncio.run(_fire_later(workdir, 60))
    result = cli("worker", url, "--interval", "0")
    assert result.code == 2 and "--interval and --lease must be positive" in result.err
    assert cli("worker", "sqlite:///missing.db", "--once").code == 3


def test_the_worker_runs_until_stopped(url: str, workdir: Path) -> None:
    worker = subprocess.Popen(
        [str(SCRIPT), "worker", url, "--interval", "0.05", "--import", "apptasks"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        asyncio.run(_fire_later(workdir, 0.2))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            instance = snapshot(workdir).instances.get("t_echo#0")
            if instance is not None and instance.status is Status.FINISHED:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"the worker did not apply the delayed fire: {snapshot(workdir)}")
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=20)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0, err
    assert "sweeping <SQLiteStorage" in err and "stopping after 1 delay" in err
