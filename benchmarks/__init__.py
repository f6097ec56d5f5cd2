"""The atriggers benchmark suite (issue 7): ``python -m benchmarks [--quick]``.

Every scenario runs in a fresh interpreter, checks its outcome (instance counts,
statuses, versions) and reports throughput, latency per fire and memory next to
baselines measured in the same run. See docs/performance.md.
"""
