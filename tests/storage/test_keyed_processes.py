"""Several OS processes retrying the same keyed fires at once (as web servers
behind a retrying proxy would), on a real SQLite file and a real redis-server:
each fire applies exactly once and every caller gets the same instances."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from atriggers import Status, TriggerManager
from atriggers.storage import open_storage

from .conftest import RedisServer

PROCESSES = 4
FIRES = 200
WORKER = Path(__file__).parent.parent / "keyed_fire_worker.py"


def _run_workers(url: str, uid: str, runs: Path) -> list[dict[str, list[str]]]:
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), url, uid, str(FIRES), str(runs)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    try:
        for worker in workers:  # all connected: start together
            assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        answers = []
        for worker in workers:
            out, _ = worker.communicate(timeout=240)
            assert worker.returncode == 0
            answers.append(json.loads(out.strip().splitlines()[-1]))
        return answers
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


async def _check(url: str, tmp_path: Path) -> None:
    uid = "retried"
    async with open_storage(url) as storage:
        await TriggerManager(storage, uid).update_configuration(
            {"t": {"after": [], "andEvery": "tick", "run": "keyed.record"}}
        )
    runs = tmp_path / "runs.txt"
    answers = await asyncio.to_thread(_run_workers, url, uid, runs)
    async with open_storage(url) as storage:
        state = await storage.load_all(uid)
    # Every process got every key answered, and the same answer.
    assert all(len(answer) == FIRES for answer in answers)
    for n in range(FIRES):
        names = {tuple(answer[f"order-{n}"]) for answer in answers}
        assert len(names) == 1, (n, names)
        [(name,)] = names
        assert state.instances[name].kwargs == {"tick": {"n": n}}
    # Each fire applied once: one instance per key, each run exactly once.
    assert len(state.instances) == FIRES
    assert {i.status for i in state.instances.values()} == {Status.FINISHED}
    ran = Counter(runs.read_text().split())
    assert len(ran) == FIRES and set(ran.values()) == {1}
    assert sorted(r.key for r in state.fire_keys.records()) == sorted(f"order-{n}" for n in range(FIRES))


@pytest.mark.slow
async def test_processes_retrying_keyed_fires_on_sqlite(tmp_path: Path) -> None:
    await _check(f"sqlite:///{tmp_path / 'keyed.db'}", tmp_path)


@pytest.mark.slow
async def test_processes_retrying_keyed_fires_on_redis(
    tmp_path: Path, redis_server: RedisServer, redis_prefix: str
) -> None:
    pytest.importorskip("redis", reason="the redis extra is not installed")
    await _check(f"{redis_server.url}?prefix={redis_prefix}", tmp_path)
