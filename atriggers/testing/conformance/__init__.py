"""Conformance suites for plug-ins: `StorageConformance` for storage backends,
`RunnerConformance` for runners. Subclass one in a test module and provide its
fixture (see docs/storage.md and docs/runners.md).

The suites need pytest and pytest-asyncio; register this package for assertion
rewriting before importing it (``pytest.register_assert_rewrite(
"atriggers.testing.conformance")`` in a conftest.py) to get detailed failures.
"""

from .runners import Redeliver, RunnerConformance, RunnerHarness
from .storage import StorageConformance, StorageFactory

__all__ = ["Redeliver", "RunnerConformance", "RunnerHarness", "StorageConformance", "StorageFactory"]
