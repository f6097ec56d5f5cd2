"""Run the benchmark suite and print one table.

    python -m benchmarks            # full run (several minutes on 2 cores)
    python -m benchmarks --quick    # CI smoke run: small sizes, same checks, < 2 min
    python -m benchmarks --only fire_idle,growth --json out.json

Each scenario runs in its own interpreter (so peak RSS is its own and no cache
survives from one to the next), after the baselines. The exit status is 1 if any
scenario ended in a wrong state or crashed; targets missed only make it 2 with
``--strict``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .measure import (
    ROOT,
    CheckFailed,
    baseline_create_task,
    baseline_select1,
    baseline_write_txn,
    child_env,
    peak_rss_mb,
    rss_mb,
    sqlite_version,
    summary,
)

#: The original `triggers` library on a 2-core machine (issue 7): fires/s.
ORIGINAL_RATE = {
    "fire_idle": 459.0,
    "every_idle": 80.0,
    "every_run": 9.1,
    "sessions": 248.0,
    "procs": 129.0,
    "procs_run": 10.6,
}
#: ... and ms per fire with N instances already in the session.
ORIGINAL_GROWTH_MS = {10: 2.6, 1000: 16.2, 5000: 74.8}


@dataclass
class Target:
    text: str
    passed: bool | None  # None: not applicable


def _target(row: dict[str, Any]) -> Target:
    """The issue's target for a SQLite row, judged on numbers from the same run."""
    name, rate, extra = row["scenario"], row["rate"], row.get("extra", {})
    if name == "sweep":
        big = extra["sessions"]["big"]
        return Target(
            f"sweep({big:,})<=1.3x sweep({extra['sessions']['small']}) ({extra['due_ratio']:.2f}x)",
            extra["due_ratio"] <= 1.3,
        )
    if name == "listing":
        big = extra["sessions"]["big"]
        return Target(
            f"list {extra['failed']} failed of {big:,}<=1.5x of {extra['sessions']['small']} "
            f"({extra['ratio']:.2f}x)",
            extra["ratio"] <= 1.5,
        )
    if name == "fire_key":
        ratio = extra["key_ratio"]
        return Target(f"with key<=1.15x without ({ratio:.2f}x)", ratio <= 1.15)
    if row["storage"] != "sqlite":
        return Target("-", None)
    if name == "fire_idle":
        rt = extra["select1_p50_ms"]
        ratio = row["p50_ms"] / rt
        return Target(
            f">=5x orig ({rate / 459:.1f}x), p50<=1.5x SELECT 1 ({ratio:.2f}x of {rt * 1e3:.0f}us)",
            rate >= 5 * 459 and ratio <= 1.5,
        )
    if name == "every_run":
        return Target(f">=100x orig ({rate / 9.1:.0f}x)", rate >= 100 * 9.1)
    if name == "sessions":
        return Target(f">=20x orig ({rate / 248:.1f}x)", rate >= 20 * 248)
    if name == "growth":
        top = extra["by_resolved"][str(extra["max_resolved"])]
        return Target(
            f"t({extra['max_resolved']})<=1.3x t(10) ({top['warm_ratio']:.2f}x)",
            top["warm_ratio"] <= 1.3,
        )
    if name == "procs":
        return Target(
            f">=10x orig ({rate / 129:.1f}x), p99<20ms, none lost",
            rate >= 10 * 129 and row["p99_ms"] < 20 and extra["lost"] == 0,
        )
    if name == "scale":
        return Target(f"RSS delta<=50MB ({extra['rss_delta_mb']:.1f}MB)", extra["rss_delta_mb"] <= 50)
    return Target("-", None)


# -- child side -----------------------------------------------------------------------------


async def _baselines(directory: Path, quick: bool) -> list[dict[str, Any]]:
    n = 1000 if quick else 5000
    rows = []
    for name, samples in (
        ("baseline: aiosqlite SELECT 1", await baseline_select1(directory / "b1.db", n)),
        ("baseline: aiosqlite insert+commit", await baseline_write_txn(directory / "b2.db", n)),
        ("baseline: create_task+await", await baseline_create_task(n * 10)),
    ):
        rows.append(
            {
                "scenario": name,
                "storage": "-",
                "fires": len(samples),
                "seconds": sum(samples),
                "rate": len(samples) / sum(samples),
                **summary(samples),
            }
        )
    return rows


async def _served(scenario: str, kind: str, directory: Path, quick: bool) -> Any:
    """Run a scenario with the server its storage kind needs (Redis, PostgreSQL)."""
    from .scenarios import SCENARIOS, serve

    async with serve(kind, directory):
        return await SCENARIOS[scenario][0](kind, directory, quick)


