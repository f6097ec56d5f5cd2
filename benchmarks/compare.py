"""Before and after: this suite against two versions of the library, side by side.

    python -m benchmarks.compare --before ../older-checkout            # 3 rounds, every scenario
    python -m benchmarks.compare --before ../older --only fire_warm_never_runnable --storage sqlite

Both sides run the same scenarios, checks and floors (this checkout's
``benchmarks``); only the ``atriggers`` package differs: ``--before``'s (a
directory holding ``atriggers/``, e.g. a ``git worktree add`` of an earlier
commit) against this checkout's, or ``--after``'s. The sides alternate round by
round (before, after, after, before...) so that the machine's load hits them
alike; the table gives each side's median ops/s and p50 over the rounds and the
ratio after/before.
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
from typing import Any

from .measure import ROOT


def _run(library: Path, options: list[str], out: Path) -> list[dict[str, Any]]:
    env = {**os.environ, "ATRIGGERS_BENCH_LIBRARY": str(library)}
    command = [sys.executable, "-m", "benchmarks", *options, "--json", str(out)]
    done = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, check=False)
    report = json.loads(out.read_text())
    if done.returncode == 1 or report["failures"]:
        raise SystemExit(f"the suite failed against {library}: {report['failures']}")
    rows: list[dict[str, Any]] = report["rows"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--before", type=Path, required=True, help="a checkout holding the older atriggers/")
    parser.add_argument("--after", type=Path, default=ROOT, help="the newer one (default: this checkout)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", help="as python -m benchmarks --only")
    parser.add_argument("--storage", help="as python -m benchmarks --storage")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    options = [
        *(["--only", args.only] if args.only else []),
        *(["--storage", args.storage] if args.storage else []),
    ]
    options += ["--quick"] if args.quick else []
    sides = {"before": args.before.resolve(), "after": args.after.resolve()}
    for side, library in sides.items():
        if not (library / "atriggers" / "__init__.py").is_file():
            parser.error(f"--{side}: {library} holds no atriggers/ package")
    samples: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
            for side in order:
                for row in _run(sides[side], options, Path(tmp) / "out.json"):
                    key = (row["scenario"], row["storage"], side)
                    samples.setdefault(key, []).append(row)
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    print(f"this suite against atriggers of {sides['before']} (before) and {sides['after']} (after)")
    print(f"median of {args.rounds} interleaved rounds\n")
    print(
        "| scenario | storage | before ops/s | after ops/s | ratio | before p50 ms | after p50 ms | ratio |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for (scenario, storage, side), rows in samples.items():
        if side != "before" or rows[0].get("floor_of") or (scenario, storage, "after") not in samples:
            continue
        after = samples[(scenario, storage, "after")]
        rate = [statistics.median(r["rate"] for r in got) for got in (rows, after)]
        p50 = [statistics.median(r["p50_ms"] for r in got) for got in (rows, after)]
        print(
            f"| {scenario} | {storage} | {rate[0]:,.0f} | {rate[1]:,.0f} | {rate[1] / rate[0]:.2f}x | "
            f"{p50[0]:.3f} | {p50[1]:.3f} | {p50[1] / p50[0]:.2f}x |"
        )


if __name__ == "__main__":
    main()
