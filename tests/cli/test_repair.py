"""`atriggers repair`: plans, and applying them against a real SQLite file while
another process fires into some of the sessions."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from atriggers import SessionState, Status, TriggerManager
from atriggers.storage import SQLiteStorage

from .conftest import Cli
from .test_sessions import snapshot, states

TASKS = ["t_a", "t_b", "t_c", "t_d", "t_e"]
#: Five tasks run by app.echo, dispatched to a runner nobody has ("parked"):
#: each fire leaves five instances failed with UnknownRunner.
PARKED = {name: {"after": ["go"], "run": "app.echo"} for name in TASKS}


async def _fail_sessions(path: Path, uids: list[str]) -> None:
    async with SQLiteStorage(path) as storage:
        for uid in uids:
            manager = TriggerManager(storage, uid, default_runner="parked")
            await manager.update_configuration(PARKED)
            await manager.fire("go", {"n": uid})


def failed_sessions(workdir: Path, count: int) -> list[str]:
    uids = [f"s{n:03d}" for n in range(count)]
    asyncio.run(_fail_sessions(workdir / "state.db", uids))
    return uids


def test_plan_selects_failed_instances_and_apply_replays_them(cli: Cli, url: str, workdir: Path) -> None:
    failed_sessions(workdir, 3)
    planned = cli("repair", url, "--plan", "plan.json", "--failed", "--task", "t_a")
    assert planned.code == 0, planned
    assert "planned 3 replay(s) in 3 session(s) (of 3 looked at) -> plan.json" in planned.out
    assert "atriggers.errors.UnknownRunner  3" in planned.out
    plan = json.loads((workdir / "plan.json").read_text())
    assert plan["format"] == "atriggers-repair-plan/1" and plan["count"] == 3
    assert plan["criteria"] == {"task": "t_a", "exceptionType": None, "since": None}
    first = plan["sessions"][0]
    assert first["uid"] == "s000" and first["version"] == snapshot(workdir, "s000").version
    assert first["repairs"] == [
        {
            "instance": "t_a#0",
            "action": "replay",
            "task": "t_a",
            "exceptionType": "atriggers.errors.UnknownRunner",
            "failedAt": snapshot(workdir, "s000").instances["t_a#0"].timestamps["failed"],
        }
    ]
    # A reviewer turns one replay into a skip.
    plan["sessions"][1]["repairs"][0]["action"] = "skip"
    (workdir / "plan.json").write_text(json.dumps(plan))
    applied = cli(
        "repair",
        url,
        "--apply",
        "plan.json",
        "--runner",
        "asyncio",
        "--import",
        "apptasks",
        "--by",
        "bob",
        "--note",
        "runner was down",
    )
    assert applied.code == 0, applied
    assert [line.rsplit(None, 1) for line in applied.out.splitlines()[2:6]] == [
        ["sessions repaired", "3"],
        ["instances replayed", "2"],
        ["instances skipped", "1"],
        ["sessions refused", "0"],
    ]
    assert "replays now finished  2" in applied.out
    s0 = snapshot(workdir, "s000").instances
    assert s0["t_a#0"].status is Status.REPLAYED and s0["t_a#1"].status is Status.FINISHED
    assert s0["t_a#0"].metadata["repair"] == {
        "at": s0["t_a#0"].timestamps["replayed"],
        "by": "bob",
        "plan": "plan.json",
        "note": "runner was down",
        "action": "replay",
        "clone": "t_a#1",
    }
    assert s0["t_b#0"].status is Status.FAILED  # not selected
    assert snapshot(workdir, "s001").instances["t_a#0"].status is Status.SKIPPED
    why = cli("why", url, "s000", "t_a#0").out
    assert "an operator replayed it (bob: runner was down)" in why and why.rstrip().endswith("; see t_a#1.")


def test_plan_filters(cli: Cli, url: str, workdir: Path) -> None:
    failed_sessions(workdir, 2)
    assert (
        "planned 10 replay(s)"
        in cli("repair", url, "--plan", "p.json", "--exception-type", "UnknownRunner").out
    )
    assert (
        "planned 0 replay(s)" in cli("repair", url, "--plan", "p.json", "--exception-type", "ValueError").out
    )
    assert "planned 0 replay(s)" in cli("repair", url, "--plan", "p.json", "--since", "2999-01-01").out
    assert (
        "planned 10 replay(s)"
        in cli("repair", url, "--plan", "p.json", "--since", "2000-01-01T00:00+01:00").out
    )
    assert (
        "planned 5 skip(s) in 1 session(s)"
        in cli("repair", url, "--plan", "p.json", "--limit", "1", "--action", "skip").out
    )
    plan = cli("repair", url, "--plan", "p.json", "--task", "t_c", "--json")
    assert plan.json() == {"plan": "p.json", "sessions": 2, "count": 2}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--plan", "p.json", "--by", "x"), "--by goes with --apply"),
        (("--plan", "p.json", "--since", "yesterday"), "--since must be an ISO 8601 time"),
        (("--plan", "p.json", "--limit", "0"), "--limit must be a positive"),
        (("--apply", "missing.json"), "no such file 'missing.json'"),
        (("--apply", "bad.json"), "bad.json is not valid JSON"),
        (("--apply", "other.json"), "not a repair plan"),
        (("--apply", "wrong.json"), "sessions[0].repairs[0].action must be one of replay, skip, not 'redo'"),
        (("--apply", "plan.json", "--task", "t_a"), "--task goes with --plan"),
    ],
)
def test_bad_repair_arguments_change_nothing(
    cli: Cli, url: str, workdir: Path, args: tuple[str, ...], message: str
) -> None:
    failed_sessions(workdir, 1)
    (workdir / "bad.json").write_text("{nope")
    (workdir / "other.json").write_text('{"format": "something else"}')
    wrong: dict[str, Any] = {
        "format": "atriggers-repair-plan/1",
        "sessions": [{"uid": "s000", "version": 1, "repairs": [{"instance": "t_a#0", "action": "redo"}]}],
    }
    (workdir / "wrong.json").write_text(json.dumps(wrong))
    assert cli("repair", url, "--plan", "plan.json").code == 0
    before = snapshot(workdir, "s000").version
    result = cli("repair", url, *args)
    assert result.code == 2, result
    assert message in result.err
    assert snapshot(workdir, "s000").version == before


def test_apply_refuses_replays_this_process_cannot_run(
    cli: Cli, console: Cli, url: str, workdir: Path
) -> None:
    failed_sessions(workdir, 2)
    assert cli("repair", url, "--plan", "plan.json").code == 0
    # No --import in a fresh process: app.echo is unknown where asyncio would run it.
    refused = console("repair", url, "--apply", "plan.json", "--runner", "asyncio")
    assert refused.code == 2 and "task 'app.echo' is not registered" in refused.err
    assert set(states(workdir, "s000").values()) == {"failed"}
    # Without --runner the replays would go back to "parked", unknown here too.
    parked = console("repair", url, "--apply", "plan.json")
    assert parked.code == 2 and "runner 'parked'" in parked.err
    assert set(states(workdir, "s001").values()) == {"failed"}


#: A manager whose post_replay hook, once the 50th session is repaired, has
#: another process fire into sessions the plan has not reached yet (and into
#: one it already repaired): concurrent writers, at a moment the test knows.
FIRE_HOOK = textwrap.dedent(
    """
    import asyncio, sys
    from atriggers import TriggerManager, register_manager

    FIRED = []

    @register_manager
    class FiringManager(TriggerManager):
        manager_name = "firing"

        async def post_replay(self, task_instance):
            if self.uid == "s050" and not FIRED:
                FIRED.append(True)
                process = await asyncio.create_subprocess_exec(sys.executable, "fire_some.py")
                assert await process.wait() == 0
    """
)

FIRE_SOME = textwrap.dedent(
    """
    import asyncio
    from atriggers import TriggerManager
    from atriggers.storage import SQLiteStorage

    async def main():
        async with SQLiteStorage("state.db") as storage:
            for uid in ["s010", *(f"s{n:03d}" for n in range(150, 170))]:
                await TriggerManager(storage, uid, default_runner="parked").fire("go", {"again": True})

    asyncio.run(main())
    """
)


@pytest.mark.slow
@pytest.mark.timeout(600)  # some 2,000 SQLite commits, each synced to disk
def test_apply_1000_repairs_while_another_process_fires(cli: Cli, url: str, workdir: Path) -> None:
    uids = failed_sessions(workdir, 200)
    (workdir / "firehook.py").write_text(FIRE_HOOK)
    (workdir / "fire_some.py").write_text(FIRE_SOME)
    assert cli("repair", url, "--plan", "plan.json").code == 0
    plan = json.loads((workdir / "plan.json").read_text())
    assert plan["count"] == 1000 and len(plan["sessions"]) == 200

    result = cli(
        "repair",
        url,
        "--apply",
        "plan.json",
        "--runner",
        "asyncio",
        "--manager",
        "firing",
        "--import",
        "apptasks",
        "--import",
        "firehook",
        "--json",
    )
    report = result.json()
    changed = {f"s{n:03d}" for n in range(150, 170)}
    assert result.code == 4, result  # some sessions refused
    assert set(report["refused"]) == changed
    assert all("changed since the plan" in why for why in report["refused"].values())
    assert report["errors"] == {} and report["timedOut"] is False
    assert (report["replayed"], report["skipped"]) == (900, 0)
    assert report["clones"] == {"finished": 900}

    async def read_all() -> dict[str, SessionState]:
        async with SQLiteStorage(workdir / "state.db") as storage:
            return {uid: await storage.load_all(uid) for uid in uids}

    sessions = asyncio.run(read_all())
    for uid, state in sessions.items():
        if uid in changed:
            # Refused: untouched by the repair, still failed, still repairable.
            assert state.instance_counts == {task: 1 for task in TASKS}, uid
            assert all(
                i.status is Status.FAILED and "repair" not in i.metadata for i in state.instances.values()
            )
            continue
        # Repaired exactly once: one clone per failed instance, each run once.
        assert state.instance_counts == {task: 2 for task in TASKS}, uid
        for task in TASKS:
            failed, clone = state.instances[f"{task}#0"], state.instances[f"{task}#1"]
            assert failed.status is Status.REPLAYED and failed.metadata["repair"]["clone"] == clone.name
            assert clone.parent == failed.name and clone.status is Status.FINISHED
            assert clone.metadata["timestamps"].keys() >= {"running", "finished"}

    # The same plan again: every session changed since, so nothing is done twice.
    again = cli(
        "repair", url, "--apply", "plan.json", "--runner", "asyncio", "--import", "apptasks", "--json"
    )
    assert again.code == 4 and len(again.json()["refused"]) == 200 and again.json()["replayed"] == 0
    # A fresh plan takes exactly the refused ones.
    replan = cli("repair", url, "--plan", "plan2.json", "--json")
    assert replan.json() == {"plan": "plan2.json", "sessions": 20, "count": 100}
