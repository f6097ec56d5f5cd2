"""Fixtures for runner tests: a real redis-server and real `celery worker`
processes, all on 127.0.0.1 with random free ports, all stopped at teardown."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

# Before any test module imports the suites: their asserts explain failures.
pytest.register_assert_rewrite("atriggers.testing.conformance")

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
# The Celery tests import their helper modules (and workers their app) from here,
# whatever pytest's import mode.
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from celery_helpers import Worker, WorkerFactory, stop_process  # noqa: E402

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway redis-server (no persistence); yields ``redis://127.0.0.1:PORT``."""
    if not os.path.exists(REDIS_SERVER):
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must not pass by skipping
        pytest.skip(message)
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [
            REDIS_SERVER,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not _redis_ping(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {port}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def start_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerFactory]:
    """Start `celery worker` subprocesses; all are stopped when the module ends."""
    workers: list[Worker] = []

    def start(
        app: str,
        broker: str,
        *,
        queues: Sequence[str] = ("celery",),
        pool: str = "solo",
        concurrency: int = 1,
        cwd: Path = HERE,
        env: dict[str, str] | None = None,
    ) -> Worker:
        log = tmp_path_factory.mktemp("worker") / "worker.log"
        environment = {
            **os.environ,
            "ATRIGGERS_TEST_BROKER": broker,
            "PYTHONPATH": os.pathsep.join([str(cwd), str(ROOT)]),
            **(env or {}),
        }
        environment.pop("CELERY_ALWAYS_EAGER", None)
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    app,
                    "worker",
                    "--loglevel",
                    "INFO",
                    "--pool",
                    pool,
                    "--concurrency",
                    str(concurrency),
                    "-Q",
                    ",".join(queues),
                    "--without-heartbeat",
                    "--without-gossip",
                    "--without-mingle",
                    "-n",
                    f"w{len(workers)}-{os.getpid()}@%h",
                ],
                cwd=cwd,
                env=environment,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        worker = Worker(process, log)
        workers.append(worker)
        try:
            worker.wait_ready()
        except BaseException:
            worker.stop()
            raise
        return worker

    try:
        yield start
    finally:
        for worker in workers:
            worker.stop()
