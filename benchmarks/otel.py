"""What OpenTelemetry costs a fire: `fire_warm_never_runnable` in four set-ups, interleaved.

    python -m benchmarks.otel                      # 8 rounds
    python -m benchmarks.otel --rounds 12 --before /path/to/older/checkout

Each round runs ``python -m benchmarks --only fire_idle`` (the scenario's older
name, which both older checkouts and this one accept) on SQLite and on memory
once per set-up, in turn, so that the machine's load hits them alike; the table gives, for each
set-up, the median and the lowest p50 latency of a fire over the rounds and
the median rate, each with its ratio to the reference (``before`` when given,
else ``no-extra``):

- ``before``: another checkout (a directory holding ``atriggers/`` and
  ``benchmarks/``, e.g. ``git worktree add`` of an earlier commit);
- ``no-extra``: this checkout, with opentelemetry made unimportable;
- ``api``: opentelemetry-api importable, no SDK configured;
- ``sdk``: the SDK recording every span (batch processor, in-memory exporter)
  and every metric (in-memory reader), set up in a ``sitecustomize``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_BLOCK = "raise ImportError('opentelemetry made unimportable for the benchmark')\n"
_SDK = """\
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

_provider = TracerProvider()
_provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
trace.set_tracer_provider(_provider)
metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
"""


#: The scenario's name, and its name in checkouts older than the rename (which
#: this checkout's ``--only`` still accepts).
_SCENARIO, _OLD_NAME = "fire_warm_never_runnable", "fire_idle"


def _run(cwd: Path, pythonpath: str | None, out: Path) -> list[dict[str, object]]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    rows: list[dict[str, object]] = []
    for storage in ("sqlite", "memory"):  # the two the table shows
        command = [sys.executable, "-m", "benchmarks", "--only", _OLD_NAME, "--storage", storage]
        subprocess.run(
            [*command, "--json", str(out)], cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL
        )
        rows += json.loads(out.read_text())["rows"]
    return [row for row in rows if row["scenario"] in (_SCENARIO, _OLD_NAME)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--before", type=Path, help="a checkout to compare with (the reference)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        block, sdk = Path(tmp) / "block", Path(tmp) / "sdk"
        (block / "opentelemetry").mkdir(parents=True)
        (block / "opentelemetry" / "__init__.py").write_text(_BLOCK)
        sdk.mkdir()
        (sdk / "sitecustomize.py").write_text(_SDK)
        setups: dict[str, tuple[Path, str | None]] = {}
        if args.before:
            setups["before"] = (args.before.resolve(), str(block))
        setups |= {"no-extra": (ROOT, str(block)), "api": (ROOT, None), "sdk": (ROOT, str(sdk))}
        samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for round_ in range(args.rounds):
            for name, (cwd, pythonpath) in setups.items():
                for row in _run(cwd, pythonpath, Path(tmp) / "out.json"):
                    key = (name, str(row["storage"]))
                    samples.setdefault(key, []).append((float(row["p50_ms"]), float(row["rate"])))  # type: ignore[arg-type]
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    reference = next(iter(setups))
    print(f"fire_warm_never_runnable over {args.rounds} interleaved rounds; ratios against {reference!r}")
    print("(best: the lowest p50 of any round, what the machine's load adds least to)\n")
    print("| set-up   | storage | median p50 us | ratio | best p50 us | ratio | median fires/s | ratio |")
    print("|----------|---------|---------------|-------|-------------|-------|----------------|-------|")
    for storage in ("sqlite", "memory"):
        base = samples[(reference, storage)]
        base_median = statistics.median(p for p, _ in base)
        base_best = min(p for p, _ in base)
        base_rate = statistics.median(r for _, r in base)
        for name in setups:
            got = samples[(name, storage)]
            median, best = statistics.median(p for p, _ in got), min(p for p, _ in got)
            rate = statistics.median(r for _, r in got)
            print(
                f"| {name:<8} | {storage:<7} | {median * 1e3:13.1f} | {median / base_median:5.3f} | "
                f"{best * 1e3:11.1f} | {best / base_best:5.3f} | {rate:14,.0f} | {rate / base_rate:5.3f} |"
            )


if __name__ == "__main__":
    main()
