"""Names resolve through registries and installed entry points, never through
imports named by a configuration."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from atriggers import Status, TaskContext, TriggerError, TriggerManager, get_manager_class
from atriggers.errors import DispatchError, UnknownManager, UnknownRunner, UnknownStorage, UnknownTask
from atriggers.runners import (
    AsyncioRunner,
    RunnerRegistry,
    get_runner,
    register_runner,
    runners,
    unregister_runner,
)
from atriggers.storage import SQLiteStorage, open_storage
from atriggers.tasks import registry as tasks


async def echo(context: TaskContext) -> dict[str, object]:
    return {}


tasks.register(echo, "tests.registries.echo")


async def test_run_never_imports_a_dotted_path(sqlite_storage: SQLiteStorage, tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    module = tmp_path / "evil_tasks.py"
    module.write_text(f"open({str(marker)!r}, 'w').close()\ndef run(context):\n    return {{}}\n")
    sys.path.insert(0, str(tmp_path))
    try:
        manager = TriggerManager(sqlite_storage, "no-imports")
        await manager.update_configuration(
            {"t": {"after": ["go"], "run": "evil_tasks.run", "using": "asyncio"}}
        )
        await manager.fire("go")
        await manager.join()
        failed = (await manager.get_state()).instances["t#0"]
    finally:
        sys.path.remove(str(tmp_path))
    assert failed.status is Status.FAILED
    assert failed.metadata["exceptionType"] == "atriggers.errors.UnknownTask"
    assert not marker.exists()
    assert "evil_tasks" not in sys.modules


def test_entry_points_provide_tasks_runners_and_managers(tmp_path: Path) -> None:
    """A real installed distribution (a dist-info folder on sys.path) declares a
    task, a runner and a manager; a fresh process finds all three by name."""
    dist = tmp_path / "acme_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        textwrap.dedent("""
        [atriggers.tasks]
        acme.hello = acme_plugin:hello

        [atriggers.runners]
        acme = acme_plugin:AcmeRunner

        [atriggers.managers]
        acme = acme_plugin:AcmeManager

        [atriggers.storages]
        acme = acme_plugin:AcmeStorage
        """)
    )
    (tmp_path / "acme_plugin.py").write_text(
        textwrap.dedent("""
        from atriggers import TriggerManager
        from atriggers.runners import AsyncioRunner
        from atriggers.storage import MemoryStorage

        async def hello(context):
            return {"hello": context.uid}

        class AcmeRunner(AsyncioRunner):
            name = "acme"

        class AcmeManager(TriggerManager):
            manager_name = "acme"

        class AcmeStorage(MemoryStorage):
            scheme = "acme"
        """)
    )
    script = textwrap.dedent(f"""
        import asyncio
        from atriggers import get_manager_class
        from atriggers.runners import get_runner
        from atriggers.storage import SQLiteStorage, open_storage

        async def main():
            assert type(open_storage("acme://")).__name__ == "AcmeStorage"
            cls = get_manager_class("acme")
            assert cls.__name__ == "AcmeManager", cls
            assert type(get_runner("acme")).__name__ == "AcmeRunner"
            async with SQLiteStorage({str(tmp_path / "s.db")!r}) as storage:
                manager = cls(storage, "plugin")
                await manager.update_configuration(
                    {{"t": {{"after": ["go"], "run": "acme.hello", "using": "acme"}}}})
                await manager.fire("go")
                await manager.join()
                state = await manager.get_state()
                print(state.instances["t#0"].status, state.instances["t#0"].result)

        asyncio.run(main())
    """)
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "finished {'hello': 'plugin'}"


async def test_run_requests_carry_the_default_runner_and_refuse_unregistered_managers(
    sqlite_storage: SQLiteStorage,
) -> None:
    from atriggers import InvalidInput, TaskInstance, register_manager
    from atriggers.remote import RunRequest

    instance = TaskInstance("t#0", "t")
    plain = TriggerManager(sqlite_storage, "u", default_runner="celery")
    request = RunRequest.for_instance(plain, instance)
    assert request.runner == "celery"
    assert RunRequest.from_dict(request.to_dict()) == request
    assert RunRequest.for_instance(TriggerManager(sqlite_storage, "u"), instance).runner is None

    class Hooked(TriggerManager):
        async def post_fire(self, trigger_name: str, tasks_scheduled: list[TaskInstance]) -> None:
            pass

    with pytest.raises(InvalidInput, match="register_manager"):
        RunRequest.for_instance(Hooked(sqlite_storage, "u"), instance)

    @register_manager
    class Named(Hooked):
        manager_name = "tests-hooked"

    assert RunRequest.for_instance(Named(sqlite_storage, "u"), instance).manager == "tests-hooked"


@pytest.mark.parametrize(
    ("lookup", "error", "known"),
    [
        (lambda: tasks.get("nope.task"), UnknownTask, "tests.registries.echo"),
        (lambda: get_runner("nope"), UnknownRunner, "asyncio"),
        (lambda: get_manager_class("nope"), UnknownManager, "default"),
        (lambda: open_storage("nope://x"), UnknownStorage, "memory, sqlite"),
    ],
)
def test_every_unknown_name_is_a_trigger_error_naming_what_is_known(
    lookup: Callable[[], object], error: type[TriggerError], known: str
) -> None:
    with pytest.raises(error) as caught:
        lookup()
    assert isinstance(caught.value, TriggerError) and isinstance(caught.value, LookupError)
    assert "'nope" in str(caught.value) and known in str(caught.value)


def test_unknown_runner_is_a_dispatch_error_and_unknown_storage_a_value_error() -> None:
    assert issubclass(UnknownRunner, DispatchError)
    assert issubclass(UnknownStorage, ValueError)


def test_scoped_registries_undo_registrations() -> None:
    class Temporary(AsyncioRunner):
        name = "temporary"

    with runners.scoped(), tasks.scoped():
        register_runner(Temporary())
        unregister_runner("asyncio")
        tasks.register(echo, "tests.registries.temporary")
        assert "temporary" in runners and "asyncio" not in runners
    assert "temporary" not in runners and isinstance(get_runner("asyncio"), AsyncioRunner)
    assert "tests.registries.temporary" not in tasks


def test_a_manager_takes_its_own_runners(sqlite_storage: SQLiteStorage) -> None:
    own = RunnerRegistry(fallback=runners)
    own.register(AsyncioRunner(max_concurrency=1), "mine")
    manager = TriggerManager(sqlite_storage, "own-runners", runners=own, default_runner="mine")
    assert manager.runners.get("mine") is not runners.get("asyncio")
    assert manager.runners.get("asyncio") is runners.get("asyncio")
    assert "mine" not in runners
