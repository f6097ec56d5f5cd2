"""Run the benchmark suite and print one table.

    python -m benchmarks            # full run (several minutes on 2 cores)
    python -m benchmarks --quick    # CI smoke run: small sizes, same checks, about a minute
    python -m benchmarks --only fire_warm_never_runnable,growth_unstarted --json out.json

Each scenario runs in its own interpreter (so peak RSS is its own and no cache
survives from one to the next); the redis-server and the PostgreSQL cluster are
started once for the run. Every target is a ratio against something measured in
the same run, most of them in the scenario's own process, interleaved with its
fires: the application's own write on the same storage (the "floor"), the same
fires with less in the session, one process against four, or a peer library.
The exit status is 1 if any scenario ended in a wrong state or crashed; targets
missed only make it 2 with ``--strict``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .measure import ROOT, CheckFailed, child_env, peak_rss_mb, rss_mb, sqlite_version, summary

#: The storage's own write an atriggers write is compared with, per kind.
PRIMARY_FLOOR = {
    "sqlite": "aiosqlite INSERT+COMMIT",
    "redis": "redis-py EVALSHA (trivial script)",
    "postgres": "asyncpg write transaction",
}
#: How many times that write a warm fire may cost. SQLite and PostgreSQL: a fire
#: is one write transaction, as the application's own. Redis: one script round
#: trip, plus atriggers' Python, which may cost half a round trip more.
FIRE_VS_FLOOR = {"sqlite": 1.0, "postgres": 1.0, "redis": 1.5}
#: A job is two stored operations: the fire (which schedules and starts the
#: run), and the outcome.
JOB_VS_FLOOR = 2.0
#: In memory, one job fire -> run -> finished against taskiq's in-memory broker.
TASKIQ_RATIO = 0.7


@dataclass
class Target:
    text: str
    passed: bool | None  # None: not applicable


def _no_target(row: dict[str, Any]) -> Target:
    return Target("-", None)


def _fire_warm(row: dict[str, Any]) -> Target:
    kind = row["storage"]
    if kind not in PRIMARY_FLOOR:
        return Target("-", None)
    floor = row["extra"]["floor_p50_ms"][PRIMARY_FLOOR[kind]]
    ratio, limit = row["p50_ms"] / floor, FIRE_VS_FLOOR[kind]
    return Target(
        f"p50<={limit:g}x {PRIMARY_FLOOR[kind]} ({ratio:.2f}x of {floor * 1e3:.0f}us)", ratio <= limit
    )


def _job_vs_floor(row: dict[str, Any]) -> Target:
    kind = row["storage"]
    if kind not in PRIMARY_FLOOR:
        return Target("-", None)
    floor = row["extra"]["floor_p50_ms"][PRIMARY_FLOOR[kind]]
    per_job = 1e3 / row["rate"]
    ratio = per_job / floor
    return Target(
        f"per job<={JOB_VS_FLOOR:g}x {PRIMARY_FLOOR[kind]} ({ratio:.2f}x of {floor * 1e3:.0f}us)",
        ratio <= JOB_VS_FLOOR,
    )


def _vs_taskiq(row: dict[str, Any]) -> Target:
    extra = row["extra"]
    if not extra["taskiq"]:
        return Target("skipped: taskiq not installed", None)
    ratio = row["rate"] / extra["taskiq_rate"]
    if row["storage"] != "memory":
        return Target(f"(no target) {ratio:.2f}x taskiq in memory", None)
    return Target(f">={TASKIQ_RATIO:g}x taskiq ({ratio:.2f}x)", ratio >= TASKIQ_RATIO)


def _flat(row: dict[str, Any]) -> Target:
    ratio = row["extra"]["flat_ratio"]
    return Target(f"last 10% p50<=1.3x first 10% ({ratio:.2f}x)", ratio <= 1.3)


def _concurrent(row: dict[str, Any]) -> Target:
    speedup = row["extra"]["speedup"]
    if row["storage"] == "memory":
        return Target(f"(no I/O to share) {speedup:.2f}x one at a time", None)
    return Target(f"per session<=0.5x one at a time ({1 / speedup:.2f}x)", speedup >= 2)


def _growth(row: dict[str, Any]) -> Target:
    extra = row["extra"]
    top = extra["by_count"][str(extra["max_count"])]
    return Target(
        f"warm t({extra['max_count']:,})<=1.3x t(10) ({top['warm_ratio']:.2f}x)", top["warm_ratio"] <= 1.3
    )


def _procs(row: dict[str, Any]) -> Target:
    extra = row["extra"]
    ratio = row["p99_ms"] / extra["solo_p99_ms"]
    return Target(
        f"p99<=4x one process's ({ratio:.1f}x of {extra['solo_p99_ms']:.2f}ms), none lost",
        ratio <= 4 and extra["lost"] == 0,
    )


def _scale(row: dict[str, Any]) -> Target:
    delta = row["extra"]["rss_delta_mb"]
    if row["storage"] == "memory":
        return Target(f"(holds every session) RSS delta {delta:.0f}MB", None)
    return Target(f"RSS delta<=50MB ({delta:.1f}MB)", delta <= 50)


def _sweep(row: dict[str, Any]) -> Target:
    extra = row["extra"]
    big = extra["sessions"]["big"]
    return Target(
        f"sweep({big:,})<=1.3x sweep({extra['sessions']['small']}) ({extra['due_ratio']:.2f}x)",
        extra["due_ratio"] <= 1.3,
    )


def _listing(row: dict[str, Any]) -> Target:
    extra = row["extra"]
    big = extra["sessions"]["big"]
    return Target(
        f"list {extra['failed']} failed of {big:,}<=1.5x of {extra['sessions']['small']} "
        f"({extra['ratio']:.2f}x)",
        extra["ratio"] <= 1.5,
    )


def _fire_key(row: dict[str, Any]) -> Target:
    ratio = row["extra"]["key_ratio"]
    return Target(f"with key<=1.15x without ({ratio:.2f}x)", ratio <= 1.15)


TARGETS: dict[str, Callable[[dict[str, Any]], Target]] = {
    "fire_warm_never_runnable": _fire_warm,
    "fire_with_idempotency_key": _fire_key,
    "andevery_unstarted_pile_up": _flat,
    "andevery_fire_run_finish": _job_vs_floor,
    "one_job_fire_run_finish": _vs_taskiq,
    "concurrent_sessions": _concurrent,
    "growth_finished": _growth,
    "growth_unstarted": _growth,
    "procs4_constant_state": _procs,
    "procs4_unstarted_pile_up": _procs,
    "procs4_fire_run_finish": _procs,
    "many_sessions_bounded_memory": _scale,
    "sweep_due_among_many": _sweep,
    "list_failed_among_many": _listing,
}


def _target(row: dict[str, Any]) -> Target:
    """The target of a scenario's row, judged on numbers from the same run."""
    if row.get("floor_of"):
        return Target("-", None)
    return TARGETS.get(row["scenario"], _no_target)(row)


