"""Assertions about a session's instances, for tests of workflows.

Each helper reads the session fresh from storage (through a `TriggerManager`) or
looks at a `SessionState` you already have, and raises `AssertionError` whose
message shows what the instance really is: its status, the exception type,
context and traceback of a failure, its result, and the session's other
instances. They work with pytest (frames hidden from tracebacks) and with any
other test runner::

    await manager.fire("go", {"x": 1})
    await manager.join()              # let in-process runs finish first
    await assert_instance_finished(manager, "t_import#0", result={"rows": 1})
    await assert_instance_failed(manager, "t_score#0", ZeroDivisionError)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..describe import compact_json, describe_instance, describe_session
from ..instance import Meta, Status, TaskInstance
from ..manager import TriggerManager
from ..state import SessionState

__all__ = [
    "ANY_RESULT",
    "assert_instance_abandoned",
    "assert_instance_failed",
    "assert_instance_finished",
    "assert_instance_missing",
    "assert_instance_replayed",
    "assert_instance_skipped",
    "assert_instance_status",
    "assert_instance_unstarted",
    "assert_unresolved_instances",
    "assert_unresolved_tasks",
    "describe_instance",
    "describe_session",
]

Source = TriggerManager | SessionState


class _AnyResult:
    def __repr__(self) -> str:
        return "ANY_RESULT"


#: Default of ``result=``: any result is accepted.
ANY_RESULT: Any = _AnyResult()


async def _state(source: Source) -> SessionState:
    if isinstance(source, SessionState):
        return source
    if isinstance(source, TriggerManager):
        # The whole session straight from storage: never a cached working view.
        return await source.get_state()
    raise TypeError(f"expected a TriggerManager or a SessionState, not {source!r}")


def _get(state: SessionState, name: str, expected: str) -> TaskInstance:
    __tracebackhide__ = True
    instance = state.instances.get(name)
    if instance is None:
        raise AssertionError(
            f"expected instance {name!r} to be {expected}, but it does not exist\n{describe_session(state)}"
        )
    return instance


async def assert_instance_status(source: Source, name: str, status: Status | str) -> TaskInstance:
    """Assert that instance `name` exists and has `status`; returns it."""
    __tracebackhide__ = True
    expected = Status(status)
    state = await _state(source)
    instance = _get(state, name, expected.value)
    if instance.status is not expected:
        raise AssertionError(
            f"expected instance {name!r} to be {expected.value}, but it is "
            f"{instance.status.value}\n{describe_instance(instance)}\n{describe_session(state)}"
        )
    return instance


async def assert_instance_finished(
    source: Source, name: str, result: Mapping[str, Any] | None = ANY_RESULT
) -> TaskInstance:
    """Assert that `name` finished, and (if `result` is given) returned `result`
    (a task returning None has result ``{}``)."""
    __tracebackhide__ = True
    instance = await assert_instance_status(source, name, Status.FINISHED)
    if result is not ANY_RESULT and instance.result != result:
        raise AssertionError(
            f"instance {name!r} finished with result {compact_json(instance.result)}, "
            f"expected {compact_json(result)}\n{describe_instance(instance)}"
        )
    return instance


def _type_name(exc_type: type[BaseException] | str) -> str:
    if isinstance(exc_type, str):
        return exc_type
    return f"{exc_type.__module__}.{exc_type.__qualname__}"


async def assert_instance_failed(
    source: Source, name: str, exc_type: type[BaseException] | str | None = None
) -> TaskInstance:
    """Assert that `name` failed, and (if `exc_type` is given) with exactly that
    exception type (a class, or its ``module.QualName`` as stored)."""
    __tracebackhide__ = True
    instance = await assert_instance_status(source, name, Status.FAILED)
    if exc_type is not None:
        expected = _type_name(exc_type)
        actual = instance.metadata.get(Meta.EXCEPTION_TYPE)
        if actual != expected:
            raise AssertionError(
                f"instance {name!r} failed with {actual}, expected {expected}\n{describe_instance(instance)}"
            )
    return instance


async def assert_instance_abandoned(source: Source, name: str) -> TaskInstance:
    """Assert that `name` was abandoned (its ``unless`` triggers all fired)."""
    __tracebackhide__ = True
    return await assert_instance_status(source, name, Status.ABANDONED)


async def assert_instance_replayed(source: Source, name: str, *, by: str | None = None) -> TaskInstance:
    """Assert that `name` was replayed (by an operator or a retry); with `by`,
    that instance `by` is its replay (metadata ``parent`` is `name`)."""
    __tracebackhide__ = True
    state = await _state(source)
    instance = await assert_instance_status(state, name, Status.REPLAYED)
    if by is not None:
        clone = _get(state, by, f"the replay of {name!r}")
        if clone.parent != name:
            raise AssertionError(
                f"expected {by!r} to be the replay of {name!r}, but its parent is "
                f"{clone.parent!r}\n{describe_instance(clone)}"
            )
    return instance


async def assert_instance_skipped(source: Source, name: str) -> TaskInstance:
    """Assert that `name` was skipped (by an operator or by the task itself)."""
    __tracebackhide__ = True
    return await assert_instance_status(source, name, Status.SKIPPED)


async def assert_instance_unstarted(source: Source, name: str) -> TaskInstance:
    """Assert that `name` exists but has not started (waiting for triggers)."""
    __tracebackhide__ = True
    return await assert_instance_status(source, name, Status.UNSTARTED)


async def assert_instance_missing(source: Source, name: str) -> None:
    """Assert that no instance `name` exists (yet)."""
    __tracebackhide__ = True
    state = await _state(source)
    instance = state.instances.get(name)
    if instance is not None:
        raise AssertionError(
            f"expected instance {name!r} not to exist, but it was created and is "
            f"{instance.status.value}\n{describe_instance(instance)}"
        )


def _compare(kind: str, actual: Iterable[str], expected: Iterable[str], state: SessionState) -> None:
    __tracebackhide__ = True
    got, want = sorted(actual), sorted(expected)
    if got != want:
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        raise AssertionError(
            f"unresolved {kind}: {got}, expected {want}"
            f"{f'; missing {missing}' if missing else ''}"
            f"{f'; unexpected {extra}' if extra else ''}\n{describe_session(state)}"
        )


async def assert_unresolved_tasks(source: Source, names: Iterable[str]) -> None:
    """Assert that exactly the tasks `names` are unresolved (in any order): tasks
    with no instance yet, or with an instance not finished/abandoned/replayed/skipped."""
    __tracebackhide__ = True
    state = await _state(source)
    _compare("tasks", (t.name for t in state.get_unresolved_tasks()), names, state)


async def assert_unresolved_instances(source: Source, names: Iterable[str]) -> None:
    """Assert that exactly the instances `names` are unresolved (in any order)."""
    __tracebackhide__ = True
    state = await _state(source)
    _compare("instances", (i.name for i in state.get_unresolved_instances()), names, state)
