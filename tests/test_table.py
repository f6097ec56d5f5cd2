"""`InstanceTable`: the indexes a fire queries agree with a scan of every
instance, in every version, however versions are read back and forth; and a fire
finds what it touches through them, never by scanning the session."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from atriggers import SessionState, Status, parse_configuration
from atriggers import _rules as rules
from atriggers._json import dumps
from atriggers._table import ABSENT, InstanceTable
from atriggers.config import TaskConfig
from atriggers.instance import TaskInstance
from atriggers.state import Draft
from atriggers.storage.codec import decode_state

TASKS = parse_configuration(
    {
        "a": {"after": ["x", "y"], "unless": ["stop"], "run": "m.a"},
        "b": {"after": ["x"], "andEvery": "tick", "run": "m.b"},
    }
)


def _instance(rng: random.Random, name: str, task: TaskConfig) -> TaskInstance:
    triggers = sorted(task.after)
    return TaskInstance(
        name=name,
        task_name=task.name,
        status=rng.choice(list(Status)),
        kwargs={t: {} for t in triggers if rng.random() < 0.5},
        abandon_state=frozenset(t for t in task.unless if rng.random() < 0.3),
        config=task,
    )


def _scan(rows: dict[str, TaskInstance]) -> dict[str, Any]:
    """What the indexes must say, worked out the slow way."""
    unstarted = [i for i in rows.values() if i.status is Status.UNSTARTED]
    counts: dict[str, int] = {}
    for i in rows.values():
        if not i.is_resolved:
            counts[i.status.value] = counts.get(i.status.value, 0) + 1
    expected: dict[str, Any] = {"counts": counts, "resolved": {n for n, i in rows.items() if i.is_resolved}}
    for task in TASKS.values():
        mine = [i for i in unstarted if i.task_name == task.name]
        expected[f"unstarted {task.name}"] = {i.name for i in mine}
        expected[f"ready {task.name}"] = {i.name for i in mine if i.can_run or i.can_abandon}
        for trigger in ("x", "y", "stop", "tick"):
            expected[f"waiting {task.name} {trigger}"] = {
                i.name
                for i in mine
                if (trigger in task.after and trigger not in i.kwargs)
                or (trigger in task.unless and trigger not in i.abandon_state)
            }
    return expected


def _indexed(table: InstanceTable) -> dict[str, Any]:
    found: dict[str, Any] = {"counts": table.unresolved_counts(), "resolved": set(table.resolved())}
    for task in TASKS.values():
        found[f"unstarted {task.name}"] = {i.name for i in table.unstarted(task.name)}
        found[f"ready {task.name}"] = {i.name for i in table.ready(task.name)}
        for trigger in ("x", "y", "stop", "tick"):
            found[f"waiting {task.name} {trigger}"] = {i.name for i in table.waiting(task.name, trigger)}
    return found


def _read(rows: dict[str, TaskInstance]) -> InstanceTable:
    """`rows` as a working view read from storage: stored text, parsed when used."""
    texts = [(name, dumps(instance.to_dict())) for name, instance in rows.items()]
    state = decode_state("u", 1, TASKS, "{}", [], texts, complete=False)
    assert isinstance(state.instances, InstanceTable)
    return state.instances


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("start", ["built", "read"])
def test_every_version_reads_as_it_was_written(seed: int, start: str) -> None:
    rng = random.Random(seed)
    names = [f"{t}#{n}" for t in TASKS for n in range(12)]
    rows = {n: _instance(rng, n, TASKS[n.split("#")[0]]) for n in names[:10]}
    first = InstanceTable(dict(rows)) if start == "built" else _read(rows)
    versions: list[tuple[InstanceTable, dict[str, TaskInstance]]] = [(first, rows)]
    for _ in range(60):
        # Derive from any version, not only the newest: a retried operation does.
        table, expected = rng.choice(versions)
        changes: dict[str, Any] = {}
        for name in rng.sample(names, rng.randint(0, 4)):
            changes[name] = ABSENT if rng.random() < 0.3 else _instance(rng, name, TASKS[name.split("#")[0]])
        after = {**expected, **changes}
        after = {n: i for n, i in after.items() if i is not ABSENT}
        versions.append((table.derive(changes), after))
        # Read some version at random: rerooting must keep each one as it was.
        table, expected = rng.choice(versions)
        assert dict(table.items()) == expected
        assert len(table) == len(expected) and set(table) == set(expected)
        assert _indexed(table) == _scan(expected)
    for table, expected in versions:
        assert dict(table.items()) == expected
        assert _indexed(table) == _scan(expected)


def _accumulated(n: int) -> SessionState:
    """A session whose andEvery task "b" holds `n` unstarted instances."""
    draft = Draft(SessionState(uid="u"))
    rules.configure(draft, TASKS)
    state = draft.changes().state
    for i in range(n):
        draft = Draft(state)
        rules.fire(draft, "tick", {"i": i})
        state = draft.changes().state
    return state


def test_a_fire_never_scans_the_session(monkeypatch: pytest.MonkeyPatch) -> None:
    state = _accumulated(300)
    assert state.by_status() == {"unstarted": 300}

    def scan(self: Any) -> Any:
        raise AssertionError("a fire iterated over every instance")

    monkeypatch.setattr(Draft, "instances", scan)
    monkeypatch.setattr(InstanceTable, "__iter__", scan)
    monkeypatch.setattr(InstanceTable, "values", scan)
    monkeypatch.setattr(InstanceTable, "items", scan)
    draft = Draft(state)
    assert rules.fire(draft, "tick", {"i": 300}) == []
    change = draft.changes()
    assert [i.name for i in change.instances] == ["b#300"]
    assert change.state.by_status() == {"unstarted": 301}
    # "x" completes every waiting instance of "b": each one is touched, and runs.
    draft = Draft(change.state)
    ready = rules.fire(draft, "x", {})
    assert [i.name for i in ready] == [f"b#{n}" for n in range(301)]
    # (and task "a" gets its first instance, waiting for "y")
    assert draft.changes().state.by_status() == {"scheduled": 301, "unstarted": 1}


def test_an_instance_left_ready_by_a_new_configuration_runs_at_the_next_fire() -> None:
    state = _accumulated(3)
    draft = Draft(state)
    # "b" no longer waits for "x": its instances are ready, but only a fire of
    # one of its triggers schedules them, as before any index existed.
    rules.configure(draft, parse_configuration({"b": {"after": [], "andEvery": "tick", "run": "m.b"}}))
    state = draft.changes().state
    assert {i.status for i in state.instances.values()} == {Status.UNSTARTED}
    draft = Draft(state)
    ready = rules.fire(draft, "tick", {})
    assert [i.name for i in ready] == ["b#0", "b#1", "b#2", "b#3"]


def test_a_working_view_drops_resolved_instances_loaded_by_name() -> None:
    finished = TaskInstance("a#0", "a", Status.FINISHED, config=TASKS["a"])
    state = SessionState(uid="u", tasks=TASKS, instances=InstanceTable({"a#0": finished}), complete=False)
    draft = Draft(state)
    rules.fire(draft, "tick", {})
    after = draft.changes().state
    assert "a#0" not in after.instances and "b#0" in after.instances
    # The snapshot the draft started from is unchanged.
    assert list(state.instances) == ["a#0"] and "b#0" not in state.instances


def test_snapshots_and_changes_built_by_drafts_are_whole() -> None:
    # Drafts build them without __init__: every field must still be set.
    from dataclasses import fields

    draft = Draft(SessionState(uid="u"))
    rules.configure(draft, TASKS)
    change = draft.changes()
    for obj in (change, change.state):
        for field in fields(obj):
            getattr(obj, field.name)
    assert change.state == SessionState(
        uid="u", version=1, tasks=change.state.tasks, instances={}, complete=True
    )


def test_a_cold_fire_parses_only_the_instances_of_the_tasks_it_concerns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from atriggers.storage import codec

    state = _accumulated(300)  # "b#0".."b#299", waiting for "x"
    draft = Draft(state)
    rules.fire(draft, "y", {})  # task "a" gets its first instance, waiting for "x"
    stored = draft.changes().state
    parsed: list[str] = []
    peek = codec._read_instance

    def counted(uid: str, name: str, text: str, config_of: Any) -> Any:
        parsed.append(name)
        return peek(uid, name, text, config_of)

    monkeypatch.setattr(codec, "_read_instance", counted)
    cold = SessionState(uid="u", tasks=TASKS, instances=_read(dict(stored.instances.items())), complete=False)
    draft = Draft(cold)
    assert rules.fire(draft, "stop", {}) == []  # concerns "a" alone: it abandons a#0
    assert parsed == ["a#0"]
    change = draft.changes()
    assert [(i.name, i.status) for i in change.instances] == [("a#0", Status.ABANDONED)]
    # What the fire did not touch is there all the same, and counted when asked.
    after = change.state
    assert after.by_status() == {"unstarted": 300}
    assert {i.name for i in after.instances.values()} == {f"b#{n}" for n in range(300)}


def test_a_stored_instance_whose_name_is_not_its_tasks_is_corrupt() -> None:
    from atriggers.errors import StorageError

    stored = TaskInstance("b#0", "a", Status.UNSTARTED, config=TASKS["a"])
    with pytest.raises(StorageError, match=r"the stored instance 'b#0' is corrupt .*its task is 'a'"):
        _read({"b#0": stored}).unstarted("b")
    with pytest.raises(StorageError, match=r"the stored instance 'b#0' is corrupt .*its name says 'b'"):
        _read({"b#0": stored})["b#0"]


def test_a_table_copies_and_pickles_as_its_own_rows() -> None:
    import copy
    import pickle

    state = _accumulated(3)
    older = state.instances
    assert isinstance(older, InstanceTable)
    newer = older.derive({"b#0": ABSENT})
    for table, names in ((older, {"b#0", "b#1", "b#2"}), (newer, {"b#1", "b#2"})):
        for clone in (copy.deepcopy(table), pickle.loads(pickle.dumps(table)), copy.copy(table)):
            assert set(clone) == names and {i.name for i in clone.unstarted("b")} == names


async def test_managers_and_snapshots_go_without_the_garbage_collector() -> None:
    # A web app makes a manager per request, every write makes a snapshot and
    # the storage keeps the newest of each session for a while: none may be a
    # reference cycle, or they would pile up until the garbage collector's next
    # full pass (and make that pass longer).
    import gc
    import weakref

    from atriggers import TriggerManager
    from atriggers.storage import MemoryStorage
    from atriggers.tasks import TaskRegistry

    async def noop(context: Any) -> None:
        return None

    registry = TaskRegistry(entry_point_group=None)
    registry.register(noop, "table.noop")
    gc.collect()
    gc.disable()
    before = _alive(InstanceTable)  # (other tests' snapshots still held, if any)
    try:
        async with MemoryStorage() as storage:
            manager = TriggerManager(storage, "s", tasks=registry)
            await manager.update_configuration({"t": {"after": [], "andEvery": "go", "run": "table.noop"}})
            for n in range(3):
                await manager.fire("go", {"n": n})
                await manager.join()
            assert _alive(InstanceTable) > before
            # (`join` returns as the last run ends: the run task's done callbacks,
            # which refer to the manager, run in the next turn of the loop.)
            await asyncio.sleep(0)
            gone = weakref.ref(manager)
            del manager
            assert gone() is None
            storage.forget("s")  # the last snapshot the storage kept
            assert _alive(InstanceTable) == before
    finally:
        gc.enable()


def _alive(kind: type) -> int:
    import gc

    return sum(1 for o in gc.get_objects() if type(o) is kind)