# -- child side -----------------------------------------------------------------------------


def _row(name: str, kind: str, fires: int, seconds: float, latencies: list[float]) -> dict[str, Any]:
    return {
        "scenario": name,
        "storage": kind,
        "fires": fires,
        "seconds": seconds,
        "rate": fires / seconds,
        **summary(latencies),
    }


def child(scenarios: list[str], kind: str, quick: bool) -> int:
    """Run scenarios here, one after the other; print one JSON line for each."""
    import asyncio

    from .scenarios import SCENARIOS, serve

    async def served(scenario: str, directory: Path) -> Any:
        async with serve(kind, directory):
            return await SCENARIOS[scenario][0](kind, directory, quick)

    status = 0
    for scenario in scenarios:
        start_rss = rss_mb()
        began = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="atriggers-bench-") as tmp:
            try:
                outcome = asyncio.run(served(scenario, Path(tmp)))
            except CheckFailed as exc:
                print(json.dumps({"scenario": scenario, "error": f"WRONG RESULT: {exc}"}), flush=True)
                status = 1
                continue
            except Exception:  # noqa: BLE001 - reported to the parent, which fails the run
                print(json.dumps({"scenario": scenario, "error": traceback.format_exc()}), flush=True)
                status = 1
                continue
        rows = [
            {
                **_row(scenario, kind, outcome.fires, outcome.seconds, outcome.latencies),
                "extra": outcome.extra,
            }
        ]
        for name, samples in outcome.floors.items():
            rows.append(
                {**_row(f"  {name}", kind, len(samples), sum(samples), samples), "floor_of": scenario}
            )
        rows[0]["wall_s"] = time.perf_counter() - began
        for row in rows:
            row["rss_start_mb"] = start_rss
            row["rss_peak_mb"] = peak_rss_mb()
        print(json.dumps({"scenario": scenario, "rows": rows}), flush=True)
    return status


