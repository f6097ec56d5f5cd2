"""Explanations: the pure function over snapshots, then through the manager with
real runs, a real SQLite file and a clock the tests move."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from atriggers import (
    Explanation,
    InstanceNotFound,
    SessionState,
    Status,
    Sweeper,
    TaskContext,
    TriggerManager,
    task,
)
from atriggers import _rules as rules
from atriggers.clock import FakeClock
from atriggers.config import parse_configuration
from atriggers.context import exception_metadata
from atriggers.errors import InstanceLost, with_context
from atriggers.explain import CODES, duration, explain
from atriggers.state import Draft
from atriggers.storage import SQLiteStorage

T0 = 1_800_000_000.0  # a fixed "now" for the pure tests


class Session:
    """Applies rules one after another at times the test chooses (no storage)."""

    def __init__(self, configuration: dict[str, Any]) -> None:
        self.at = T0
        draft = Draft(SessionState(uid="u"), at=self.at)
        rules.configure(draft, parse_configuration(configuration))
        self.state = draft.changes().state

    def apply(self, rule: Any, *args: Any) -> Any:
        draft = Draft(self.state, at=self.at)
        result = rule(draft, *args)
        self.state = draft.changes().state
        return result

    def fire(self, trigger: str, kwargs: dict[str, Any] | None = None) -> None:
        self.apply(rules.fire, trigger, kwargs or {})

    def why(self, name: str | None = None) -> list[Explanation]:
        return explain(self.state, name, now=self.at)

    def one(self, name: str) -> Explanation:
        (found,) = self.why(name)
        return found


CONFIG = {
    "t_import": {"after": ["pageReceived", "questionnaireComplete"], "run": "x", "unless": ["cancelled"]},
    "t_report": {"after": ["t_import"], "run": "y"},
}


def test_a_task_never_triggered_names_the_triggers_never_seen() -> None:
    s = Session(CONFIG)
    (imp, report) = s.why()
    assert (imp.task, imp.instance, imp.code) == ("t_import", None, "never-triggered")
    assert imp.missing == imp.unseen == ("pageReceived", "questionnaireComplete")
    assert "never seen pageReceived, questionnaireComplete" in imp.text
    assert report.code == "never-triggered" and report.unseen == ("t_import",)


def test_a_task_configured_after_its_triggers_fired_says_so() -> None:
    s = Session({"t_a": {"after": ["go"], "run": "x"}})
    s.fire("go")
    s.apply(rules.configure, parse_configuration({"t_b": {"after": ["go"], "run": "x"}}))
    b = s.one("t_b")
    assert b.code == "never-triggered" and b.unseen == () and b.missing == ("go",)
    assert "configured after they fired" in b.text


def test_a_waiting_instance_lists_what_is_missing() -> None:
    s = Session(CONFIG)
    s.fire("pageReceived", {"page": 1})
    imp = s.one("t_import#0")
    assert imp.code == "waiting" and imp.missing == ("questionnaireComplete",)
    # A tuple, which a list of the same names equals too (hashable all the same).
    assert imp.missing == ["questionnaireComplete"] and imp.missing != ["pageReceived"]
    assert isinstance(imp.missing, tuple) and hash(imp) == hash(s.one("t_import#0"))
    assert s.one("t_report").missing == ["t_import"]
    assert imp.text == "t_import#0 is waiting for questionnaireComplete (has pageReceived)."
    # Asking by task name explains each of its instances.
    assert [e.instance for e in s.why("t_import")] == ["t_import#0"]


def test_scheduled_running_finished_tell_since_when_and_where() -> None:
    s = Session(CONFIG)
    s.fire("pageReceived")
    s.fire("questionnaireComplete")
    scheduled = s.one("t_import#0")
    assert scheduled.code == "scheduled" and scheduled.runner == "asyncio"
    s.at += 90
    assert "has been scheduled for 1 min on runner 'asyncio'" in s.one("t_import#0").text
    s.apply(rules.start, "t_import#0", "tok", "host-1:42")
    s.at += 14 * 60
    running = s.one("t_import#0")
    assert running.code == "running" and running.owner == "host-1:42"
    assert "has been running for 14 min on runner 'asyncio', held by host-1:42." in running.text
    s.apply(rules.finish, "t_import#0", {"n": 1}, 0, "tok")
    s.at += 3600
    finished = s.one("t_import#0")
    assert finished.code == "finished"
    assert finished.since is not None and "UTC (1 h ago) after running 14 min." in finished.text
    # The cascade made t_report run: per task, the latest instance is explained.
    assert [(e.task, e.code) for e in s.why()] == [("t_import", "finished"), ("t_report", "scheduled")]


def test_failed_tells_the_exception_and_message() -> None:
    s = Session(CONFIG)
    s.fire("pageReceived")
    s.fire("questionnaireComplete")
    s.apply(rules.start, "t_import#0", "tok")
    try:
        raise with_context(ValueError("bad score 3"), {"score": 3})
    except ValueError as exc:
        meta = exception_metadata(exc)
    s.apply(rules.fail, "t_import#0", meta)
    failed = s.one("t_import#0")
    assert failed.code == "failed"
    assert (failed.error, failed.message) == ("builtins.ValueError", "bad score 3")
    assert (
        "failed at" in failed.text
        and "with builtins.ValueError: bad score 3. Replay or skip it." in failed.text
    )
    # Replayed by an operator: the failed one points at its clone, the clone at it.
    s.at += 60
    s.apply(rules.replay, "t_import#0")
    replayed, clone = s.one("t_import#0"), s.one("t_import#1")
    assert replayed.code == "replayed" and replayed.clone == "t_import#1"
    assert "an operator replayed it" in replayed.text and replayed.text.endswith("; see t_import#1.")
    assert clone.code == "scheduled" and clone.parent == "t_import#0"
    assert "(a replay of t_import#0)" in clone.text


def test_a_retry_is_told_apart_from_an_operators_replay() -> None:
    s = Session(CONFIG)
    s.fire("pageReceived")
    s.fire("questionnaireComplete")
    s.apply(rules.start, "t_import#0", "tok")
    s.apply(rules.retry, "t_import#0", {"cooldown": 30}, None, "tok")
    retried = s.one("t_import#0")
    assert retried.code == "replayed" and "it asked to retry" in retried.text
    assert "waits for its cooldown to end" in s.one("t_import#1").text


def test_skipped() -> None:
    s = Session(CONFIG)
    s.fire("pageReceived")
    s.fire("questionnaireComplete")
    s.apply(rules.fail, "t_import#0", {"exceptionType": "builtins.KeyError"})
    s.apply(rules.skip, "t_import#0", True, {"n": 0})
    skipped = s.one("t_import#0")
    assert skipped.code == "skipped" and "as if it had finished" in skipped.text
    assert "skipped by an operator at" in skipped.text
    s.fire("questionnaireComplete")  # nothing new: t_import is one-shot
    s.apply(rules.configure, parse_configuration({"t_self": {"after": ["again"], "run": "z"}}))
    s.fire("again")
    s.apply(rules.start, "t_self#0", "tok")
    s.apply(rules.skip_running, "t_self#0", {"why": "nothing to do"}, "tok")
    assert "was skipped (the task skipped itself) at" in s.one("t_self#0").text


def test_abandoned_after_unless_names_the_triggers() -> None:
    s = Session(CONFIG)
    s.fire("pageReceived")
    s.at += 5
    s.fire("cancelled")
    abandoned = s.one("t_import#0")
    assert abandoned.code == "abandoned" and abandoned.abandoned_by == ("cancelled",)
    assert "because cancelled fired (its `unless`) before it started" in abandoned.text


def test_partial_unless_is_a_warning_on_a_waiting_instance() -> None:
    s = Session({"t": {"after": ["a", "b"], "run": "x", "unless": ["c", "d"]}})
    s.fire("a")
    s.fire("c")
    waiting = s.one("t#0")
    assert waiting.code == "waiting"
    assert "It will be abandoned if d fires first (c already did)." in waiting.text


def test_expired_after_within() -> None:
    s = Session({"t": {"after": ["a", "b"], "run": "x", "within": 3600}})
    s.fire("a")
    s.at += 600
    assert "Its window closes in 50 min." in s.one("t#0").text
    s.at += 3000
    assert "Its window closed 0 s ago" in s.one("t#0").text
    s.apply(rules.expire, "t#0")
    expired = s.one("t#0")
    assert expired.code == "expired" and expired.missing == ()
    assert "it waited its 1 h window (`within`) without b." in expired.text


def test_lost_instances_and_lost_retries() -> None:
    s = Session({"t": {"after": ["a"], "run": "x", "timeout": 5, "onLost": "retry"}})
    s.fire("a")
    s.apply(rules.start, "t#0", "tok", "host-1")
    lost = exception_metadata(
        with_context(InstanceLost("u/t#0 was lost: its owner stopped"), {"ownerStopped": True})
    )
    s.apply(rules.lose, "t#0", lost, lost, 3, 0.0)
    replayed = s.one("t#0")
    assert replayed.code == "replayed" and "it was lost" in replayed.text and replayed.clone == "t#1"
    s.apply(rules.start, "t#1", "tok2", "host-2")
    s.apply(rules.lose, "t#1", lost, lost, 0, 0.0)  # no retries left: failed for good
    final = s.one("t#1")
    assert final.code == "lost" and final.error == "atriggers.errors.InstanceLost"
    assert "was lost at" in final.text and "its owner stopped" in final.text


def test_unknown_names_and_every_code_is_listed() -> None:
    s = Session(CONFIG)
    with pytest.raises(InstanceNotFound, match="nope"):
        s.why("nope")
    assert len(set(CODES)) == len(CODES) == 11


@pytest.mark.parametrize(
    ("seconds", "said"),
    [
        (0, "0 s"),
        (59.9, "59 s"),
        (60, "1 min"),
        (14 * 60 + 5, "14 min"),
        (3600, "1 h"),
        (7500, "2 h 5 min"),
        (86400 * 3 + 3600 * 4, "3 d 4 h"),
        (-5, "0 s"),
    ],
)
def test_durations_read_as_people_say_them(seconds: float, said: str) -> None:
    assert duration(seconds) == said


# -- through the manager, on a real SQLite file -------------------------------------------

runs: list[str] = []


@task("explain.ok")
async def ok(context: TaskContext) -> dict[str, Any]:
    runs.append(context.instance_name)
    return {}


@task("explain.hang")
async def hang(context: TaskContext) -> dict[str, Any]:
    await asyncio.Event().wait()
    return {}


@task("explain.noisy")
async def noisy(context: TaskContext) -> dict[str, Any]:
    with context.get_logger_context() as logger:
        logger.warning("just a warning")
        logger.error("row %d of %s is broken", 7, "import.csv")
        raise ValueError("gave up")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
async def storage(clock: FakeClock, tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    async with SQLiteStorage(tmp_path / "explain.db", clock=clock, close_timeout=1) as store:
        yield store


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.01)


async def test_manager_explain_after_a_timeout_within_and_an_unless(
    storage: SQLiteStorage, clock: FakeClock
) -> None:
    manager = TriggerManager(storage, "m1")
    await manager.update_configuration(
        {
            "t_hang": {"after": ["go"], "run": "explain.hang", "timeout": 5},
            "t_window": {"after": ["go", "later"], "run": "explain.ok", "within": 60},
            "t_unless": {"after": ["go", "later"], "run": "explain.ok", "unless": ["stop"]},
            "t_never": {"after": ["nobodyFiresThis"], "run": "explain.ok"},
        }
    )
    await manager.fire("go")
    await settle()
    codes = {e.task: e.code for e in await manager.explain()}
    assert codes == {
        "t_hang": "running",
        "t_window": "waiting",
        "t_unless": "waiting",
        "t_never": "never-triggered",
    }
    await clock.advance(61)  # t_hang's run overran its timeout; t_window's minute is up
    await Sweeper(storage).run_once()
    await manager.fire("stop")
    await manager.join()
    by_task = {e.task: e for e in await manager.explain()}
    assert (
        by_task["t_hang"].code == "lost"
        and "did not store an outcome by its deadline" in by_task["t_hang"].text
    )
    assert by_task["t_window"].code == "expired"
    assert by_task["t_unless"].code == "abandoned" and by_task["t_unless"].abandoned_by == ("stop",)
    assert by_task["t_never"].unseen == ("nobodyFiresThis",)
    (one,) = await manager.explain("t_window#0")
    assert one.instance == "t_window#0"


async def test_error_logs_are_kept_on_the_instance(
    storage: SQLiteStorage, caplog: pytest.LogCaptureFixture
) -> None:
    manager = TriggerManager(storage, "m2")
    await manager.update_configuration({"t": {"after": ["go"], "run": "explain.noisy"}})
    with caplog.at_level(logging.ERROR):
        await manager.fire("go")
        await manager.join()
    failed = await manager.get_instance("t#0")
    assert failed.status is Status.FAILED
    assert failed.metadata["errorLogs"] == [
        "ERROR: row 7 of import.csv is broken",
        "ERROR: t#0 failed: gave up",
    ]
    assert failed.log_level_name == "ERROR"


def test_a_task_is_explained_by_its_most_pressing_instance() -> None:
    s = Session({"t": {"after": ["page"], "andEvery": "page", "run": "x"}})
    for _ in range(3):
        s.fire("page")
    s.apply(rules.fail, "t#0", {"exceptionType": "builtins.KeyError"})
    s.apply(rules.start, "t#2", "tok")
    s.apply(rules.finish, "t#2", {}, 0, "tok")
    (task_level,) = s.why()
    assert (task_level.instance, task_level.code) == ("t#0", "failed")
    s.apply(rules.skip, "t#0")
    assert [(e.instance, e.code) for e in s.why()] == [("t#1", "scheduled")]
    assert [e.instance for e in s.why("t")] == ["t#0", "t#1", "t#2"]
