"""The FastAPI example under real HTTP load: a uvicorn subprocess on 127.0.0.1,
driven by httpx, checked through its JSON API and then through its SQLite file."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from atriggers.storage import SQLiteStorage

ROOT = Path(__file__).resolve().parents[2]
APP_DIR = ROOT / "examples" / "webapp"
UNRESOLVED = ("unstarted", "scheduled", "running", "failed")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    db: Path
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20.0) -> tuple[int, float]:
        """Send `sig`, wait for the exit; returns (returncode, seconds taken)."""
        started = time.monotonic()
        self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
            pytest.fail(f"server did not exit within {timeout}s of {sig!r}:\n{self.output()}")
        return code, time.monotonic() - started


def start_server(tmp_path: Path, **env: str) -> Server:
    db = tmp_path / "webapp.db"
    log = tmp_path / "server.log"
    for _attempt in range(3):
        port = free_port()
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "--app-dir",
                    str(APP_DIR),
                    "webapp:app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--lifespan",
                    "on",
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ],
                cwd=tmp_path,
                env={**os.environ, "WEBAPP_DB": str(db), "PYTHONUNBUFFERED": "1", **env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        server = Server(process, f"http://127.0.0.1:{port}", db, log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return server
            except OSError:
                time.sleep(0.05)
        if process.poll() is None:
            process.kill()
        process.wait(timeout=5)
        if "address already in use" not in server.output():
            break
    pytest.fail(f"uvicorn did not start:\n{server.output()}")


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    env: dict[str, str] = getattr(request, "param", {})
    server = start_server(tmp_path, **env)
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(timeout=5)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        yield client


# -- the questionnaires ------------------------------------------------------------------


@dataclass(frozen=True)
class Questionnaire:
    uid: str
    pages: int
    embedded: bool

    def expected(self) -> dict[str, str]:
        """Instance name -> final status, as the configuration implies."""
        expected = {"t_importSubject#0": "finished", "t_computePsychometricScore#0": "finished"}
        expected |= {f"t_importResponses#{n}": "finished" for n in range(self.pages)}
        # `isEmbeddedApplication` is posted before any page: the instance is
        # abandoned before it could get its `after` triggers.
        expected["t_importBrowserMetadata#0"] = "abandoned" if self.embedded else "finished"
        return expected


def questionnaires(prefix: str, count: int) -> list[Questionnaire]:
    return [Questionnaire(f"{prefix}{i:03d}", 3 + i % 3, i % 4 == 0) for i in range(count)]


async def post(client: httpx.AsyncClient, url: str, body: dict[str, Any] | None = None) -> None:
    response = await client.post(url, json=body)
    assert response.is_success, f"POST {url}: {response.status_code} {response.text}"


async def fill_in(client: httpx.AsyncClient, base: str, q: Questionnaire) -> None:
    """Start, then every page and the completion at once (any order may arrive)."""
    url = f"{base}/questionnaires/{q.uid}"
    await post(client, url, {"scoringModel": f"model-{q.uid}"})
    if q.embedded:
        await post(client, f"{url}/embedded", {"app": "ios"})
    sends = [
        post(
            client,
            f"{url}/pages/{page}",
            {
                "answers": ["x"] * page,
                "name": f"respondent {q.uid}" if page == 1 else None,
                "userAgent": "Firefox",
            },
        )
        for page in range(1, q.pages + 1)
    ]
    sends.append(post(client, f"{url}/complete", {"pages": q.pages}))
    await asyncio.gather(*sends)


async def wait_resolved(client: httpx.AsyncClient, base: str, q: Questionnaire) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        response = await client.get(f"{base}/questionnaires/{q.uid}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if not body["unresolved"] and len(body["instances"]) >= len(q.expected()):
            return body
        if time.monotonic() > deadline:
            pytest.fail(f"{q.uid} not resolved after 30s: {body['unresolved']}")
        await asyncio.sleep(0.1)


def check_session(q: Questionnaire, statuses: dict[str, str], results: dict[str, Any]) -> None:
    assert statuses == q.expected(), q.uid
    pages = sorted(results[f"t_importResponses#{n}"]["page"] for n in range(q.pages))
    assert pages == list(range(1, q.pages + 1)), q.uid  # every page imported once
    assert results["t_computePsychometricScore#0"]["model"] == f"model-{q.uid}"
    assert results["t_importSubject#0"]["name"] == f"respondent {q.uid}"


async def check_file(db: Path, all_questionnaires: list[Questionnaire]) -> list[tuple[str, float]]:
    """Check the stopped server's SQLite file; returns (uid, run time) per run."""
    async with SQLiteStorage(db) as storage:
        assert sorted(await storage.list_sessions()) == sorted(q.uid for q in all_questionnaires)
        for q in all_questionnaires:
            state = await storage.load_all(q.uid)
            statuses = {name: i.status.value for name, i in state.instances.items()}
            results = {name: i.result for name, i in state.instances.items()}
            check_session(q, statuses, results)
    with closing(sqlite3.connect(db)) as conn, conn:
        left = conn.execute(
            "SELECT uid, name, status FROM atriggers_instances WHERE status IN (?, ?, ?, ?)",
            UNRESOLVED,
        ).fetchall()
        assert left == []
        runs = conn.execute("SELECT uid, instance, at FROM webapp_runs").fetchall()
    counted = Counter((uid, instance) for uid, instance, _ in runs)
    twice = {key: n for key, n in counted.items() if n != 1}
    assert twice == {}, "instances run more than once"
    expected_runs = {
        (q.uid, name)
        for q in all_questionnaires
        for name, status in q.expected().items()
        if status == "finished"
    }
    assert set(counted) == expected_runs, "runs missing or unexpected"
    return [(uid, at) for uid, _, at in runs]


