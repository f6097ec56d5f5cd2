"""`TriggerManager.apply_repairs`, `annotate_instance` and `preview_fire`, and
the pure pieces under them (`RepairPlan`, `preview_fire`), on a real SQLite file."""

from __future__ import annotations

from typing import Any

import pytest

from atriggers import (
    FirePreview,
    InstanceNotFound,
    InvalidInput,
    InvalidStatus,
    SessionChanged,
    SessionState,
    Status,
    TaskContext,
    TriggerManager,
    UnknownRunner,
    task,
)
from atriggers import _rules as rules
from atriggers.config import parse_configuration
from atriggers.preview import preview_fire
from atriggers.repair import RepairFilter, RepairPlan
from atriggers.state import Draft
from atriggers.storage import SQLiteStorage

replays: list[str] = []
hooks: list[tuple[str, str]] = []


@task("rp.ok")
async def ok(context: TaskContext) -> dict[str, Any]:
    replays.append(context.instance_name)
    return {}


class Hooked(TriggerManager):
    async def post_replay(self, task_instance: Any) -> None:
        hooks.append(("replay", task_instance.name))

    async def post_skip(self, task_instance: Any, cascade: bool) -> None:
        hooks.append(("skip", task_instance.name))


@pytest.fixture(autouse=True)
def _reset() -> None:
    replays.clear()
    hooks.clear()


async def failed_session(storage: SQLiteStorage, uid: str = "r") -> Hooked:
    """Tasks a, b, c: all failed at dispatch (runner "parked" is nowhere)."""
    manager = Hooked(storage, uid, default_runner="parked")
    await manager.update_configuration({t: {"after": ["go"], "run": "rp.ok"} for t in ("a", "b", "c")})
    await manager.fire("go")
    manager.default_runner = "asyncio"
    return manager


async def test_apply_repairs_is_one_write_with_hooks(sqlite_storage: SQLiteStorage) -> None:
    manager = await failed_session(sqlite_storage)
    version = (await manager.get_state()).version
    clones, skipped = await manager.apply_repairs(
        {"a#0": "replay", "b#0": "skip"}, expected_version=version, record={"by": "ann"}, runner="asyncio"
    )
    await manager.join()
    assert [c.name for c in clones] == ["a#1"] and [s.name for s in skipped] == ["b#0"]
    state = await manager.get_state()
    # The repair (which starts the clone, on the asyncio runner), then its outcome.
    assert state.version == version + 2
    assert state.instances["a#1"].status is Status.FINISHED and state.instances["a#1"].runner == "asyncio"
    assert state.instances["a#0"].metadata["repair"]["by"] == "ann"
    assert state.instances["b#0"].metadata["repair"]["action"] == "skip"
    assert hooks == [("replay", "a#1"), ("skip", "b#0")]
    assert replays == ["a#1"]


async def test_apply_repairs_refuses_a_changed_session_and_writes_nothing(
    sqlite_storage: SQLiteStorage,
) -> None:
    manager = await failed_session(sqlite_storage)
    version = (await manager.get_state()).version
    await manager.fire("unrelated")
    with pytest.raises(SessionChanged, match=rf"version {version}, now {version + 1}") as caught:
        await manager.apply_repairs({"a#0": "replay"}, expected_version=version)
    assert isinstance(caught.value, InvalidInput)
    # Another process's manager (its own cache) that read the session before.
    async with SQLiteStorage(sqlite_storage.path) as other:
        stale = TriggerManager(other, "r")
        noted = await stale.annotate_instance("a#0", "looking")  # its cache holds this version
        seen = (await stale.get_state()).version
        await manager.fire("again")
        # The rule passes on the cached snapshot; the compare-and-swap write then
        # meets the newer version and the rule, re-applied to it, refuses.
        with pytest.raises(SessionChanged, match=rf"version {seen}, now {seen + 1}"):
            await stale.apply_repairs({"a#0": "replay"}, expected_version=seen)
        assert noted.metadata["notes"][0]["text"] == "looking"
    state = await manager.get_state()
    assert state.instances["a#0"].status is Status.FAILED and "a#1" not in state.instances


async def test_apply_repairs_is_all_or_nothing(sqlite_storage: SQLiteStorage) -> None:
    manager = await failed_session(sqlite_storage)
    await manager.skip_failed_instance("c#0")
    with pytest.raises(InvalidStatus, match="'c#0' is skipped"):
        await manager.apply_repairs({"a#0": "replay", "c#0": "replay"})
    with pytest.raises(InstanceNotFound):
        await manager.apply_repairs({"a#0": "replay", "z#0": "skip"})
    with pytest.raises(InvalidInput, match="must be one of replay, skip, not 'redo'"):
        await manager.apply_repairs({"a#0": "redo"})
    with pytest.raises(UnknownRunner):
        await manager.apply_repairs({"a#0": "replay"}, runner="nowhere")
    state = await manager.get_state()
    assert state.instances["a#0"].status is Status.FAILED and "a#1" not in state.instances


