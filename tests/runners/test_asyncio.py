"""The runner conformance suite over the in-process asyncio runner."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from atriggers.runners import AsyncioRunner
from atriggers.storage import MemoryStorage
from atriggers.testing.conformance import RunnerConformance, RunnerHarness


class TestAsyncioRunnerConformance(RunnerConformance):
    @pytest.fixture
    async def runner_harness(self) -> AsyncIterator[RunnerHarness]:
        async with MemoryStorage() as storage:
            yield RunnerHarness(AsyncioRunner(), storage, in_process=True)
