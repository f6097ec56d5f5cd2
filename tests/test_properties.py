"""Property tests: random configurations and fire sequences keep the invariants of
SPEC.md's semantics, and every storage agrees with the pure rules."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atriggers import SessionState, Status, TaskInstance, TriggerManager, parse_configuration
from atriggers import _rules as rules
from atriggers.runners import BaseRunner, register_runner
from atriggers.state import Draft
from atriggers.storage import MemoryStorage, SQLiteStorage, Storage

TRIGGERS = ["a", "b", "c", "d"]


@st.composite
def configurations(draw: st.DrawFn) -> dict[str, dict[str, Any]]:
    configuration: dict[str, dict[str, Any]] = {}
    for n in range(draw(st.integers(1, 3))):
        pool = TRIGGERS + list(configuration)  # earlier tasks can be triggers (cascades)
        and_every = draw(st.none() | st.sampled_from(TRIGGERS))
        after = draw(st.lists(st.sampled_from(pool), min_size=0 if and_every else 1, max_size=3, unique=True))
        body: dict[str, Any] = {"after": after, "run": "prop.task"}
        if and_every:
            body["andEvery"] = and_every
        unless = draw(st.lists(st.sampled_from(TRIGGERS), max_size=2, unique=True))
        if unless:
            body["unless"] = unless
        configuration[f"t{n}"] = body
    return configuration


operations = st.lists(
    st.one_of(
        st.tuples(st.just("fire"), st.sampled_from(TRIGGERS), st.integers(0, 9)),
        st.tuples(st.just("run"), st.integers(0, 5), st.integers(0, 9)),
    ),
    max_size=25,
)


def scheduled(state: SessionState) -> list[TaskInstance]:
    return sorted((i for i in state.instances.values() if i.status is Status.SCHEDULED), key=lambda i: i.name)


def check_invariants(state: SessionState, fired: dict[str, list[int]]) -> None:
    for task_name, task in state.tasks.items():
        instances = state.instances_of_task(task_name)
        assert [i.name for i in instances] == [f"{task_name}#{n}" for n in range(len(instances))]
        assert state.instance_counts.get(task_name, 0) == len(instances)
        if task.and_every is None:
            assert len(instances) <= 1, "a one-shot task never gets a second instance"
        for instance in instances:
            if instance.status in (Status.SCHEDULED, Status.RUNNING, Status.FINISHED):
                assert task.after <= instance.kwargs.keys(), "ran before all its triggers"
            if instance.status is Status.ABANDONED:
                assert task.unless and task.unless <= instance.abandon_state
            if instance.status is Status.UNSTARTED:
                assert not instance.can_run and not instance.can_abandon, "left undecided"
        one_shot_on_base_triggers = task.and_every is None and not task.unless and task.after <= set(TRIGGERS)
        if one_shot_on_base_triggers and all(fired.get(t) for t in task.after):
            assert instances and instances[0].status is not Status.UNSTARTED
    for trigger, values in fired.items():
        assert state.latest_kwargs[trigger] == {"v": values[-1]}


@settings(max_examples=150, deadline=None)
@given(configurations(), operations)
def test_rules_keep_the_invariants(configuration: dict[str, dict[str, Any]], ops: list[Any]) -> None:
    draft = Draft(SessionState(uid="p"))
    rules.configure(draft, parse_configuration(configuration))
    state = draft.changes().state
    fired: dict[str, list[int]] = {}
    for op in ops:
        draft = Draft(state)
        if op[0] == "fire":
            rules.fire(draft, op[1], {"v": op[2]})
            fired.setdefault(op[1], []).append(op[2])
        else:
            ready = scheduled(state)
            if not ready:
                continue
            name = ready[op[1] % len(ready)].name
            rules.start(draft, name)
            rules.finish(draft, name, {"v": op[2]}, 0)
            fired.setdefault(draft.get(name).task_name, []).append(op[2])
        state = draft.changes().state
        check_invariants(state, {k: v for k, v in fired.items() if k in TRIGGERS})


class Holding(BaseRunner):
    """Keeps dispatched instances scheduled, so tests decide when they run."""

    name = "holding"

    async def run(self, manager: TriggerManager, instance: TaskInstance) -> None:
        return None


register_runner(Holding())


async def drive(storage: Storage, configuration: dict[str, Any], ops: list[Any]) -> dict[str, Any]:
    from atriggers import task
    from atriggers.context import TaskContext

    @task("prop.task")
    async def body(context: TaskContext) -> dict[str, Any]:
        return {"v": context.instance_name}

    manager = TriggerManager(storage, "p", default_runner="holding")
    await manager.update_configuration(configuration)
    for op in ops:
        if op[0] == "fire":
            await manager.fire(op[1], {"v": op[2]})
        else:
            ready = scheduled(await manager.get_state())
            if ready:
                await manager.run_instance(ready[op[1] % len(ready)].name)
    state = (await manager.get_state()).debug_repr()
    for instance in state["instances"].values():
        # Times (a deadline too), and each run's fencing token and lease owner,
        # differ by design.
        for key in ("timestamps", "deadline", "token", "owner"):
            instance["metadata"].pop(key, None)
    return state


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configurations(), operations)
def test_sqlite_and_memory_storage_agree(configuration: dict[str, Any], ops: list[Any]) -> None:
    async def both() -> tuple[dict[str, Any], dict[str, Any]]:
        with tempfile.TemporaryDirectory() as folder:
            async with SQLiteStorage(Path(folder) / "p.db") as sqlite:
                on_disk = await drive(sqlite, configuration, ops)
        async with MemoryStorage() as memory:
            in_memory = await drive(memory, configuration, ops)
        return on_disk, in_memory

    on_disk, in_memory = asyncio.run(both())
    assert on_disk == in_memory
