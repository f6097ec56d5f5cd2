from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from atriggers.storage import MemoryStorage, SQLiteStorage
from atriggers.testing.postgres import PostgresCluster
from atriggers.testing.pytest_plugin import Registries


@pytest.fixture
def loop_iterations() -> Callable[[], AbstractContextManager[list[int]]]:
    """``with loop_iterations() as count:`` counts the running loop's iterations
    (its ``_run_once`` calls) inside the block, in ``count[0]``: what an
    operation costs in turns of the event loop."""

    @contextmanager
    def counting() -> Iterator[list[int]]:
        loop = asyncio.get_running_loop()
        count = [0]
        original = loop._run_once  # type: ignore[attr-defined]

        def counted() -> None:
            count[0] += 1
            original()

        loop._run_once = counted  # type: ignore[attr-defined]
        try:
            yield count
        finally:
            del loop._run_once  # type: ignore[attr-defined]

    return counting


@pytest.fixture(autouse=True)
def _registries(atriggers_registries: Registries) -> Registries:
    """Every test runs with scoped registries: nothing it registers outlives it."""
    return atriggers_registries


#: `ATRIGGERS_TEST_EAGER_TASKS=1` runs every async test on a loop in debug mode
#: whose tasks start eagerly (Python 3.12+), as `.ci/run` does once: code that
#: assumes a coroutine passed to `create_task` has not started yet breaks there.
EAGER_TASKS = os.environ.get("ATRIGGERS_TEST_EAGER_TASKS") == "1"


def pytest_configure(config: pytest.Config) -> None:
    if not EAGER_TASKS:
        return
    if sys.version_info < (3, 12):
        raise pytest.UsageError(
            "ATRIGGERS_TEST_EAGER_TASKS=1 needs Python 3.12+ (asyncio.eager_task_factory)"
        )
    # pytest-asyncio's runner sets the loop's debug flag from this option after
    # our factory made the loop, so it is the option that must say so.
    config.option.asyncio_debug = True


def pytest_report_header(config: pytest.Config) -> str | None:
    return "asyncio: eager task factory, debug mode" if EAGER_TASKS else None


if EAGER_TASKS and sys.version_info >= (3, 12):

    def _eager_loop() -> asyncio.AbstractEventLoop:
        loop = asyncio.new_event_loop()
        loop.set_task_factory(asyncio.eager_task_factory)
        return loop

    def pytest_asyncio_loop_factories(
        config: pytest.Config, item: pytest.Item
    ) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
        return {"eager": _eager_loop}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
async def sqlite_storage(db_path: Path) -> AsyncIterator[SQLiteStorage]:
    async with SQLiteStorage(db_path) as storage:
        yield storage


@pytest.fixture
async def memory_storage() -> AsyncIterator[MemoryStorage]:
    async with MemoryStorage() as storage:
        yield storage


# -- PostgreSQL: one private cluster for the whole run -----------------------------------


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL server of this test run only (initdb into a temporary
    directory, 127.0.0.1, a free port), stopped at the end. Tests that need it
    are skipped where PostgreSQL is not installed (scripts/install installs it),
    and fail in CI."""
    cluster = PostgresCluster.find()
    if cluster is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (scripts/install installs it)")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    pytest.importorskip("asyncpg", reason="the postgres extra is not installed")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """The URL of a new, empty store: a PostgreSQL schema of this test's own."""
    return f"{postgres_cluster.url}?schema=t{uuid.uuid4().hex[:12]}"