def child(scenario: str, kind: str, quick: bool) -> int:
    """Run one scenario here; print one JSON line."""

    start_rss = rss_mb()
    with tempfile.TemporaryDirectory(prefix="atriggers-bench-") as tmp:
        directory = Path(tmp)
        try:
            if scenario == "baselines":
                rows = asyncio.run(_baselines(directory, quick))
                kind = "-"
            else:
                outcome = asyncio.run(_served(scenario, kind, directory, quick))
                rows = [
                    {
                        "scenario": scenario,
                        "storage": kind,
                        "fires": outcome.fires,
                        "seconds": outcome.seconds,
                        "rate": outcome.fires / outcome.seconds,
                        **summary(outcome.latencies),
                        "extra": outcome.extra,
                    }
                ]
        except CheckFailed as exc:
            print(json.dumps({"error": f"WRONG RESULT: {exc}"}))
            return 1
        except Exception:  # noqa: BLE001 - reported to the parent, which fails the run
            print(json.dumps({"error": traceback.format_exc()}))
            return 1
    for row in rows:
        row["rss_start_mb"] = start_rss
        row["rss_peak_mb"] = peak_rss_mb()
    print(json.dumps({"rows": rows}))
    return 0


# -- parent side ----------------------------------------------------------------------------


def _spawn(scenario: str, kind: str, quick: bool) -> tuple[list[dict[str, Any]], str | None]:
    env = child_env()
    command = [sys.executable, "-m", "benchmarks.run", "--child", scenario, "--storage", kind]
    if quick:
        command.append("--quick")
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=1800, check=False
        )
    except subprocess.TimeoutExpired:
        return [], "timed out after 1800 s"
    lines = done.stdout.strip().splitlines()
    try:
        report = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return [], f"exit {done.returncode}; stderr:\n{done.stderr[-3000:]}"
    if "error" in report:
        return [], f"{report['error']}\n{done.stderr[-2000:]}".strip()
    return list(report["rows"]), None


