"""Tasks the scenarios run: registered on import, in every process."""

from __future__ import annotations

from atriggers import TaskContext, task


@task("bench.noop")
async def noop(context: TaskContext) -> None:
    """Does nothing: the benchmark measures atriggers, not the task."""
    return None