# -- parent side ----------------------------------------------------------------------------


def _spawn(
    scenarios: list[str], kind: str, quick: bool, servers: dict[str, str]
) -> dict[str, tuple[list[dict[str, Any]], str | None]]:
    """Run scenarios in a fresh interpreter: scenario -> (rows, error)."""
    from .scenarios import SERVER_ENV

    env = child_env() | {SERVER_ENV[k]: url for k, url in servers.items()}
    command = [sys.executable, "-m", "benchmarks.run", "--child", ",".join(scenarios), "--storage", kind]
    if quick:
        command.append("--quick")
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=1800, check=False
        )
    except subprocess.TimeoutExpired:
        return {scenario: ([], "timed out after 1800 s") for scenario in scenarios}
    found: dict[str, tuple[list[dict[str, Any]], str | None]] = {}
    for line in done.stdout.splitlines():
        try:
            report = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(report, dict) and report.get("scenario") in scenarios:
            if "error" in report:
                found[report["scenario"]] = ([], f"{report['error']}\n{done.stderr[-2000:]}".strip())
            else:
                found[report["scenario"]] = (list(report["rows"]), None)
    for scenario in scenarios:
        found.setdefault(scenario, ([], f"exit {done.returncode}; stderr:\n{done.stderr[-3000:]}"))
    return found


