"""Forged or mistaken events never leak a raw error from the function's handler,
and never make it create a database."""

from __future__ import annotations

from pathlib import Path

import pytest

from atriggers import TriggerError, TriggerManager
from atriggers.runners.aws_lambda import LambdaHandler
from atriggers.storage import SQLiteStorage


@pytest.mark.parametrize(
    "event",
    [
        {"storage": "file:///etc/passwd", "uid": "u", "instance": "t#0"},
        {"storage": "sqlite:///", "uid": "u", "instance": "t#0"},
        {"storage": "nope", "uid": "u", "instance": "t#0"},
        {"storage": "sqlite:///{tmp}/real.db", "uid": "u", "instance": "t#0", "manager": "unknown"},
        {"storage": "sqlite:///{tmp}/brand-new.db", "uid": "u", "instance": "t#0"},
        {"storage": "sqlite:///{tmp}/real.db", "uid": "", "instance": "t#0"},
        "not json",
        [1, 2],
    ],
)
async def test_forged_events_raise_trigger_errors(tmp_path: Path, event: object) -> None:
    async with SQLiteStorage(tmp_path / "real.db") as storage:
        await TriggerManager(storage, "u").update_configuration({"t": {"after": ["go"], "run": "x"}})
    if isinstance(event, dict):
        event = {k: v.replace("{tmp}", str(tmp_path)) for k, v in event.items()}
    handler = LambdaHandler()
    with pytest.raises(TriggerError):
        await handler.handle(event)  # type: ignore[arg-type]
    await handler._aclose()
    assert not (tmp_path / "brand-new.db").exists()


async def test_a_handler_serves_only_its_storages(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'real.db'}"
    async with SQLiteStorage(tmp_path / "real.db") as storage:
        await TriggerManager(storage, "u").update_configuration({"t": {"after": ["go"], "run": "x"}})
    handler = LambdaHandler(storages=["sqlite:////elsewhere.db"])
    with pytest.raises(TriggerError, match="does not serve the storage"):
        await handler.handle({"storage": url, "uid": "u", "instance": "t#0"})
    allowed = LambdaHandler(storages=[url])
    with pytest.raises(TriggerError, match="has no task instance named 't#0'"):
        await allowed.handle({"storage": url, "uid": "u", "instance": "t#0"})  # served: no such instance
    await allowed._aclose()
