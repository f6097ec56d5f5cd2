"""`configure`, `show`, `fire`, `replay`, `skip`, `sessions` against a real SQLite file."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from atriggers import SessionState, Status, TriggerManager
from atriggers.describe import describe_instance
from atriggers.storage import SQLiteStorage

from .conftest import Cli, Result


def snapshot(workdir: Path, uid: str = "s1") -> SessionState:
    """The whole session, read straight from the database by this test."""

    async def read() -> SessionState:
        async with SQLiteStorage(workdir / "state.db") as storage:
            return await TriggerManager(storage, uid).get_state()

    return asyncio.run(read())


def states(workdir: Path, uid: str = "s1") -> dict[str, str]:
    """Instance -> status, read straight from the database."""
    return {name: i.status.value for name, i in snapshot(workdir, uid).instances.items()}


def test_configure_creates_the_session(cli: Cli, url: str, workdir: Path) -> None:
    result = cli("configure", url, "s1", "config.json")
    assert result.code == 0, result
    assert "3 task(s) given, 3 configured" in result.out
    assert (workdir / "state.db").exists()


def test_configure_refuses_a_bad_configuration(cli: Cli, url: str, workdir: Path) -> None:
    (workdir / "bad.json").write_text('{"t_a": {"after": ["go"]}}')
    result = cli("configure", url, "s1", "bad.json")
    assert result.code == 1
    assert "nothing stored" in result.err and "is required" in result.err
    assert not (workdir / "state.db").exists()


def test_fire_runs_tasks_in_process_and_reports(cli: Cli, url: str, workdir: Path) -> None:
    assert cli("configure", url, "s1", "config.json").code == 0
    result = cli("fire", url, "s1", "go", "--kwargs", '{"x": 1}', "--import", "apptasks")
    assert result.code == 6, result  # t_boom failed
    assert "fired 'go' in session 's1'; scheduled: t_echo#0, t_boom#0" in result.out
    assert "t_echo#0  (new)  finished" in result.out
    # The failure as `atriggers.testing`'s assertions describe it too.
    assert "\nFailed instances\nt_boom#0: failed\n  exception: builtins.ValueError\n" in result.out
    assert 'context: {"score": 3}' in result.out
    assert 'raise with_context(ValueError("bad score")' in result.out
    assert states(workdir) == {"t_echo#0": "finished", "t_boom#0": "failed"}


def test_fire_json_and_cascade(cli: Cli, url: str, workdir: Path) -> None:
    (workdir / "chain.json").write_text(
        json.dumps(
            {
                "t_first": {"after": ["go"], "run": "app.echo"},
                "t_second": {"after": ["t_first"], "run": "app.echo"},
            }
        )
    )
    assert cli("configure", url, "c1", "chain.json").code == 0
    result = cli("fire", url, "c1", "go", "--json", "--import", "apptasks")
    assert result.code == 0, result
    data = result.json()
    assert data["timedOut"] is False
    changed = {i["name"]: (i["previousStatus"], i["status"]) for i in data["changed"]}
    # The cascade ran too: the command waited for it.
    assert changed == {"t_first#0": (None, "finished"), "t_second#0": (None, "finished")}
    second = next(i for i in data["changed"] if i["name"] == "t_second#0")
    assert second["metadata"]["result"] == {"seen": ["t_first"]}


def test_fire_without_the_task_module_fails_the_instance(cli: Cli, url: str) -> None:
    assert cli("configure", url, "s1", "config.json").code == 0
    result = cli("fire", url, "s1", "go")
    assert result.code == 6
    assert "atriggers.errors.UnknownTask" in result.out


def test_show(cli: Cli, url: str, session: str) -> None:
    result = cli("show", url, session)
    assert result.code == 0, result
    out = result.out
    assert out.startswith("Session 's1' in sqlite:///")
    assert "version" in out and "3 task(s), 2 instance(s)" in out
    assert "t_after_boom  app.echo  t_boom" in out
    assert "t_echo#0  finished" in out and '{"seen": ["go"]}' in out
    assert "t_boom#0  failed    go                " in out
    assert "Unresolved tasks: t_boom, t_after_boom" in out
    assert "Unresolved instances: t_boom#0" in out
    assert "\nFailed instances\nt_boom#0: failed\n  exception: builtins.ValueError\n" in out
    assert 'context: {"score": 3}' in out
    assert "Traceback (most recent call last):" in out
    assert "ValueError: bad score" in out


def test_show_json(cli: Cli, url: str, session: str) -> None:
    result = cli("show", url, session, "--json")
    assert result.code == 0
    data = result.json()
    assert data["uid"] == "s1" and data["version"] >= 3
    assert set(data["tasks"]) == {"t_echo", "t_boom", "t_after_boom"}
    assert [i["name"] for i in data["instances"]] == ["t_echo#0", "t_boom#0"]
    assert data["unresolvedTasks"] == ["t_boom", "t_after_boom"]
    assert data["unresolvedInstances"] == ["t_boom#0"]
    assert data["latestKwargs"]["go"] == {"x": 1}
    [failed] = data["failed"]
    assert failed["instance"] == "t_boom#0"
    assert failed["exceptionType"] == "builtins.ValueError"
    assert failed["exceptionContext"] == {"score": 3}
    assert "ValueError: bad score" in failed["exceptionInfo"]


def test_show_json_is_the_snapshot_itself(cli: Cli, url: str, session: str, workdir: Path) -> None:
    """One JSON form of a session: `SessionState.debug_repr`, instances listed in order."""
    data = cli("show", url, session, "--json").json()
    expected = snapshot(workdir).debug_repr()
    assert data.pop("url").startswith("sqlite:///")
    assert data.pop("instances") == [{"name": n, **i} for n, i in expected.pop("instances").items()]
    assert data == expected


def test_a_failure_reads_as_in_test_assertions(cli: Cli, url: str, session: str, workdir: Path) -> None:
    failed = snapshot(workdir).instances["t_boom#0"]
    assert describe_instance(failed) in cli("show", url, session).out
    replayed = cli("replay", url, session, "t_boom#0", "--import", "apptasks")
    assert describe_instance(snapshot(workdir).instances["t_boom#1"]) in replayed.out


def test_replay_with_replacement_kwargs(cli: Cli, url: str, session: str, workdir: Path) -> None:
    result = cli(
        "replay", url, session, "t_boom#0", "--kwargs", '{"go": {"fixed": true}}', "--import", "apptasks"
    )
    assert result.code == 0, result
    assert "replayed t_boom#0 as t_boom#1" in result.out
    assert states(workdir) == {
        "t_echo#0": "finished",
        "t_boom#0": "replayed",
        "t_boom#1": "finished",
        "t_after_boom#0": "finished",  # the cascade of the replay ran here too
    }


def test_replay_after_unless_asks_for_force(cli: Cli, url: str, workdir: Path) -> None:
    (workdir / "order.json").write_text(
        '{"t_ship": {"after": ["paid"], "unless": ["cancelled"], "run": "app.boom"}}'
    )
    assert cli("configure", url, "o1", "order.json").code == 0
    assert cli("fire", url, "o1", "paid", "--import", "apptasks").code == 6  # t_ship#0 failed
    assert cli("fire", url, "o1", "cancelled").code == 0
    refused = cli("replay", url, "o1", "t_ship#0", "--import", "apptasks")
    assert refused.code == 4 and "add --force" in refused.err
    assert states(workdir, "o1") == {"t_ship#0": "failed"}
    forced = cli("replay", url, "o1", "t_ship#0", "--force", "--import", "apptasks")
    assert forced.code == 6 and states(workdir, "o1")["t_ship#0"] == "replayed"


def test_replay_that_fails_again(cli: Cli, url: str, session: str) -> None:
    result = cli("replay", url, session, "t_boom#0", "--import", "apptasks")
    assert result.code == 6
    assert "t_boom#1  (new)   failed" in result.out


def test_skip_with_cascade(cli: Cli, url: str, session: str, workdir: Path) -> None:
    result = cli(
        "skip", url, session, "t_boom#0", "--cascade", "--result", '{"manual": 1}', "--import", "apptasks"
    )
    assert result.code == 0, result
    assert "skipped t_boom#0; fired 't_boom' as if it had finished" in result.out
    assert states(workdir)["t_after_boom#0"] == "finished"


def test_skip_without_cascade_and_result_needs_cascade(
    cli: Cli, url: str, session: str, workdir: Path
) -> None:
    refused = cli("skip", url, session, "t_boom#0", "--result", "{}")
    assert refused.code == 2 and "--cascade" in refused.err
    result = cli("skip", url, session, "t_boom#0")
    assert result.code == 0
    assert states(workdir) == {"t_echo#0": "finished", "t_boom#0": "skipped"}


def test_sessions_and_filters(cli: Cli, url: str, session: str, workdir: Path) -> None:
    (workdir / "one.json").write_text('{"t_e": {"after": ["go"], "run": "app.echo"}}')
    assert cli("configure", url, "done", "one.json").code == 0
    assert cli("fire", url, "done", "go", "--import", "apptasks").code == 0
    assert cli("configure", url, "waiting", "one.json").code == 0

    listed = cli("sessions", url)
    assert listed.code == 0
    rows = [line.split()[0] for line in listed.out.splitlines()[2:]]
    assert rows == ["done", "s1", "waiting"]
    assert cli("sessions", url, "-q").out == "done\ns1\nwaiting\n"
    assert cli("sessions", url, "--failed", "-q").out == "s1\n"
    assert cli("sessions", url, "--unresolved", "-q").out == "s1\nwaiting\n"
    data = cli("sessions", url, "--failed", "--json").json()
    assert data == [
        {
            "uid": "s1",
            "version": data[0]["version"],
            "tasks": 3,
            "instances": 2,
            "unresolvedTasks": ["t_boom", "t_after_boom"],
            "unresolvedInstances": ["t_boom#0"],
            "failed": ["t_boom#0"],
            "trouble": {},
        }
    ]
    assert cli("sessions", url, "--failed", "--unresolved").code == 2
    assert cli("sessions", url, "--stuck").out == "no sessions matching the filter\n"


def test_lost_and_stuck_instances_are_marked(cli: Cli, url: str, workdir: Path) -> None:
    async def prepare() -> None:
        async with SQLiteStorage(workdir / "state.db") as storage:
            manager = TriggerManager(storage, "stuck", default_runner="parked")
            await manager.update_configuration(
                {
                    "t_lost": {"after": ["go"], "run": "app.echo", "using": "parked"},
                    "t_stuck": {"after": ["go"], "run": "app.echo", "using": "parked"},
                }
            )
            await manager.fire("go")  # no runner "parked": both failed at dispatch
            await manager.update_instance_status(
                "t_lost#0", "failed", {"exceptionType": "atriggers.errors.InstanceLost"}
            )
            # Running for years on a runner that nothing watches (no owner, no
            # deadline): stuck.
            await manager.update_instance_status("t_stuck#0", "running", {"runner": "celery"})
            await manager.update_instance_metadata(
                "t_stuck#0", {"timestamps": {"running": "2000-01-01T00:00:00+00:00"}}
            )

    asyncio.run(prepare())
    listed = cli("sessions", url, "--stuck", "--json")
    assert listed.json()[0]["trouble"] == {"t_lost#0": "lost", "t_stuck#0": "stuck"}
    assert "t_lost#0 (lost), t_stuck#0 (stuck)" in cli("sessions", url).out
    shown = cli("show", url, "stuck").out
    assert "failed (LOST)" in shown and "celery" in shown
    # How long it has been running tells the operator how stuck it is.
    assert "running for " in shown and " d " in shown and "(STUCK)" in shown


def test_in_process_runs_past_the_timeout_are_stored_failed(cli: Cli, url: str, workdir: Path) -> None:
    (workdir / "slow.json").write_text('{"t_slow": {"after": ["go"], "run": "app.slow"}}')
    assert cli("configure", url, "s2", "slow.json").code == 0
    result = cli("fire", url, "s2", "go", "--timeout", "0.5", "--import", "apptasks")
    assert result.code == 6
    assert "gave up waiting after 0.5 s" in result.out
    assert "CancelledError" in result.out
    assert states(workdir, "s2") == {"t_slow#0": "failed"}  # replayable, never stuck


def test_runner_option(cli: Cli, url: str, workdir: Path) -> None:
    assert cli("configure", url, "s1", "config.json").code == 0
    unknown = cli("fire", url, "s1", "go", "--runner", "nope")
    assert unknown.code == 2 and "--runner: no runner registered as 'nope'" in unknown.err
    result = cli("fire", url, "s1", "go", "--runner", "asyncio", "--import", "apptasks")
    assert result.code == 6
    assert states(workdir)["t_echo#0"] == Status.FINISHED.value


def test_error_exit_codes(cli: Cli, url: str, session: str, workdir: Path) -> None:
    checks = [
        (("show", "sqlite:///missing.db", "s1"), 3, "no storage at sqlite:///"),
        (("show", url, "nobody"), 3, "no session 'nobody'"),
        (("fire", url, "nobody", "go"), 3, "no session 'nobody'"),
        (("replay", url, session, "t_nope#0"), 3, "has no task instance named 't_nope#0'"),
        (("replay", url, session, "t_echo#0"), 4, "'t_echo#0' is finished"),
        (("skip", url, session, "t_echo#0"), 4, "only failed instances can be skipped"),
        (("fire", url, session, "go", "--kwargs", "{x"), 2, "--kwargs is not valid JSON"),
        (("fire", url, session, "go", "--kwargs", "[1]"), 2, "must be a JSON object, not list"),
        (("fire", url, session, "go", "--kwargs", "@nope.json"), 2, "no such file"),
        (("replay", url, session, "t_boom#0", "--kwargs", '{"go": 1}'), 2, "maps trigger names"),
        (("fire", url, session, " "), 2, "trigger names must be non-empty strings"),
        (("fire", "redis2://x", session, "go"), 2, "no storage URL scheme registered as 'redis2'"),
        (("fire", url, session, "go", "--import", "no_such_mod"), 2, "ModuleNotFoundError"),
        (("fire", url, session, "go", "--manager", "nope"), 2, "no trigger manager"),
    ]
    for args, code, message in checks:
        result = cli(*args)
        assert (result.code, message in result.err) == (code, True), (args, result)
        assert result.err.startswith("atriggers: error: "), result.err
    (workdir / "garbage.db").write_text("not a database, just text long enough to read " * 4)
    broken = cli("show", "sqlite:///garbage.db", session)
    assert (broken.code, "file is not a database" in broken.err) == (5, True), broken
    # None of it changed the session.
    assert "t_boom#0  failed" in cli("show", url, session).out


def test_hostile_arguments_get_an_error_line_not_a_traceback(
    cli: Cli, url: str, session: str, workdir: Path
) -> None:
    deep = "[" * 10_000 + "]" * 10_000
    checks = [
        (("fire", url, session, "go", "--kwargs", '{"x": "\udc80"}'), 2, "not valid Unicode"),
        (("fire", url, session, "go\udc80"), 2, "not valid Unicode"),
        (("fire", url, session, "go", "--kwargs", '{"x": ' + deep + "}"), 2, "nests too deeply"),
        (("show", url, "s\udc80"), 2, "not valid Unicode"),
    ]
    for args, code, message in checks:
        result = cli(*args)
        assert (result.code, result.out) == (code, ""), (args, result)
        assert result.err.startswith("atriggers: error: ") and message in result.err, (args, result.err)
        assert "Traceback" not in result.err


def test_kwargs_from_a_file(cli: Cli, url: str, session: str, workdir: Path) -> None:
    (workdir / "kw.json").write_text('{"go": {"fixed": true}}')
    result = cli("replay", url, session, "t_boom#0", "--kwargs", "@kw.json", "--import", "apptasks")
    assert result.code == 0, result


def test_the_console_script_runs_tasks_in_its_own_process(
    cli: Cli, console: Cli, url: str, workdir: Path
) -> None:
    assert cli("configure", url, "s1", "config.json").code == 0
    result = console("fire", url, "s1", "go", "--kwargs", '{"x": 1}', "--import", "apptasks")
    assert result.code == 6, result  # t_boom failed, in the script's process
    assert "t_echo#0  (new)  finished" in result.out
    assert "ValueError: bad score" in result.out
    assert states(workdir) == {"t_echo#0": "finished", "t_boom#0": "failed"}


def test_the_console_script_exit_status(console: Cli, url: str) -> None:
    missing = console("show", "sqlite:///missing.db", "s1")
    assert missing == Result(3, "", missing.err)
    assert missing.err.startswith("atriggers: error: no storage at sqlite:///")
    assert console("fire", url, "s1").code == 2  # usage error, from argparse
