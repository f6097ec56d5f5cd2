"""Helpers of the fault tests: a redis-server that can be stopped and started
again on the same port, and child processes that can be SIGKILLed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisProcess:
    """A redis-server child on 127.0.0.1 (no persistence), stoppable and
    startable again on the same port."""

    def __init__(self, directory: Path, *, persistent: bool = False) -> None:
        if not os.path.exists(REDIS_SERVER):
            if os.environ.get("CI"):
                pytest.fail("redis-server is not installed")
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.directory = directory
        #: With an append-only file synced on every write: data survives a restart.
        self.persistent = persistent
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        assert self.process is None
        persistence = (
            ("--appendonly", "yes", "--appendfsync", "always") if self.persistent else ("--appendonly", "no")
        )
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                *("--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.directory)),
                *("--save", "", "--loglevel", "warning"),
                *persistence,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.send_signal(sig)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


class Child:
    """A ``python`` child process that prints ``READY {json}`` when set up."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]), **env}
        self.process = subprocess.Popen(
            [sys.executable, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
        )
        self.stderr: list[str] = []
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)

    def ready(self, timeout: float = 30.0) -> dict[str, Any]:
        assert self.process.stdout is not None
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.append(self.process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        if not lines or not lines[0].startswith("READY "):
            self.kill()
            raise RuntimeError(f"the child did not get ready: {lines!r}\n{''.join(self.stderr)}")
        info: dict[str, Any] = json.loads(lines[0][len("READY ") :])
        return info

    def wait(self, timeout: float = 15.0) -> str:
        """Wait for it to exit; returns the rest of its stdout (stderr is in `stderr`)."""
        assert self.process.stdout is not None
        out = self.process.stdout.read()
        self.process.wait(timeout)
        self._drainer.join(5)
        return out

    def kill(self) -> float:
        """SIGKILL it; returns when (epoch seconds)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        killed = time.time()
        self.process.wait(10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        return killed
