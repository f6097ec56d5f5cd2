"""The benchmark suite's quick mode runs every scenario on every storage, checks
its outcome and exits 0 (numbers are not asserted: the machine is shared and
noisy); every target is judged against something measured in the same run."""

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
# The suite's subprocesses run outside asyncio debug mode (CI's second pass sets it):
# it multiplies a run's time, and the benchmarks' checks do not depend on it.
NO_DEBUG = {k: v for k, v in os.environ.items() if k != "PYTHONASYNCIODEBUG"}

SCENARIOS = (
    "fire_warm_never_runnable",
    "fire_with_idempotency_key",
    "andevery_unstarted_pile_up",
    "andevery_fire_run_finish",
    "one_job_fire_run_finish",
    "concurrent_sessions",
    "growth_finished",
    "growth_unstarted",
    "many_sessions_bounded_memory",
    "sweep_due_among_many",
    "list_failed_among_many",
)
#: Several processes share one store: not MemoryStorage, which lives in one process.
SHARED_ONLY = ("procs4_constant_state", "procs4_unstarted_pile_up", "procs4_fire_run_finish")
#: What a fire or a job on each storage is compared with, measured in the same process.
FLOORS = {
    "sqlite": {"  aiosqlite SELECT 1", "  aiosqlite INSERT+COMMIT"},
    "memory": {"  asyncio create_task+await"},
    "redis": {"  redis-py PING", "  redis-py EVALSHA (trivial script)"},
    "postgres": {"  asyncpg SELECT 1", "  asyncpg write transaction"},
}


def _served() -> list[str]:
    """The server kinds this machine runs (as benchmarks.scenarios.SERVED)."""
    served = []
    if shutil.which("redis-server") and importlib.util.find_spec("redis"):
        served.append("redis")
    if find_bindir() is not None and importlib.util.find_spec("asyncpg"):
        served.append("postgres")
    return served


@pytest.mark.timeout(300)  # beyond the suite's 120 s: see the subprocess's own timeout
def test_quick_mode_runs_every_scenario_and_checks_it(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)],
        cwd=ROOT,
        env=NO_DEBUG,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report["failures"] == []
    rows = report["rows"]
    seen = {(row["scenario"], row["storage"]) for row in rows if not row.get("floor_of")}
    kinds = ["sqlite", "memory", *_served()]
    for kind in kinds:
        for scenario in SCENARIOS:
            assert (scenario, kind) in seen
        for scenario in SHARED_ONLY:
            assert ((scenario, kind) in seen) == (kind != "memory")
    assert {(r["scenario"], r["storage"]) for r in report["not_run"]} == {(s, "memory") for s in SHARED_ONLY}
    for kind in kinds:
        floors = {
            r["scenario"]
            for r in rows
            if r.get("floor_of") == "fire_warm_never_runnable" and r["storage"] == kind
        }
        assert floors == FLOORS[kind]
    for row in rows:
        assert row["rate"] > 0 and row["p50_ms"] <= row["p99_ms"]
        assert "orig" not in row["target"]["text"]
        if row["scenario"] == "many_sessions_bounded_memory":
            assert row["extra"]["locks_left"] == 0
        if row["scenario"] in ("sweep_due_among_many", "list_failed_among_many"):
            assert row["extra"]["sessions"] == {"small": 100, "big": 1000}
        if row["scenario"] == "one_job_fire_run_finish" and row["storage"] == "memory":
            if importlib.util.find_spec("taskiq"):
                assert row["target"]["passed"] is not None and "taskiq" in row["target"]["text"]
            else:
                assert row["target"]["text"] == "skipped: taskiq not installed"
        if row["scenario"] == "fire_warm_never_runnable" and row["storage"] != "memory":
            assert row["target"]["passed"] is not None  # judged against its floor
    assert "| fire_warm_never_runnable" in done.stdout and "target (measured)" in done.stdout
    assert "x orig" not in done.stdout


def test_unknown_scenario_is_refused_and_old_names_are_accepted() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--only", "fire_idle,growth,no_such_thing"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "unknown scenario(s): no_such_thing" in done.stderr


def test_compare_runs_this_suite_against_another_checkouts_library(tmp_path: Path) -> None:
    """benchmarks.compare puts the --before checkout's atriggers first on every
    interpreter's path; an empty --before is refused."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.compare", "--before", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2 and "holds no atriggers/ package" in done.stderr
    probe = "import benchmarks, atriggers; print(atriggers.__file__)"
    (tmp_path / "atriggers").mkdir()
    (tmp_path / "atriggers" / "__init__.py").write_text("")
    found = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env={**os.environ, "ATRIGGERS_BENCH_LIBRARY": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert found.stdout.strip() == str(tmp_path / "atriggers" / "__init__.py")
    selected = ["--only", "fire_warm_never_runnable", "--storage", "memory", "--rounds", "1", "--quick"]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.compare", "--before", str(ROOT), *selected],
        cwd=ROOT,
        env=NO_DEBUG,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| fire_warm_never_runnable | memory |" in done.stdout


def test_without_taskiq_the_peer_row_says_it_was_skipped(tmp_path: Path) -> None:
    (tmp_path / "taskiq").mkdir()
    (tmp_path / "taskiq" / "__init__.py").write_text("raise ImportError('taskiq made unimportable')\n")
    out = tmp_path / "bench.json"
    selected = ["--only", "one_job_fire_run_finish", "--storage", "memory", "--json", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", *selected],
        cwd=ROOT,
        env={**NO_DEBUG, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [row] = json.loads(out.read_text())["rows"]
    assert row["target"] == {"text": "skipped: taskiq not installed", "passed": None}