def _median_run(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Of repeated runs, row by row, the one with the median throughput; the
    spread of the others is kept as ``rate_range``."""
    chosen = []
    for i in range(len(runs[0])):
        candidates = sorted((run[i] for run in runs), key=lambda row: row["rate"])
        row = dict(candidates[(len(candidates) - 1) // 2])
        row["rate_range"] = [candidates[0]["rate"], candidates[-1]["rate"]]
        chosen.append(row)
    return chosen


def _fmt(value: float, digits: int = 2) -> str:
    if value != value:  # NaN
        return "-"
    return f"{value:,.{digits}f}"


def _rate(row: dict[str, Any]) -> str:
    low, high = row.get("rate_range") or (row["rate"], row["rate"])
    if high == low:
        return _fmt(row["rate"], 0)
    return f"{_fmt(row['rate'], 0)} ({_fmt(low, 0)}-{_fmt(high, 0)})"


def render(rows: list[dict[str, Any]]) -> str:
    header = [
        "scenario",
        "storage",
        "fires",
        "fires/s",
        "x orig",
        "p50 ms",
        "p99 ms",
        "peak RSS MB",
        "target (measured)",
        "result",
    ]
    table = []
    for row in rows:
        orig = ORIGINAL_RATE.get(row["scenario"])
        target = row.get("target") or {"text": "-", "passed": None}
        verdict = {True: "PASS", False: "MISS", None: ""}[target["passed"]]
        table.append(
            [
                row["scenario"],
                row["storage"],
                str(row["fires"]),
                _rate(row),
                f"{row['rate'] / orig:.1f}x" if orig else "",
                _fmt(row["p50_ms"], 3),
                _fmt(row["p99_ms"], 3),
                _fmt(row.get("rss_peak_mb", float("nan")), 0),
                target["text"],
                verdict,
            ]
        )
    widths = [max(len(c) for c in column) for column in zip(header, *table, strict=True)]
    line = " | ".join(f"{{:<{w}}}" for w in widths)
    out = ["| " + line.format(*header) + " |", "|-" + "-|-".join("-" * w for w in widths) + "-|"]
    out += ["| " + line.format(*r) + " |" for r in table]
    return "\n".join(out)


def details(rows: list[dict[str, Any]]) -> str:
    out = []
    for row in rows:
        extra = row.get("extra") or {}
        if row["scenario"] == "growth":
            for n, m in sorted(extra["by_resolved"].items(), key=lambda kv: int(kv[0])):
                orig = ORIGINAL_GROWTH_MS.get(int(n))
                versus = f", original {orig} ms ({orig / m['warm_ms']:.0f}x)" if orig else ""
                out.append(
                    f"growth/{row['storage']}: {int(n):>6} resolved: fire p50 {m['warm_ms']:.3f} ms "
                    f"({m['warm_ratio']:.2f}x the 10-instance session){versus}; cold read+fire "
                    f"{m['cold_ms']:.3f} ms ({m['cold_ratio']:.2f}x)"
                )
        elif row["scenario"] == "scale":
            out.append(
                f"scale/{row['storage']}: {extra['sessions']:,} sessions: "
                f"RSS {extra['rss_before_mb']:.1f} -> "
                f"{extra['rss_after_mb']:.1f} MB (delta {extra['rss_delta_mb']:+.1f} MB); "
                f"{extra['cached_snapshots']} cached snapshots, {extra['locks_left']} locks left"
            )
        elif row["scenario"] in ("procs", "procs_run"):
            how = (
                "re-applied inside the write transaction"
                if row["storage"] == "sqlite"
                else "re-applied to the state the failed write returned, or retried"
            )
            out.append(
                f"{row['scenario']}/{row['storage']}: {extra['processes']} processes, {extra['conflicts']} "
                f"compare-and-swap conflicts ({how}), {extra['lost']} fires lost"
            )
        elif row["scenario"] == "sweep":
            small, big = (extra["sessions"][k] for k in ("small", "big"))
            due, idle = extra["due_p50_ms"], extra["idle_p50_ms"]
            out.append(
                f"sweep/{row['storage']}: {extra['due']} due entries among {big:,} sessions: sweep p50 "
                f"{due['big']:.3f} ms against {due['small']:.3f} ms among {small} "
                f"({extra['due_ratio']:.2f}x); nothing due: {idle['big']:.3f} ms against "
                f"{idle['small']:.3f} ms ({extra['idle_ratio']:.2f}x)"
            )
        elif row["scenario"] == "listing":
            small, big = (extra["sessions"][k] for k in ("small", "big"))
            p50 = extra["p50_ms"]
            out.append(
                f"listing/{row['storage']}: the {extra['failed']} failed sessions among {big:,}: "
                f"list_summaries p50 {p50['big']:.3f} ms against {p50['small']:.3f} ms among {small} "
                f"({extra['ratio']:.2f}x)"
            )
        elif row["scenario"] == "every_idle":
            out.append(
                f"every_idle/{row['storage']}: fire p50 {extra['first_10pct_p50_ms']:.3f} ms over the "
                f"first 10% -> {extra['last_10pct_p50_ms']:.3f} ms over the last 10% "
                f"(every unresolved instance is examined by a fire)"
            )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    from .scenarios import SCENARIOS

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes for CI (< 2 min)")
    parser.add_argument("--only", help="comma-separated scenarios (default: all): " + ", ".join(SCENARIOS))
    parser.add_argument(
        "--storage", choices=["sqlite", "memory", "redis", "postgres"], help="only this storage"
    )
    parser.add_argument("--json", type=Path, help="also write every row, with details, here")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each scenario N times and report the median run (noisy machines)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 2 when a target is missed")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.storage or "sqlite", args.quick)

    names = args.only.split(",") if args.only else list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    plan: list[tuple[str, str]] = [("baselines", "sqlite")]
    plan += [(n, k) for n in names for k in SCENARIOS[n][1] if args.storage in (None, k)]

    print(
        f"atriggers benchmarks ({'quick' if args.quick else 'full'}) on Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, {sqlite_version()}",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    began = time.perf_counter()
    for scenario, kind in plan:
        t0 = time.perf_counter()
        runs: list[list[dict[str, Any]]] = []
        for _ in range(args.repeat):
            found, error = _spawn(scenario, kind, args.quick)
            if error:
                failures.append(f"{scenario}/{kind}: {error}")
                break
            runs.append(found)
        if len(runs) < args.repeat:
            print(f"  {scenario:<10} {kind:<7} FAILED", flush=True)
            continue
        found = _median_run(runs)
        for row in found:
            target = _target(row)
            row["target"] = {"text": target.text, "passed": target.passed}
        rows += found
        label = kind if scenario != "baselines" else ""
        print(f"  {scenario:<10} {label:<7} done in {time.perf_counter() - t0:.1f} s", flush=True)
    print()
    print(render(rows))
    extra = details(rows)
    if extra:
        print()
        print(extra)
    print(
        f"\ntotal {time.perf_counter() - began:.0f} s; load average {os.getloadavg()[0]:.2f}"
        + (f"; median of {args.repeat} runs, range of fires/s in brackets" if args.repeat > 1 else "")
    )
    if args.quick:
        print("quick mode: sizes are small, so the targets are indicative only")
    if args.json:
        args.json.write_text(json.dumps({"quick": args.quick, "rows": rows, "failures": failures}, indent=2))
    missed = [r for r in rows if r["target"]["passed"] is False]
    if failures:
        print("\nFAILED (wrong results or crashes; the numbers above exclude them):", file=sys.stderr)
        for failure in failures:
            print(f"- {failure}", file=sys.stderr)
        return 1
    if missed:
        print(
            f"\n{len(missed)} target(s) missed: "
            + ", ".join(f"{r['scenario']}/{r['storage']}" for r in missed)
        )
        return 2 if args.strict else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
