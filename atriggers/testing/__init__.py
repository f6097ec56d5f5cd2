"""Tools for testing code built on atriggers: fixtures, assertions, conformance."""

from .assertions import (
    ANY_RESULT,
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
    describe_instance,
    describe_session,
)

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
