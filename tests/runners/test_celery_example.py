"""examples/celery_app as its README runs it: a worker started with
``celery -A tasks worker``, then ``python fire.py``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from celery_helpers import WorkerFactory, purge

pytestmark = pytest.mark.celery

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "celery_app"


def test_example_runs_on_a_worker(redis_url: str, start_worker: WorkerFactory, tmp_path: Path) -> None:
    broker = f"{redis_url}/3"
    purge(broker)
    env = {"ATRIGGERS_BROKER": broker, "ATRIGGERS_DB": str(tmp_path / "orders.db")}
    worker = start_worker("tasks", broker, queues=["celery", "mail"], cwd=EXAMPLE, env=env)
    out = subprocess.run(
        [sys.executable, "fire.py", "42"],
        cwd=EXAMPLE,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr + worker.output()
    assert "done: shipped" in out.stdout
    assert "t_reserveStock#0 replayed" in out.stdout
    assert "t_ship#0         finished" in out.stdout
    assert "'sentTo': 'ada@example.com'" in out.stdout
    assert "orders.send_receipt" in worker.output()
