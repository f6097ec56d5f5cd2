"""The benchmark suite's quick mode runs every scenario, checks its outcome and
exits 0 (numbers are not asserted: the machine is shared and noisy)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from atriggers.testing.postgres import find_bindir

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)  # beyond the suite's 120 s: see the subprocess's own timeout
def test_quick_mode_runs_every_scenario_and_checks_it(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)],
        cwd=ROOT,
        # Not in asyncio debug mode (CI's second pass sets it): it multiplies the
        # run's time, and the benchmarks' checks do not depend on it.
        env={k: v for k, v in os.environ.items() if k != "PYTHONASYNCIODEBUG"},
        capture_output=True,
        text=True,
        timeout=240,  # a redis-server and a PostgreSQL cluster start for several scenarios
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report["failures"] == []
    seen = {(row["scenario"], row["storage"]) for row in report["rows"]}
    for scenario in ("fire_idle", "every_idle", "every_run", "sessions", "growth", "scale"):
        assert {(scenario, "sqlite"), (scenario, "memory")} <= seen
    assert {("procs", "sqlite"), ("procs_run", "sqlite")} <= seen
    assert {("sweep", "sqlite"), ("sweep", "memory")} <= seen
    assert ("listing", "sqlite") in seen
    assert {("fire_key", "sqlite"), ("fire_key", "memory")} <= seen
    served = []  # as benchmarks.scenarios.SERVED
    if shutil.which("redis-server") and importlib.util.find_spec("redis"):
        served.append("redis")
    if find_bindir() is not None and importlib.util.find_spec("asyncpg"):
        served.append("postgres")
    scenarios = (
        "fire_idle",
        "every_run",
        "sessions",
        "growth",
        "procs",
        "procs_run",
        "sweep",
        "listing",
        "fire_key",
    )
    for kind in served:
        for scenario in scenarios:
            assert (scenario, kind) in seen
    assert {r["scenario"] for r in report["rows"] if r["storage"] == "-"} == {
        "baseline: aiosqlite SELECT 1",
        "baseline: aiosqlite insert+commit",
        "baseline: create_task+await",
    }
    for row in report["rows"]:
        assert row["rate"] > 0 and row["p50_ms"] <= row["p99_ms"]
        if row["scenario"] == "scale":
            assert row["extra"]["locks_left"] == 0
        if row["scenario"] in ("sweep", "listing"):
            assert row["extra"]["sessions"] == {"small": 100, "big": 2000}
    assert "| fire_idle" in done.stdout and "target (measured)" in done.stdout


def test_unknown_scenario_is_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--only", "no_such_thing"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "unknown scenario(s): no_such_thing" in done.stderr
