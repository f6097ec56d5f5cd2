"""`atriggers dashboard`: the dashboard served alone by the console script (a real
process, a real uvicorn), read-only unless --allow-actions."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from .conftest import SCRIPT, Cli


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serving(workdir: Path, *args: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    process = subprocess.Popen(
        [str(SCRIPT), "dashboard", "sqlite:///state.db", "--port", str(port), *args],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate()
            try:
                httpx.get(base + "/", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the dashboard did not start"
                time.sleep(0.1)
        yield base, process
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def csrf_and_cookies(base: str, uid: str) -> tuple[str, httpx.Cookies]:
    page = httpx.get(base + "/session", params={"uid": uid})
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1), page.cookies


def test_read_only_by_default_on_localhost(workdir: Path, session: str) -> None:
    with serving(workdir) as (base, process):
        page = httpx.get(base + "/")
        assert page.status_code == 200 and "read-only" in page.text and "s1" in page.text
        session_page = httpx.get(base + "/session", params={"uid": "s1"}).text
        assert "Replay</button>" not in session_page
        refused = httpx.post(base + "/session/replay", data={"uid": "s1", "instance": "t_boom#0"})
        assert refused.status_code == 403
    _, err = process.communicate()
    assert "http://127.0.0.1:" in err and "read-only" in err


def test_allow_actions_replays_in_the_command(workdir: Path, session: str, cli: Cli) -> None:
    with serving(workdir, "--allow-actions", "--import", "apptasks") as (base, _):
        csrf, cookies = csrf_and_cookies(base, "s1")
        form = {"csrf": csrf, "uid": "s1", "instance": "t_boom#0", "kwargs": '{"go": {"fixed": true}}'}
        done = httpx.post(base + "/session/replay", data=form, cookies=cookies)
        assert done.status_code == 303, done.text
        deadline = time.monotonic() + 15
        while "t_after_boom#0" not in httpx.get(base + "/session", params={"uid": "s1"}).text:
            assert time.monotonic() < deadline, "the replayed instance's cascade never ran"
            time.sleep(0.1)
    shown = cli("show", "sqlite:///state.db", "s1", "--json").json()
    statuses = {i["name"]: i["status"] for i in shown["instances"]}
    assert statuses["t_boom#0"] == "replayed" and statuses["t_boom#1"] == "finished"


def test_a_missing_database_is_not_created(cli: Cli, workdir: Path) -> None:
    result = cli("dashboard", "sqlite:///nosuch.db")
    assert result.code != 0 and "no storage at" in result.err
    assert not (workdir / "nosuch.db").exists()
