"""pytest plugin (entry point ``pytest11``): fixtures for testing workflows.

Loaded automatically when atriggers is installed. Fixtures (async ones need
pytest-asyncio: ``pip install 'atriggers[testing]'``):

- ``atriggers_database``: path of a fresh SQLite file in the test's ``tmp_path``.
- ``atriggers_storage``: an open `SQLiteStorage` on it, closed after the test;
  on the ``atriggers_clock`` if the test uses that fixture, else on real time.
- ``atriggers_clock``: a `FakeClock` that moves only when the test says
  (``await atriggers_clock.advance(3600)``): ``within`` windows, cooldowns,
  ``timeout`` deadlines and delayed fires are tested without waiting.
- ``atriggers_sweeper``: a `Sweeper` for ``atriggers_storage`` using
  ``atriggers_tasks`` (``await atriggers_sweeper.run_once()`` acts on what is
  due; ``async with atriggers_sweeper:`` runs it in the background).
- ``atriggers_tasks``: a task registry for the test: tasks registered on it
  vanish after the test; names it does not know resolve through the global
  registry (``@task``) and entry points. Stock tasks are pre-registered:
  `PASS_THRU`, `DEV_NULL`, `FAILING`, `SELF_SKIPPING`.
- ``atriggers_registries``: the global task, runner, manager and storage
  registries, scoped to the test: whatever the test registers (or
  unregisters) there is undone after it.
- ``atriggers_uid``: the session id, ``"test-session"``.
- ``atriggers_manager``: a `TriggerManager` for that session, using
  ``atriggers_tasks``; configured from the ``atriggers_configuration`` marker if
  the test has one::

      @pytest.mark.atriggers_configuration({"t_a": {"after": ["go"], "run": PASS_THRU}})
      async def test_it(atriggers_manager):
          await atriggers_manager.fire("go", {"x": 1})
          await atriggers_manager.join()
          await assert_instance_finished(atriggers_manager, "t_a#0")
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ..clock import FakeClock
from ..context import TaskContext
from ..manager import TriggerManager
from ..manager import managers as global_managers
from ..registry import Registry
from ..runners import RunnerRegistry
from ..runners import runners as global_runners
from ..storage import SQLiteStorage, StorageFactory
from ..storage import storages as global_storages
from ..sweeper import Sweeper
from ..tasks import TaskRegistry
from ..tasks import registry as global_registry

__all__ = [
    "DEV_NULL",
    "FAILING",
    "PASS_THRU",
    "SELF_SKIPPING",
    "Registries",
    "TestTaskRegistry",
]

PASS_THRU = "atriggers.testing.pass_thru"
DEV_NULL = "atriggers.testing.dev_null"
FAILING = "atriggers.testing.failing"
SELF_SKIPPING = "atriggers.testing.self_skipping"
MARKER = "atriggers_configuration"


async def _pass_thru(context: TaskContext) -> dict[str, Any]:
    """Returns the kwargs it received, so tests can check what got through."""
    return {"kwargs": context.trigger_kwargs}


async def _dev_null(context: TaskContext) -> dict[str, Any]:
    return {}


async def _failing(context: TaskContext) -> None:
    raise RuntimeError("You weren't supposed to see that.")


async def _self_skipping(context: TaskContext) -> None:
    raise context.skip({"kwargs": context.trigger_kwargs})


class TestTaskRegistry(TaskRegistry):
    """A registry layered over the global one: its own tasks first, then the
    global registry and its entry points."""

    __test__ = False  # not a test class, whatever pytest's naming rules say

    def __init__(self, fallback: TaskRegistry = global_registry) -> None:
        super().__init__(entry_point_group=None, fallback=fallback)


def _make_registry() -> TestTaskRegistry:
    tasks = TestTaskRegistry()
    stock: dict[str, Callable[..., Any]] = {
        PASS_THRU: _pass_thru,
        DEV_NULL: _dev_null,
        FAILING: _failing,
        SELF_SKIPPING: _self_skipping,
    }
    for name, function in stock.items():
        tasks.register(function, name)
    return tasks


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(configuration): configuration the atriggers_manager fixture is given before the test runs",
    )


@pytest.fixture
def atriggers_database(tmp_path: Path) -> Path:
    """Path of a fresh SQLite database file for the test."""
    return tmp_path / "atriggers.sqlite3"


@pytest.fixture
def atriggers_tasks() -> TestTaskRegistry:
    """A per-test task registry (stock tasks included), layered over ``@task``'s."""
    return _make_registry()