@pytest.mark.slow
@pytest.mark.parametrize("server", [{"WEBAPP_TASK_DELAY": "0.2"}], indirect=True)
async def test_questionnaires_under_load_then_clean_shutdown(
    server: Server, client: httpx.AsyncClient
) -> None:
    # 50 questionnaires, every request of all of them in flight together.
    batch = questionnaires("q", 50)
    started = time.monotonic()
    await asyncio.gather(*(fill_in(client, server.url, q) for q in batch))
    posted = time.monotonic() - started
    bodies = await asyncio.gather(*(wait_resolved(client, server.url, q) for q in batch))
    settled = time.monotonic() - started
    for q, body in zip(batch, bodies, strict=True):
        assert set(body["tasks"]) == {
            "t_importSubject",
            "t_importResponses",
            "t_importBrowserMetadata",
            "t_computePsychometricScore",
        }
        statuses = {i["name"]: i["status"] for i in body["instances"]}
        results = {i["name"]: i["result"] for i in body["instances"]}
        check_session(q, statuses, results)

    # Then more questionnaires, and shutdown as soon as their last request is
    # answered: their runs are still going, and shutdown must let them finish.
    late = questionnaires("late", 10)
    await asyncio.gather(*(fill_in(client, server.url, q) for q in late))
    await client.aclose()
    signalled = time.time()
    code, took = server.stop(signal.SIGINT)
    assert code == 0, server.output()
    assert "Traceback" not in server.output()

    runs = await check_file(server.db, batch + late)
    drained = sum(at > signalled for _, at in runs)
    assert drained > 0, "no run was left in flight at shutdown: the drain was not exercised"
    requests = sum(2 + q.pages + q.embedded for q in batch)
    print(
        f"\n{requests} requests posted in {posted:.2f}s ({requests / posted:.0f}/s), "
        f"all settled in {settled:.2f}s; shutdown in {took:.2f}s with {drained} runs "
        f"started after the signal"
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "server", [{"WEBAPP_TASK_DELAY": "30", "WEBAPP_CLOSE_TIMEOUT": "0.5"}], indirect=True
)
async def test_sigterm_cancels_stragglers_and_records_them_failed(
    server: Server, client: httpx.AsyncClient
) -> None:
    # Tasks that would take 30s: shutdown waits close_timeout, then cancels them.
    batch = questionnaires("slow", 5)
    await asyncio.gather(*(fill_in(client, server.url, q) for q in batch))
    await client.aclose()
    await asyncio.sleep(0.2)  # let the runs start
    code, took = server.stop(signal.SIGTERM)
    # uvicorn re-raises SIGTERM after its graceful shutdown, as the signal's
    # default action expects: the exit status says "terminated by SIGTERM".
    assert code == -signal.SIGTERM, server.output()
    assert took < 10
    async with SQLiteStorage(server.db) as storage:
        for q in batch:
            state = await storage.load_all(q.uid)
            subject = state.instances["t_importSubject#0"]
            assert subject.status.value == "failed"
            assert subject.metadata["exceptionType"] == "asyncio.exceptions.CancelledError"
            assert subject.can_replay
    with closing(sqlite3.connect(server.db)) as conn, conn:
        stuck = conn.execute(
            "SELECT count(*) FROM atriggers_instances WHERE status IN ('scheduled', 'running')"
        ).fetchone()[0]
        runs = conn.execute("SELECT count(*) FROM webapp_runs").fetchone()[0]
    assert stuck == 0
    assert runs == len(batch)  # each subject import started once, then was cancelled
