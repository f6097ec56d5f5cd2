"""The worker script of `SubprocessRunner` in the runner conformance suite:
``examples/custom_runner.py --run`` plus the suite's tasks.

Its cascades go to a `SubprocessRunner` running this script again, so the
grandchildren know the suite's tasks too.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

import atriggers.testing.conformance.tasks  # noqa: F401  (registers the suite's tasks)
from atriggers.runners import register_runner

HERE = Path(__file__).resolve()
spec = importlib.util.spec_from_file_location(
    "custom_runner", HERE.parents[2] / "examples" / "custom_runner.py"
)
assert spec is not None and spec.loader is not None
example = importlib.util.module_from_spec(spec)
sys.modules["custom_runner"] = example
spec.loader.exec_module(example)

register_runner(example.SubprocessRunner(script=HERE))

if __name__ == "__main__":
    asyncio.run(example.work(sys.argv[2]))