@dataclass(frozen=True)
class Registries:
    """The global registries, as the ``atriggers_registries`` fixture gives them."""

    tasks: TaskRegistry
    runners: RunnerRegistry
    managers: Registry[type[TriggerManager]]
    storages: Registry[StorageFactory]


@pytest.fixture
def atriggers_registries() -> Iterator[Registries]:
    """The global registries, restored after the test to what they held before."""
    with (
        global_registry.scoped(),
        global_runners.scoped(),
        global_managers.scoped(),
        global_storages.scoped(),
    ):
        yield Registries(global_registry, global_runners, global_managers, global_storages)


@pytest.fixture
def atriggers_uid() -> str:
    """The id of the session ``atriggers_manager`` works on."""
    return "test-session"


try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - exercised only without the testing extra
    pytest_asyncio = None  # type: ignore[assignment]


def _async_fixture(function: Callable[..., Any]) -> Any:
    """`pytest_asyncio.fixture`, or without pytest-asyncio a fixture that says
    what to install (the plugin must never break a test session by loading)."""
    if pytest_asyncio is not None:
        return pytest_asyncio.fixture(function)

    def missing() -> None:  # pragma: no cover
        pytest.fail(
            f"the {function.__name__} fixture needs pytest-asyncio: pip install 'atriggers[testing]'",
            pytrace=False,
        )

    return pytest.fixture(missing, name=function.__name__)


@pytest.fixture
def atriggers_clock() -> FakeClock:
    """A clock for the test's storage that moves only with ``await clock.advance(s)``."""
    return FakeClock()


@_async_fixture
async def atriggers_storage(
    request: pytest.FixtureRequest, atriggers_database: Path
) -> AsyncIterator[SQLiteStorage]:
    """An open SQLite storage on a temporary file; closing it after the test
    waits for in-process runs still going. Its clock is ``atriggers_clock``
    when the test uses that fixture."""
    clock = request.getfixturevalue("atriggers_clock") if "atriggers_clock" in request.fixturenames else None
    async with SQLiteStorage(atriggers_database, clock=clock) as storage:
        yield storage


@_async_fixture
async def atriggers_sweeper(
    atriggers_storage: SQLiteStorage, atriggers_tasks: TestTaskRegistry
) -> AsyncIterator[Sweeper]:
    """A sweeper of ``atriggers_storage`` (not started: call ``run_once()``, or
    use it as ``async with``)."""
    sweeper = Sweeper(atriggers_storage, tasks=atriggers_tasks)
    yield sweeper
    await sweeper.aclose()


@_async_fixture
async def atriggers_manager(
    request: pytest.FixtureRequest,
    atriggers_storage: SQLiteStorage,
    atriggers_uid: str,
    atriggers_tasks: TestTaskRegistry,
) -> AsyncIterator[TriggerManager]:
    """A manager for ``atriggers_uid`` on ``atriggers_storage`` (asyncio
    runner), configured from the ``atriggers_configuration`` marker if any."""
    manager = TriggerManager(atriggers_storage, atriggers_uid, tasks=atriggers_tasks)
    marker = request.node.get_closest_marker(MARKER)
    if marker is not None:
        if len(marker.args) != 1 or marker.kwargs:
            raise pytest.UsageError(f"@pytest.mark.{MARKER} takes one argument: the configuration dict")
        await manager.update_configuration(marker.args[0])
    yield manager
    await manager.join()
