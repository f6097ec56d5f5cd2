"""The assertion helpers, used with the plugin's own fixtures (loaded through its
pytest11 entry point in this very test session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from atriggers import SessionState, TaskContext, TriggerManager
from atriggers.storage import SQLiteStorage
from atriggers.testing import (
    assert_instance_abandoned,
    assert_instance_failed,
    assert_instance_finished,
    assert_instance_missing,
    assert_instance_replayed,
    assert_instance_skipped,
    assert_instance_status,
    assert_instance_unstarted,
    assert_unresolved_instances,
    assert_unresolved_tasks,
)
from atriggers.testing.pytest_plugin import (
    DEV_NULL,
    FAILING,
    PASS_THRU,
    SELF_SKIPPING,
    TestTaskRegistry,
)

CONFIG = {
    "t_pass": {"after": ["go"], "run": PASS_THRU},
    "t_fail": {"after": ["go"], "run": FAILING},
    "t_skip": {"after": ["go"], "run": SELF_SKIPPING},
    "t_later": {"after": ["go", "later"], "run": DEV_NULL},
    "t_never": {"after": ["go"], "unless": ["stop"], "run": DEV_NULL},
    "t_cascade": {"after": ["t_fail"], "run": DEV_NULL},
}


@pytest.fixture
async def manager(atriggers_manager: TriggerManager) -> TriggerManager:
    await atriggers_manager.update_configuration(CONFIG)
    await atriggers_manager.fire("stop")
    await atriggers_manager.fire("go", {"x": 1})
    await atriggers_manager.join()
    return atriggers_manager


async def test_fixtures(
    atriggers_storage: SQLiteStorage,
    atriggers_database: Path,
    atriggers_manager: TriggerManager,
    atriggers_tasks: TestTaskRegistry,
    atriggers_uid: str,
) -> None:
    assert atriggers_storage.path == atriggers_database
    assert atriggers_manager.storage is atriggers_storage
    assert atriggers_manager.uid == atriggers_uid == "test-session"
    assert atriggers_manager.tasks is atriggers_tasks
    assert {PASS_THRU, DEV_NULL, FAILING, SELF_SKIPPING} <= set(atriggers_tasks)


async def test_passing_assertions(manager: TriggerManager) -> None:
    await assert_instance_finished(manager, "t_pass#0", result={"kwargs": {"go": {"x": 1}}})
    await assert_instance_finished(manager, "t_pass#0")
    await assert_instance_failed(manager, "t_fail#0", RuntimeError)
    await assert_instance_failed(manager, "t_fail#0", "builtins.RuntimeError")
    await assert_instance_failed(manager, "t_fail#0")
    await assert_instance_skipped(manager, "t_skip#0")
    await assert_instance_unstarted(manager, "t_later#0")
    await assert_instance_abandoned(manager, "t_never#0")
    await assert_instance_missing(manager, "t_cascade#0")
    await assert_instance_status(manager, "t_pass#0", "finished")
    await assert_unresolved_tasks(manager, ["t_later", "t_fail", "t_cascade"])
    await assert_unresolved_instances(manager, ["t_fail#0", "t_later#0"])

    await manager.replay_failed_instance("t_fail#0")
    await manager.join()
    await assert_instance_replayed(manager, "t_fail#0", by="t_fail#1")
    await assert_instance_failed(manager, "t_fail#1", RuntimeError)


async def test_a_snapshot_works_too(manager: TriggerManager) -> None:
    state = await manager.get_state()
    assert isinstance(state, SessionState)
    await assert_instance_finished(state, "t_pass#0")


async def test_finished_on_a_failed_instance_shows_the_failure(manager: TriggerManager) -> None:
    with pytest.raises(AssertionError) as info:
        await assert_instance_finished(manager, "t_fail#0")
    message = str(info.value)
    assert message.startswith("expected instance 't_fail#0' to be finished, but it is failed")
    assert "exception: builtins.RuntimeError" in message
    assert "traceback:" in message and "Traceback (most recent call last):" in message
    assert "RuntimeError: You weren't supposed to see that." in message
    assert "instances of session 'test-session':" in message
    assert "  t_pass#0: finished" in message and "  t_fail#0: failed (builtins.RuntimeError)" in message


async def test_wrong_result(manager: TriggerManager) -> None:
    with pytest.raises(AssertionError, match=r"finished with result \{\"kwargs\""):
        await assert_instance_finished(manager, "t_pass#0", result={"other": 1})


async def test_wrong_exception_type(manager: TriggerManager) -> None:
    with pytest.raises(AssertionError) as info:
        await assert_instance_failed(manager, "t_fail#0", ValueError)
    message = str(info.value)
    assert "failed with builtins.RuntimeError, expected builtins.ValueError" in message
    assert "You weren't supposed to see that." in message


async def test_failed_on_a_finished_instance(manager: TriggerManager) -> None:
    with pytest.raises(AssertionError) as info:
        await assert_instance_failed(manager, "t_pass#0", RuntimeError)
    assert "to be failed, but it is finished" in str(info.value)
    assert 'result: {"kwargs": {"go": {"x": 1}}}' in str(info.value)


async def test_missing_and_unexpected_instances(manager: TriggerManager) -> None:
    with pytest.raises(AssertionError, match="'t_nope#0' to be skipped, but it does not exist"):
        await assert_instance_skipped(manager, "t_nope#0")
    with pytest.raises(AssertionError, match="'t_pass#0' not to exist, but it was created"):
        await assert_instance_missing(manager, "t_pass#0")
    with pytest.raises(AssertionError, match="to be abandoned, but it is unstarted"):
        await assert_instance_abandoned(manager, "t_later#0")
    with pytest.raises(AssertionError, match="to be unstarted, but it is abandoned"):
        await assert_instance_unstarted(manager, "t_never#0")
    with pytest.raises(AssertionError, match="to be replayed, but it is failed"):
        await assert_instance_replayed(manager, "t_fail#0")


async def test_replayed_by_the_wrong_instance(manager: TriggerManager) -> None:
    await manager.replay_failed_instance("t_fail#0")
    await manager.join()
    with pytest.raises(AssertionError, match="'t_pass#0' to be the replay of 't_fail#0'"):
        await assert_instance_replayed(manager, "t_fail#0", by="t_pass#0")


async def test_unresolved_mismatch(manager: TriggerManager) -> None:
    with pytest.raises(AssertionError) as info:
        await assert_unresolved_tasks(manager, ["t_later", "t_pass"])
    message = str(info.value)
    assert "missing ['t_pass']" in message and "unexpected ['t_cascade', 't_fail']" in message
    with pytest.raises(AssertionError, match=r"unresolved instances: \['t_fail#0', 't_later#0'\]"):
        await assert_unresolved_instances(manager, [])


async def test_test_registry_falls_back_to_global_tasks(
    atriggers_manager: TriggerManager, atriggers_tasks: TestTaskRegistry
) -> None:
    from atriggers import task
    from atriggers.tasks import registry

    @task("tests.testing.global_task")
    async def global_task(context: TaskContext) -> dict[str, int]:
        return {"global": 1}

    async def local_task(context: TaskContext) -> dict[str, int]:
        return {"local": 1}

    atriggers_tasks.register(local_task, "tests.testing.local_task")
    await atriggers_manager.update_configuration(
        {
            "t_g": {"after": ["go"], "run": "tests.testing.global_task"},
            "t_l": {"after": ["go"], "run": "tests.testing.local_task"},
        }
    )
    await atriggers_manager.fire("go")
    await atriggers_manager.join()
    await assert_instance_finished(atriggers_manager, "t_g#0", result={"global": 1})
    await assert_instance_finished(atriggers_manager, "t_l#0", result={"local": 1})
    assert "tests.testing.local_task" not in registry


async def test_source_must_be_a_manager_or_state() -> None:
    with pytest.raises(TypeError, match="TriggerManager or a SessionState"):
        await assert_instance_missing("test-session", "t#0")  # type: ignore[arg-type]
