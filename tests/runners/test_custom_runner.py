"""examples/custom_runner.py: a third-party style runner, registered by name,
running instances in subprocesses through atriggers.remote."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import pytest

from atriggers import Status
from atriggers.runners import get_runner
from atriggers.storage import SQLiteStorage
from atriggers.testing.conformance import RunnerConformance, RunnerHarness

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_runner.py"
WORKER = Path(__file__).resolve().parent / "subprocess_worker.py"


def load() -> ModuleType:
    module = sys.modules.get("custom_runner")
    if module is None:
        spec = importlib.util.spec_from_file_location("custom_runner", EXAMPLE)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["custom_runner"] = module
        spec.loader.exec_module(module)
    return module


example = load()


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    async with SQLiteStorage(tmp_path / "photos.db") as storage:
        yield storage


def test_the_runner_is_registered_by_name() -> None:
    runner = get_runner("subprocess")
    assert isinstance(runner, example.SubprocessRunner)


async def test_instances_and_cascades_run_in_other_processes(storage: SQLiteStorage) -> None:
    manager = example.IsolatedManager(storage, "album")
    await manager.update_configuration(example.CONFIGURATION)
    await manager.fire("uploaded", {"photo": "cat.jpg"})
    await manager.join()  # the runner's tracked tasks wait for the processes
    state = await manager.get_state()
    assert {n: i.status for n, i in state.instances.items()} == {
        "t_resize#0": Status.FINISHED,
        "t_publish#0": Status.FINISHED,
        "t_scan#0": Status.FINISHED,
    }
    resize, publish = state.instances["t_resize#0"], state.instances["t_publish#0"]
    assert resize.result is not None and publish.result is not None
    assert publish.result["url"] == "https://photos.example/cat.jpg"
    pids = {resize.result["pid"], publish.result["pid"], os.getpid()}
    assert len(pids) == 3  # the cascade ran in a process of its own too


async def test_a_crashed_process_fails_its_instance_replayably(storage: SQLiteStorage) -> None:
    manager = example.IsolatedManager(storage, "crash")
    await manager.update_configuration(example.CONFIGURATION)
    await manager.fire("uploaded", {"photo": "dog.jpg", "corrupt": True})
    await manager.join()
    scan = await manager.get_instance("t_scan#0")
    assert scan.status is Status.FAILED
    assert scan.metadata["exceptionType"] == "builtins.RuntimeError"
    assert "exited with status 3" in scan.metadata["exceptionInfo"]
    clone = await manager.replay_failed_instance(scan, {"uploaded": {"photo": "dog.jpg"}})
    await manager.join()
    assert (await manager.get_instance(clone.name)).status is Status.FINISHED


def test_the_example_script_runs(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLE), str(tmp_path / "state.db")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "t_publish#0  finished" in out.stdout
    assert "t_scan#0     failed    RuntimeError: worker process exited with status 3" in out.stdout


class TestSubprocessRunnerConformance(RunnerConformance):
    @pytest.fixture
    async def runner_harness(self, storage: SQLiteStorage, tmp_path: Path) -> RunnerHarness:
        return RunnerHarness(
            example.SubprocessRunner(script=WORKER),
            storage,
            # The worker process cannot even start: it exits with status 2.
            unreachable=example.SubprocessRunner(script=tmp_path / "missing.py"),
        )
