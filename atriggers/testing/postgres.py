"""`PostgresCluster`: a private PostgreSQL server for tests and benchmarks.

It runs ``initdb`` into a temporary directory and starts ``postgres`` on
127.0.0.1 on a free port, never touching a cluster of the machine's own. Run as
root (as CI does), the server runs as an unprivileged user instead (``postgres``,
else ``nobody``), since PostgreSQL refuses to run as root::

    cluster = PostgresCluster.find()   # None if no PostgreSQL binaries are installed
    cluster.start()
    url = cluster.url                  # postgresql://atriggers:...@127.0.0.1:PORT/postgres
    cluster.stop()                     # restartable on the same port and data
    cluster.destroy()

Durability is set for speed (``fsync=off``): committed data survives the server
being stopped or killed, not the machine losing power.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["PostgresCluster", "find_bindir"]

#: The cluster's superuser and its password (the URL carries it, so that tests
#: check it is masked wherever a storage is shown).
USER = "atriggers"
PASSWORD = "pg-secret-4d1f"


def find_bindir() -> Path | None:
    """Where ``initdb`` and ``postgres`` are: PATH, else the newest
    ``/usr/lib/postgresql/N/bin`` (Debian does not put them on PATH)."""
    found = shutil.which("initdb")
    if found:
        bindir = Path(os.path.realpath(found)).parent
        if (bindir / "postgres").exists():
            return bindir
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0,
    )
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _unprivileged_user() -> str | None:
    """The user to run PostgreSQL as (None: this one, which is not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists")


class PostgresCluster:
    """A throw-away PostgreSQL cluster (see the module's docstring)."""

    def __init__(
        self, bindir: Path, *, port: int | None = None, settings: dict[str, str] | None = None
    ) -> None:
        self.bindir = bindir
        self.port = port or _free_port()
        self.user = _unprivileged_user()
        self.settings = {
            "fsync": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "shared_buffers": "64MB",
            **(settings or {}),
        }
        self.root = Path(tempfile.mkdtemp(prefix="atriggers-pg-"))
        self.data = self.root / "data"
        self.process: subprocess.Popen[bytes] | None = None
        self._initialized = False

    @classmethod
    def find(cls, **options: object) -> PostgresCluster | None:
        bindir = find_bindir()
        return None if bindir is None else cls(bindir, **options)  # type: ignore[arg-type]

    @property
    def url(self) -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/postgres"

    def _owned(self, path: Path) -> None:
        if self.user is not None:
            record = pwd.getpwnam(self.user)
            os.chown(path, record.pw_uid, record.pw_gid)

    def _run(self, args: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
            args,
            user=self.user,
            group=pwd.getpwnam(self.user).pw_gid if self.user else None,
            extra_groups=[] if self.user else None,
            cwd=self.root,
            **kwargs,
        )

    def initdb(self) -> None:
        self._owned(self.root)
        password_file = self.root / "password"
        password_file.write_text(PASSWORD + "\n")
        self._owned(password_file)
        process = self._run(
            [
                str(self.bindir / "initdb"),
                *("-D", str(self.data), "-U", USER, "--pwfile", str(password_file)),
                *("--auth-local", "trust", "--auth-host", "scram-sha-256"),
                *("-E", "UTF8", "--locale", "C", "--no-sync"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        out, _ = process.communicate(timeout=120)
        password_file.unlink()
        if process.returncode != 0:
            raise RuntimeError(f"initdb failed ({process.returncode}):\n{out.decode(errors='replace')}")
        self._initialized = True

    def start(self, timeout: float = 30.0) -> None:
        """Start the server (running initdb first, once) and wait until it
        accepts connections."""
        assert self.process is None, "already running"
        if not self._initialized:
            self.initdb()
        settings = [f"--{key}={value}" for key, value in self.settings.items()]
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - the child keeps it open
        try:
            self.process = self._run(
                [
                    str(self.bindir / "postgres"),
                    *("-D", str(self.data), "-p", str(self.port)),
                    "--listen_addresses=127.0.0.1",
                    f"--unix_socket_directories={self.root}",
                    *settings,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        pid_file = self.data / "postmaster.pid"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                raise RuntimeError(f"postgres exited at start on port {self.port}:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                lines = pid_file.read_text().splitlines()
                # The 8th line of postmaster.pid says "ready" once connections are accepted.
                if len(lines) >= 8 and lines[7].strip() == "ready":
                    return
            time.sleep(0.02)
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"postgres did not get ready on port {self.port} within {timeout}s")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> None:
        """Stop the server: SIGINT is PostgreSQL's fast shutdown (clients are
        disconnected, nothing committed is lost), SIGQUIT its immediate one
        (a crash: recovered from the WAL at the next start)."""
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def log_tail(self, size: int = 3000) -> str:
        try:
            return (self.root / "server.log").read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def destroy(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
