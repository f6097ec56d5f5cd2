from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from atriggers.storage import MemoryStorage, SQLiteStorage
from atriggers.testing.pytest_plugin import Registries


@pytest.fixture(autouse=True)
def _registries(atriggers_registries: Registries) -> Registries:
    """Every test runs with scoped registries: nothing it registers outlives it."""
    return atriggers_registries


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
