"""The atriggers benchmark suite: ``python -m benchmarks [--quick]``.

Every scenario checks its outcome (instance counts, statuses, versions) and reports
throughput, latency per fire and memory; every target is a ratio against something
measured in the same run (the storage's own round trips and writes, the same fires
in a smaller session or from one process, taskiq's in-memory broker). See
docs/performance.md.
"""
