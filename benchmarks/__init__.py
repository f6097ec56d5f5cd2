"""The atriggers benchmark suite: ``python -m benchmarks [--quick]``.

Every scenario checks its outcome (instance counts, statuses, versions) and reports
throughput, latency per fire and memory; every target is a ratio against something
measured in the same run (the storage's own round trips and writes, the same fires
in a smaller session or from one process, taskiq's in-memory broker). See
docs/performance.md.
"""

import os as _os
import sys as _sys

# `python -m benchmarks.compare` measures another checkout's library with this
# suite: its atriggers package must come before this checkout's (the current
# directory, first on sys.path under -m) in every interpreter the suite starts.
if _os.environ.get("ATRIGGERS_BENCH_LIBRARY"):
    _sys.path.insert(0, _os.environ["ATRIGGERS_BENCH_LIBRARY"])