async def test_notes_accumulate(sqlite_storage: SQLiteStorage) -> None:
    manager = await failed_session(sqlite_storage)
    await manager.annotate_instance("a#0", "first", by="ann")
    noted = await manager.annotate_instance("a#0", "second")
    assert [n["text"] for n in noted.metadata["notes"]] == ["first", "second"]
    assert noted.metadata["notes"][0]["by"] == "ann" and "by" not in noted.metadata["notes"][1]
    assert noted.status is Status.FAILED
    with pytest.raises(InvalidInput):
        await manager.annotate_instance("a#0", "")
    # Who wrote it is text too: nothing else is stored in its place.
    for by in (float("nan"), 7, b"ann", {"name": "ann"}, "ann\udc80"):
        with pytest.raises(InvalidInput, match="by"):
            await manager.annotate_instance("a#0", "third", by=by)  # type: ignore[arg-type]
    state = await manager.get_state()
    assert [n["text"] for n in state.instances["a#0"].metadata["notes"]] == ["first", "second"]


async def test_preview_fire_writes_nothing(sqlite_storage: SQLiteStorage) -> None:
    manager = TriggerManager(sqlite_storage, "p")
    await manager.update_configuration(
        {
            "t_both": {"after": ["a", "b"], "run": "rp.ok", "unless": ["stop"]},
            "t_every": {"after": ["a"], "andEvery": "a", "run": "rp.ok", "using": "parked"},
        }
    )
    before = await manager.get_state()
    preview = await manager.preview_fire("a", {"n": 1})
    assert isinstance(preview, FirePreview) and preview.version == before.version
    assert [i.name for i in preview.created] == ["t_both#0", "t_every#0"]
    assert [(i.name, i.runner) for i in preview.scheduled] == [("t_every#0", "parked")]
    assert preview.to_dict()["created"][0] == {
        "name": "t_both#0",
        "task": "t_both",
        "status": "unstarted",
        "missing": ["b"],
    }
    after = await manager.get_state()
    assert after.version == before.version and not after.instances and not after.latest_kwargs
    await manager.fire("b")
    stop = await manager.preview_fire("stop")
    assert [i.name for i in stop.abandoned] == ["t_both#0"] and stop.applied == ()
    assert (await manager.preview_fire("nothing")).changes_nothing
    with pytest.raises(InvalidInput):
        await manager.preview_fire("a", {"bad": object()})


def test_plan_round_trips_and_filters() -> None:
    draft = Draft(SessionState(uid="u"), at=1_000.0)
    rules.configure(draft, parse_configuration({"t": {"after": ["go"], "run": "x"}}))
    rules.fire(draft, "go", {})
    rules.fail(draft, "t#0", {"exceptionType": "pkg.mod.Boom"})
    state = draft.changes().state
    plan = RepairPlan.build([state], RepairFilter(exception_type="Boom"), at=2_000.0, source="memory://")
    assert plan.count == 1 and RepairPlan.from_dict(plan.to_dict()) == plan
    assert RepairPlan.build([state], RepairFilter(exception_type="mod.Boom"), at=0).count == 0
    assert RepairPlan.build([state], RepairFilter(since=999.0), at=0).count == 1
    assert RepairPlan.build([state], RepairFilter(since=1_001.0), at=0).count == 0
    assert RepairPlan.build([state], RepairFilter(task="other"), at=0).count == 0
    data = plan.to_dict()
    data["sessions"].append(dict(data["sessions"][0]))
    with pytest.raises(InvalidInput, match="session 'u' appears twice"):
        RepairPlan.from_dict(data)
    with pytest.raises(InvalidInput, match=r"sessions\[0\]\.version"):
        RepairPlan.from_dict({**plan.to_dict(), "sessions": [{"uid": "u", "version": True, "repairs": []}]})


def test_preview_is_pure() -> None:
    state = SessionState(
        uid="u", tasks=parse_configuration({"t": {"after": ["go"], "run": "x", "within": 10}})
    )
    draft = Draft(state, at=0.0)
    rules.fire(draft, "other", {})
    preview = preview_fire(state, "go", {}, at=5.0, default_runner="celery")
    assert [(i.name, i.status, i.runner) for i in preview.scheduled] == [("t#0", Status.SCHEDULED, "celery")]
    assert state.instances == {}
