"""`why`, `fire --dry-run`, `sessions --waiting-for/--by-code`, `set-status`,
`resolve-logs`, `note`, the checks of `replay`, and what `show` tells, against
a real SQLite file."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from atriggers import Status, TriggerManager
from atriggers.storage import SQLiteStorage

from .conftest import Cli
from .test_sessions import snapshot, states


def test_why_explains_every_task(cli: Cli, url: str, session: str) -> None:
    result = cli("why", url, session)
    assert result.code == 0, result
    lines = result.out.splitlines()
    assert lines[0].split() == ["task", "instance", "code", "missing"]
    assert lines[2].split() == ["t_echo", "t_echo#0", "finished"]
    assert lines[3].split() == ["t_boom", "t_boom#0", "failed"]
    assert lines[4].split() == ["t_after_boom", "-", "never-triggered", "t_boom"]
    assert "t_boom#0 failed at " in result.out and "with builtins.ValueError: bad score" in result.out
    assert "t_after_boom has never been triggered: this session has never seen t_boom." in result.out


def test_why_json_and_one_name(cli: Cli, url: str, session: str) -> None:
    data = cli("why", url, session, "--json").json()
    assert [(e["task"], e["instance"], e["code"], e["missing"]) for e in data] == [
        ("t_echo", "t_echo#0", "finished", []),
        ("t_boom", "t_boom#0", "failed", []),
        ("t_after_boom", None, "never-triggered", ["t_boom"]),
    ]
    assert data[1]["error"] == "builtins.ValueError" and data[1]["message"] == "bad score"
    (one,) = cli("why", url, session, "t_boom#0", "--json").json()
    assert one["instance"] == "t_boom#0"
    missing = cli("why", url, session, "t_nope")
    assert missing.code == 3 and "has no task instance named 't_nope'" in missing.err
    assert cli("why", url, "nobody").code == 3


def test_fire_dry_run_writes_nothing(cli: Cli, url: str, workdir: Path) -> None:
    (workdir / "q.json").write_text(
        json.dumps(
            {
                "t_import": {"after": ["page", "done"], "run": "app.echo", "unless": ["cancel"]},
                "t_every": {"after": ["page"], "andEvery": "page", "run": "app.echo"},
            }
        )
    )
    assert cli("configure", url, "q1", "q.json").code == 0
    before = snapshot(workdir, "q1")
    result = cli("fire", url, "q1", "page", "--dry-run", "--kwargs", '{"n": 1}')
    assert result.code == 0, result
    rows = [line.split(None, 2) for line in result.out.splitlines()[3:5]]
    assert rows == [["schedule", "t_every#0", "asyncio"], ["create", "t_import#0", "waits for done"]]
    assert "nothing was written" in result.out
    data = cli("fire", url, "q1", "cancel", "--dry-run", "--json").json()
    assert data["dryRun"] is True and data["version"] == before.version
    assert data["created"] == [
        {"name": "t_import#0", "task": "t_import", "status": "abandoned", "reason": "unless"}
    ]
    assert data["abandoned"] == data["created"] and data["scheduled"] == []
    after = snapshot(workdir, "q1")
    assert after.version == before.version and not after.instances and not after.latest_kwargs
    assert cli("fire", url, "q1", "nothing", "--dry-run").out.endswith(
        "(it would only be remembered as fired)\n"
    )


def test_sessions_waiting_for_a_trigger_and_by_code(cli: Cli, url: str, workdir: Path) -> None:
    (workdir / "q.json").write_text(
        json.dumps({"t_import": {"after": ["page", "questionnaireComplete"], "run": "app.echo"}})
    )
    for n in range(5):
        assert cli("configure", url, f"q{n}", "q.json").code == 0
    for n in range(3):
        assert cli("fire", url, f"q{n}", "page").code == 0
    result = cli("sessions", url, "--waiting-for", "questionnaireComplete")
    assert result.code == 0, result
    assert result.out.startswith("5 session(s) waiting for questionnaireComplete (of 5 session(s))\n")
    assert "q0       t_import" in result.out
    assert cli("sessions", url, "--waiting-for", "page", "-q").out.split() == ["q3", "q4"]
    data = cli("sessions", url, "--by-code", "--json").json()
    assert data["codes"] == {
        "never-triggered": {"tasks": 2, "sessions": 2},
        "waiting": {"tasks": 3, "sessions": 3},
    }
    limited = cli("sessions", url, "--by-code", "--limit", "2")
    assert "over 2 session(s) (--limit reached)" in limited.out
    assert cli("sessions", url, "--by-code", "--limit", "0").code == 2
    assert cli("sessions", url, "--failed", "--waiting-for", "x").code == 2


def test_set_status_unsticks_a_running_instance(cli: Cli, url: str, session: str, workdir: Path) -> None:
    async def stick() -> None:
        async with SQLiteStorage(workdir / "state.db") as storage:
            await TriggerManager(storage, session).update_instance_status("t_echo#0", "running")

    asyncio.run(stick())
    result = cli("set-status", url, session, "t_echo#0", "failed", "--by", "alice", "--note", "worker died")
    assert result.code == 6, result  # the instance is failed now: said like a failed run
    assert "t_echo#0: running -> failed" in result.out
    failed = snapshot(workdir).instances["t_echo#0"]
    assert failed.status is Status.FAILED
    repair = failed.metadata["repair"]
    assert (repair["by"], repair["note"], repair["was"], repair["action"]) == (
        "alice",
        "worker died",
        "running",
        "set-status",
    )
    # Now it can be replayed like any failed instance.
    assert cli("replay", url, session, "t_echo#0", "--import", "apptasks").code == 0
    assert states(workdir)["t_echo#1"] == "finished"
    bad = cli("set-status", url, session, "t_echo#1", "broken")
    assert bad.code == 2 and "invalid choice: 'broken'" in bad.err
    assert cli("set-status", url, session, "t_echo#1", "failed", "--kwargs", "{}").code == 2


def test_set_status_with_cascade_runs_what_follows(cli: Cli, url: str, session: str, workdir: Path) -> None:
    result = cli(
        "set-status",
        url,
        session,
        "t_boom#0",
        "finished",
        "--cascade",
        "--kwargs",
        '{"ok": 1}',
        "--import",
        "apptasks",
    )
    assert result.code == 0, result
    assert states(workdir)["t_after_boom#0"] == "finished"


def test_resolve_logs_and_notes(cli: Cli, url: str, session: str, workdir: Path) -> None:
    async def log_error() -> None:
        async with SQLiteStorage(workdir / "state.db") as storage:
            await TriggerManager(storage, session).update_instance_metadata("t_boom#0", {"logLevel": 40})

    asyncio.run(log_error())
    assert "Instances with unresolved logs: t_boom#0 (ERROR)" in cli("show", url, session).out
    result = cli("resolve-logs", url, session, "t_boom#0")
    assert result.code == 6 and "t_boom#0: ERROR logs marked resolved" in result.out  # still failed
    assert snapshot(workdir).instances["t_boom#0"].logs_resolved
    assert "Instances with unresolved logs: none" in cli("show", url, session).out

    assert cli("note", url, session, "t_boom#0", "ticket OPS-12", "--by", "alice").code == 6
    assert "note added (2 in all)" in cli("note", url, session, "t_boom#0", "waiting for the vendor").out
    notes = snapshot(workdir).instances["t_boom#0"].metadata["notes"]
    assert [(n.get("by"), n["text"]) for n in notes] == [
        ("alice", "ticket OPS-12"),
        (notes[1]["by"], "waiting for the vendor"),
    ]
    assert "@" in notes[1]["by"]  # user@host when --by is not given
    shown = cli("show", url, session).out
    assert "\nNotes\nt_boom#0  " in shown and "alice: ticket OPS-12" in shown
    assert cli("note", url, session, "t_boom#0", " ").code == 2
    assert cli("note", url, session, "t_nope#0", "x").code == 3


def test_replay_refuses_before_using_up_the_instance(
    cli: Cli, console: Cli, url: str, session: str, workdir: Path
) -> None:
    # Without --import the task would run in that process, unknown there:
    # refused, nothing changed. (A process of its own: this one imported the tasks.)
    refused = console("replay", url, session, "t_boom#0")
    assert refused.code == 2
    assert "task 'app.boom' is not registered" in refused.err and "nothing was changed" in refused.err
    assert states(workdir)["t_boom#0"] == "failed" and "t_boom#1" not in states(workdir)
    unknown = cli("replay", url, session, "t_boom#0", "--runner", "nowhere")
    assert unknown.code == 2 and "nowhere" in unknown.err
    assert states(workdir)["t_boom#0"] == "failed"
    # The failure is a real error, not a check: it still says so after the replay.
    fixed = cli(
        "replay", url, session, "t_boom#0", "--kwargs", '{"go": {"fixed": true}}', "--import", "apptasks"
    )
    assert fixed.code == 0 and "replayed t_boom#0 as t_boom#1 (runner asyncio)" in fixed.out


def test_replay_goes_where_the_task_runs_unless_told(cli: Cli, url: str, workdir: Path) -> None:
    """A task dispatched to a runner this process does not run in-process is
    replayed there: the task need not be importable here."""
    (workdir / "celery.json").write_text(json.dumps({"t_remote": {"after": ["go"], "run": "app.echo"}}))
    assert cli("configure", url, "r1", "celery.json").code == 0

    async def fail_on_parked_runner() -> None:
        async with SQLiteStorage(workdir / "state.db") as storage:
            manager = TriggerManager(storage, "r1", default_runner="parked")
            await manager.fire("go")  # no runner "parked" here: failed at dispatch

    asyncio.run(fail_on_parked_runner())
    assert snapshot(workdir, "r1").instances["t_remote#0"].runner == "parked"
    # This process knows no "parked" runner: refused, not run here by mistake.
    refused = cli("replay", url, "r1", "t_remote#0")
    assert refused.code == 2 and "runner 'parked'" in refused.err
    assert states(workdir, "r1") == {"t_remote#0": "failed"}
    # Told otherwise, the clone goes to that runner: here, in this process.
    told = cli("replay", url, "r1", "t_remote#0", "--runner", "asyncio", "--import", "apptasks")
    assert told.code == 0 and "replayed t_remote#0 as t_remote#1 (runner asyncio)" in told.out
    clone = snapshot(workdir, "r1").instances["t_remote#1"]
    assert clone.status is Status.FINISHED and clone.runner == "asyncio"


def test_show_tells_replays_durations_and_logged_errors(
    cli: Cli, url: str, session: str, workdir: Path
) -> None:
    assert cli("replay", url, session, "t_boom#0", "--import", "apptasks").code == 6
    shown = cli("show", url, session).out
    assert "\nReplays\nt_boom#0 (replayed) -> t_boom#1 (failed)\n" in shown
    created = snapshot(workdir).instances["t_echo#0"].timestamps["created"]
    assert created[:19].replace("T", " ") + "Z" in shown
