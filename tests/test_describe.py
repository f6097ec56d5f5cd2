"""A session as data (`SessionState.debug_repr`) and in words (`atriggers.describe`)."""

from __future__ import annotations

from atriggers import SessionState, TaskConfig, TaskInstance
from atriggers.describe import compact_json, describe_instance, describe_session
from atriggers.instance import Meta, Status


def instance(name: str, status: Status, **metadata: object) -> TaskInstance:
    return TaskInstance(name=name, task_name=name.partition("#")[0], status=status, metadata=dict(metadata))


def state() -> SessionState:
    tasks = {name: TaskConfig.from_dict(name, {"after": ["go"], "run": "app.x"}) for name in ("t_b", "t_a")}
    instances = [
        instance("t_gone#0", Status.FINISHED, result={}),
        instance("t_a#10", Status.UNSTARTED),
        instance(
            "t_a#2", Status.FAILED, exceptionType="builtins.KeyError", exceptionInfo="Traceback\nKeyError"
        ),
        instance("t_b#0", Status.FINISHED, result={"n": 1}),
    ]
    counts = {"t_b": 1, "t_a": 11, "t_gone": 1}
    return SessionState(
        uid="u", version=3, tasks=tasks, instances={i.name: i for i in instances}, instance_counts=counts
    )


def test_instances_in_configuration_order_then_numbers_then_removed_tasks() -> None:
    assert [i.name for i in state().ordered_instances()] == ["t_b#0", "t_a#2", "t_a#10", "t_gone#0"]


def test_debug_repr_keeps_that_order_and_derives_the_lists() -> None:
    data = state().debug_repr()
    assert list(data["instances"]) == ["t_b#0", "t_a#2", "t_a#10", "t_gone#0"]
    assert data["instances"]["t_b#0"]["metadata"]["result"] == {"n": 1}
    assert data["unresolvedTasks"] == ["t_a"]
    assert data["unresolvedInstances"] == ["t_a#2", "t_a#10"]
    assert data["failed"] == [
        {
            "instance": "t_a#2",
            "exceptionType": "builtins.KeyError",
            "exceptionInfo": "Traceback\nKeyError",
            "exceptionContext": None,
        }
    ]


def test_describe_a_failure_and_a_session() -> None:
    failed = state().instances["t_a#2"]
    assert describe_instance(failed) == (
        "t_a#2: failed\n"
        "  exception: builtins.KeyError\n"
        "  traceback:\n"
        "    Traceback\n"
        "    KeyError\n"
        "  triggers applied: none"
    )
    assert describe_session(state()).splitlines()[1:3] == [
        "  t_a#10: unstarted",
        "  t_a#2: failed (builtins.KeyError)",
    ]
    assert describe_session(SessionState(uid="e")) == "session 'e' has no instances"


def test_metadata_that_is_not_json_is_still_described() -> None:
    odd = instance("t_a#0", Status.FINISHED, **{Meta.RESULT: {1, 2}})
    assert compact_json({1, 2}) == "{1, 2}"
    assert "  result: {1, 2}" in describe_instance(odd)
