"""Helpers shared by the Celery runner tests (importable without Celery or redis-py)."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from atriggers import SessionState, TriggerManager


async def wait_for_state(
    manager: TriggerManager,
    predicate: Callable[[SessionState], bool],
    *,
    within: float = 20.0,
    explain: Callable[[], str] = lambda: "",
) -> SessionState:
    """Poll the session (fresh from storage) until `predicate` holds."""
    deadline = time.monotonic() + within
    while True:
        state = await manager.get_state()
        if predicate(state):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(
                f"session {manager.uid!r} did not reach the expected state in {within}s:\n"
                f"{state.debug_repr()}\n{explain()}"
            )
        await asyncio.sleep(0.05)


def all_resolved(state: SessionState) -> bool:
    return bool(state.instances) and not state.get_unresolved_instances()


def queued_messages(broker_url: str, queue: str) -> list[dict[str, Any]]:
    """The raw Celery messages waiting in a redis-backed queue, decoded:
    ``{"headers": ..., "properties": ..., "args": [...]}``."""
    import redis

    client = redis.Redis.from_url(broker_url)
    try:
        raw = client.lrange(queue, 0, -1)
    finally:
        client.close()
    messages = []
    for item in raw:
        envelope = json.loads(item)
        body = envelope["body"]
        if envelope["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args, kwargs, _embed = json.loads(body)
        messages.append(
            {
                "headers": envelope["headers"],
                "properties": envelope["properties"],
                "args": args,
                "kwargs": kwargs,
                "content_type": envelope["content-type"],
            }
        )
    return messages


def purge(broker_url: str) -> None:
    import redis

    client = redis.Redis.from_url(broker_url)
    try:
        client.flushdb()
    finally:
        client.close()


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM (a worker's warm shutdown), then SIGKILL if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


class Worker:
    """A `celery worker` subprocess; its log goes to a file shown on failure."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.log = log

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while " ready." not in self.output():
            if self.process.poll() is not None:
                raise RuntimeError(f"celery worker exited early:\n{self.output()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"celery worker not ready after {timeout}s:\n{self.output()}")
            time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.process, timeout=15)


WorkerFactory = Callable[..., Worker]