def _median_run(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Of repeated runs, the one whose scenario row has the median throughput
    (with its floors: they were measured in the same process); the spread of
    the others is kept as ``rate_range``."""
    ordered = sorted(runs, key=lambda run: run[0]["rate"])
    chosen = [dict(row) for row in ordered[(len(ordered) - 1) // 2]]
    for i, row in enumerate(chosen):
        rates = sorted(run[i]["rate"] for run in runs)
        row["rate_range"] = [rates[0], rates[-1]]
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
        "ops",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "peak RSS MB",
        "target (measured)",
        "result",
    ]
    table = []
    for row in rows:
        target = row.get("target") or {"text": "-", "passed": None}
        verdict = {True: "PASS", False: "MISS", None: ""}[target["passed"]]
        table.append(
            [
                # What a scenario is judged against, under it.
                f"  ↳ {row['scenario'].strip()}" if row.get("floor_of") else row["scenario"],
                row["storage"],
                str(row["fires"]),
                _rate(row),
                _fmt(row["p50_ms"], 3),
                _fmt(row["p99_ms"], 3),
                "" if row.get("floor_of") else _fmt(row.get("rss_peak_mb", float("nan")), 0),
                "" if row.get("floor_of") else target["text"],
                verdict,
            ]
        )
    widths = [max(len(c) for c in column) for column in zip(header, *table, strict=True)]
    line = " | ".join(f"{{:<{w}}}" for w in widths)
    out = ["| " + line.format(*header) + " |", "|-" + "-|-".join("-" * w for w in widths) + "-|"]
    out += ["| " + line.format(*r) + " |" for r in table]
    return "\n".join(out)


def _detail(row: dict[str, Any]) -> list[str]:
    extra, name, kind = row.get("extra") or {}, row["scenario"], row["storage"]
    if name in ("growth_finished", "growth_unstarted"):
        out = []
        for n, m in sorted(extra["by_count"].items(), key=lambda kv: int(kv[0])):
            out.append(
                f"{name}/{kind}: {int(n):>6,} {extra['instances']}: warm fire p50 {m['warm_ms']:.3f} ms "
                f"({m['warm_ratio']:.2f}x the 10-instance session); first (cold) fire {m['cold_ms']:.3f} ms "
                f"({m['cold_ratio']:.2f}x)"
            )
        return out
    if name == "andevery_unstarted_pile_up":
        return [
            f"{name}/{kind}: fire p50 {extra['first_10pct_p50_ms']:.3f} ms over the first 10% -> "
            f"{extra['last_10pct_p50_ms']:.3f} ms over the last 10% ({extra['flat_ratio']:.2f}x)"
        ]
    if name == "concurrent_sessions":
        return [
            f"{name}/{kind}: {extra['solo_sessions']} sessions one at a time: "
            f"{extra['solo_ms_per_session']:.3f} ms each; {extra['sessions']:,} at once: "
            f"{extra['concurrent_ms_per_session']:.3f} ms each ({extra['speedup']:.2f}x the throughput)"
        ]
    if name.startswith("procs4_"):
        how = (
            "re-applied inside the write transaction"
            if kind == "sqlite"
            else "re-applied to the state the failed write returned, or retried"
        )
        return [
            f"{name}/{kind}: one process: {extra['solo_rate']:,.0f} fires/s, "
            f"p50 {extra['solo_p50_ms']:.3f} ms, "
            f"p99 {extra['solo_p99_ms']:.3f} ms; {extra['processes']} processes: {row['rate']:,.0f} fires/s, "
            f"p99 {row['p99_ms']:.3f} ms; {extra['conflicts']} compare-and-swap conflicts ({how}), "
            f"{extra['lost']} fires lost"
        ]
    if name == "many_sessions_bounded_memory":
        return [
            f"{name}/{kind}: {extra['sessions']:,} sessions: RSS {extra['rss_before_mb']:.1f} -> "
            f"{extra['rss_after_mb']:.1f} MB (delta {extra['rss_delta_mb']:+.1f} MB); "
            f"{extra['cached_snapshots']} cached snapshots, {extra['locks_left']} locks left"
        ]
    if name == "sweep_due_among_many":
        small, big = (extra["sessions"][k] for k in ("small", "big"))
        due, idle = extra["due_p50_ms"], extra["idle_p50_ms"]
        return [
            f"{name}/{kind}: {extra['due']} due among {big:,} sessions: "
            f"sweep p50 {due['big']:.3f} ms against "
            f"{due['small']:.3f} ms among {small} ({extra['due_ratio']:.2f}x); nothing due: "
            f"{idle['big']:.3f} ms against {idle['small']:.3f} ms ({extra['idle_ratio']:.2f}x)"
        ]
    if name == "list_failed_among_many":
        small, big = (extra["sessions"][k] for k in ("small", "big"))
        p50 = extra["p50_ms"]
        return [
            f"{name}/{kind}: the {extra['failed']} failed among {big:,}: "
            f"list_summaries p50 {p50['big']:.3f} ms "
            f"against {p50['small']:.3f} ms among {small} ({extra['ratio']:.2f}x)"
        ]
    if name == "fire_with_idempotency_key":
        return [
            f"{name}/{kind}: p50 {extra['plain_p50_ms']:.3f} ms without a key, "
            f"{extra['keyed_p50_ms']:.3f} ms "
            f"with one ({extra['key_ratio']:.2f}x)"
        ]
    return []


def details(rows: list[dict[str, Any]]) -> str:
    return "\n".join(line for row in rows if not row.get("floor_of") for line in _detail(row))


def _select(names: list[str]) -> tuple[list[str], list[str]]:
    """The scenarios `--only` names (old names select their successors), and the unknown names."""
    from .scenarios import ALIASES, SCENARIOS

    chosen: list[str] = []
    unknown: list[str] = []
    for name in names:
        found = (name,) if name in SCENARIOS else ALIASES.get(name)
        if found is None:
            unknown.append(name)
        chosen += [n for n in found or () if n not in chosen]
    return chosen, unknown


def main(argv: list[str] | None = None) -> int:
    from .scenarios import NOT_APPLICABLE, SCENARIOS, run_servers

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes for CI (about a minute)")
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
        return child(args.child.split(","), args.storage or "sqlite", args.quick)

    names, unknown = _select(args.only.split(",")) if args.only else (list(SCENARIOS), [])
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    plan = [(n, k) for n in names for k in SCENARIOS[n][1] if args.storage in (None, k)]
    order = {key: i for i, key in enumerate(plan)}
    # The full run gives each scenario an interpreter of its own (its peak RSS,
    # no cache carried over); the quick one runs a storage kind's scenarios in
    # one, since starting interpreters would take most of its time.
    if args.quick:
        kinds = list(dict.fromkeys(k for _, k in plan))
        batches = [([n for n, k in plan if k == kind], kind) for kind in kinds]
    else:
        batches = [([n], k) for n, k in plan]
    skipped = [
        (n, k, why) for (n, k), why in NOT_APPLICABLE.items() if n in names and args.storage in (None, k)
    ]

    print(
        f"atriggers benchmarks ({'quick' if args.quick else 'full'}) on Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, {sqlite_version()}",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    began = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="atriggers-bench-servers-") as tmp,
        run_servers({k for _, k in plan}, Path(tmp)) as servers,
    ):
        for batch, kind in batches:
            t0 = time.perf_counter()
            runs: dict[str, list[list[dict[str, Any]]]] = {scenario: [] for scenario in batch}
            errors: dict[str, str] = {}
            for _ in range(args.repeat):
                for scenario, (found, error) in _spawn(batch, kind, args.quick, servers).items():
                    if error:
                        errors.setdefault(scenario, error)
                    else:
                        runs[scenario].append(found)
            for scenario in batch:
                if scenario in errors:
                    failures.append(f"{scenario}/{kind}: {errors[scenario]}")
                    print(f"  {scenario:<28} {kind:<8} FAILED", flush=True)
                    continue
                chosen = _median_run(runs[scenario])
                for row in chosen:
                    target = _target(row)
                    row["target"] = {"text": target.text, "passed": target.passed}
                rows += chosen
            if len(batch) == 1:
                print(f"  {batch[0]:<28} {kind:<8} done in {time.perf_counter() - t0:.1f} s", flush=True)
            else:
                for scenario in batch:
                    took = next((r[0].get("wall_s", 0.0) for r in runs[scenario][:1]), 0.0)
                    print(f"  {scenario:<28} {kind:<8} done in {took:.1f} s", flush=True)
        rows.sort(key=lambda row: order[(row.get("floor_of") or row["scenario"], row["storage"])])
    print()
    print(render(rows))
    if skipped:
        print()
        print("\n".join(f"not run: {n}/{k}: {why}" for n, k, why in skipped))
    extra = details(rows)
    if extra:
        print()
        print(extra)
    print(
        f"\ntotal {time.perf_counter() - began:.0f} s; load average {os.getloadavg()[0]:.2f}"
        + (f"; median of {args.repeat} runs, range of ops/s in brackets" if args.repeat > 1 else "")
    )
    if args.quick:
        print("quick mode: sizes are small, so the targets are indicative only")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "quick": args.quick,
                    "rows": rows,
                    "failures": failures,
                    "not_run": [{"scenario": n, "storage": k, "why": why} for n, k, why in skipped],
                },
                indent=2,
            )
        )
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
