"""Helpers for the Lambda runner tests: a local Lambda endpoint process, real
signing clients pointed at it, and waiting for a session's instances."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Collection
from pathlib import Path
from typing import Any

from botocore.config import Config  # type: ignore[import-untyped, unused-ignore]
from botocore.session import get_session  # type: ignore[import-untyped, unused-ignore]

from atriggers import SessionState, Status, TaskInstance
from atriggers.storage import SQLiteStorage

HERE = Path(__file__).resolve().parent
ACCESS_KEY = "AKIDATRIGGERSTEST"
SECRET_KEY = "atriggers-test-secret"
REGION = "us-east-1"
WORKER = "atriggers-worker"
WORKER_AIO = "atriggers-worker-aio"
#: A function with a 2-second timeout.
WORKER_SHORT = "atriggers-worker-short"
THROTTLED = "atriggers-throttled"
DENIED = "atriggers-denied"
#: The handler's function timeout in the endpoint: long cooldowns do not fit.
FUNCTION_TIMEOUT = 20.0

#: No botocore retries: a rejection shows at once (botocore would otherwise retry
#: throttling with backoff before giving up).
CLIENT_CONFIG = Config(
    retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=2, read_timeout=20
)


class LambdaEndpoint:
    """`lambda_endpoint.py` running in its own process."""

    #: The endpoint of the test suite: its functions are in `lambda_functions.py`.
    TEST_ARGS = (
        "--app",
        "lambda_functions",
        "--function",
        f"{WORKER}=handler",
        "--function",
        f"{WORKER_AIO}=aio_handler",
        "--function",
        f"{WORKER_SHORT}=handler@2",
        "--throttle",
        THROTTLED,
        "--deny",
        DENIED,
        "--timeout",
        str(FUNCTION_TIMEOUT),
    )

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = args or self.TEST_ARGS
        self.env = env or {}
        self.process: subprocess.Popen[str] | None = None
        self.url = ""
        self.stderr_lines: list[str] = []
        self.returncode: int | None = None
        self._stderr_reader = threading.Thread()

    def start(self, timeout: float = 30.0) -> None:
        # No AWS settings of the machine leak in: only the dummy credentials.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(self.env, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, "-W", "default", str(HERE / "lambda_endpoint.py"), *self.args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        # Drain stderr so a chatty handler can never block on a full pipe.
        self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_reader.start()
        ready: list[str] = []
        reader = threading.Thread(target=lambda: ready.append(self._stdout().readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        line = ready[0] if ready else ""
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"the Lambda endpoint did not start ({line!r}):\n{''.join(self.stderr_lines)}")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"

    def _stdout(self) -> Any:
        assert self.process is not None and self.process.stdout is not None
        return self.process.stdout

    def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr_lines.append(line)

    def stop(self, timeout: float = 15.0) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        assert process.stdin is not None
        process.stdin.close()  # the endpoint's signal to finish and close its handlers
        try:
            self.returncode = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        self._stderr_reader.join(5)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()

    async def answered(self, uid: str, *, within: float = 10.0) -> list[dict[str, Any]]:
        """`invocations(uid)` once each has been answered. A handler stores the
        instance's outcome before it returns, so storage shows it first: what
        the endpoint records of the answer comes a moment later."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            records = self.invocations(uid)
            if all(r["status"] != "queued" for r in records) or loop.time() >= deadline:
                return records
            await asyncio.sleep(0.01)

    def invocations(self, uid: str | None = None) -> list[dict[str, Any]]:
        """What the endpoint received (and what came of it), optionally for one session."""
        with urllib.request.urlopen(f"{self.url}/_endpoint/invocations", timeout=10) as response:
            records: list[dict[str, Any]] = json.load(response)
        if uid is None:
            return records
        return [r for r in records if isinstance(r["payload"], dict) and r["payload"].get("uid") == uid]


def botocore_client(endpoint_url: str, secret: str = SECRET_KEY) -> Any:
    return get_session().create_client(
        "lambda",
        region_name=REGION,
        endpoint_url=endpoint_url,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=secret,
        config=CLIENT_CONFIG,
    )


def aio_client_context(endpoint_url: str) -> Any:
    from aiobotocore.session import (  # type: ignore[import-untyped, unused-ignore]
        get_session as get_aio_session,
    )

    return get_aio_session().create_client(
        "lambda",
        region_name=REGION,
        endpoint_url=endpoint_url,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=CLIENT_CONFIG,
    )


def closed_port_url() -> str:
    """A URL where nothing listens: a port just bound and released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def wait_for(
    storage: SQLiteStorage,
    uid: str,
    name: str,
    statuses: Collection[Status] = (Status.FINISHED, Status.FAILED),
    within: float = 20.0,
) -> TaskInstance:
    """Poll storage (fresh reads: another process writes) until `name` reaches
    one of `statuses`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    state: SessionState | None = None
    while loop.time() < deadline:
        state = await storage.load_all(uid)
        instance = state.instances.get(name)
        if instance is not None and instance.status in statuses:
            return instance
        await asyncio.sleep(0.05)
    shown = state.debug_repr() if state is not None else "nothing stored"
    raise AssertionError(f"{uid}/{name} did not reach {list(statuses)} in {within}s:\n{shown}")
