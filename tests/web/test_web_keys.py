"""The HTTP ``Idempotency-Key`` helpers (FastAPI dependency, raw ASGI endpoint),
each served by a real uvicorn server on 127.0.0.1 in the test's event loop.

No ``from __future__ import annotations`` here: FastAPI resolves string
annotations in the module's globals, and these apps are built inside tests.
"""

import asyncio
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import FastAPI
from webserve import serve

from atriggers import InvalidInput, Status, TaskContext, TaskRegistry, TriggerManager
from atriggers.storage import SQLiteStorage
from atriggers.web import Triggers, idempotency_key

EVERY = {"t": {"after": [], "andEvery": "order", "run": "work"}}


def registry() -> TaskRegistry:
    tasks = TaskRegistry(entry_point_group=None)

    async def work(context: TaskContext) -> dict[str, Any]:
        return {"done": context.trigger_kwargs["order"].get("n")}

    tasks.register(work, "work")
    return tasks


async def configure(db: Path, uid: str) -> None:
    async with SQLiteStorage(db) as storage:
        await TriggerManager(storage, uid).update_configuration(EVERY)


async def instances(db: Path, uid: str) -> dict[str, Status]:
    async with SQLiteStorage(db) as storage:
        state = await storage.load_all(uid)
    return {name: i.status for name, i in state.instances.items()}


async def test_fastapi_dependency_answers_a_retry_with_the_first_outcome(tmp_path: Path) -> None:
    db = tmp_path / "web.db"
    await configure(db, "s1")
    triggers = Triggers(f"sqlite:///{db}", tasks=registry())
    app = FastAPI(lifespan=triggers.lifespan, exception_handlers=triggers.exception_handlers())
    manager_dep = Annotated[TriggerManager, triggers.depends("uid")]
    key_dep = Annotated[str | None, triggers.idempotency_key()]

    @app.post("/sessions/{uid}/orders")
    async def order(body: dict[str, Any], manager: manager_dep, key: key_dep) -> dict[str, Any]:
        scheduled = await manager.fire("order", body, key=key)
        return {"scheduled": [i.name for i in scheduled]}

    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        first = await client.post("/sessions/s1/orders", json={"n": 1}, headers={"Idempotency-Key": "k-1"})
        assert first.status_code == 200, first.text
        assert first.json() == {"scheduled": ["t#0"]}
        # Retried (the first answer was lost, say), also after the task finished.
        await asyncio.sleep(0.2)
        for _ in range(3):
            again = await client.post(
                "/sessions/s1/orders", json={"n": 1}, headers={"Idempotency-Key": "k-1"}
            )
            assert (again.status_code, again.content) == (first.status_code, first.content)
        # The same key for another request: 409, naming the key; nothing written.
        other = await client.post("/sessions/s1/orders", json={"n": 2}, headers={"Idempotency-Key": "k-1"})
        assert other.status_code == 409, other.text
        assert other.json()["error"] == "IdempotencyConflict"
        assert "'k-1'" in other.json()["detail"] and "kwargs" in other.json()["detail"]
        # Bad keys: 422, nothing written.
        blank = await client.post("/sessions/s1/orders", json={"n": 3}, headers={"Idempotency-Key": '""'})
        assert blank.status_code == 422
        long = await client.post("/sessions/s1/orders", json={"n": 3}, headers={"Idempotency-Key": "x" * 256})
        assert long.status_code == 422 and "255" in long.text
        # Without the header every request fires.
        plain = [await client.post("/sessions/s1/orders", json={"n": 4}) for _ in range(2)]
        assert [r.json() for r in plain] == [{"scheduled": ["t#1"]}, {"scheduled": ["t#2"]}]
    assert await instances(db, "s1") == {f"t#{n}": Status.FINISHED for n in range(3)}


async def test_raw_asgi_endpoint_fires_once_per_key(tmp_path: Path) -> None:
    db = tmp_path / "web.db"
    await configure(db, "s2")
    triggers = Triggers(f"sqlite:///{db}", tasks=registry())
    app = triggers.wrap(triggers.fire_endpoint())
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:

        async def post(body: Any, key: str | None = "k-7", trigger: str = "order") -> httpx.Response:
            headers = {"Idempotency-Key": key} if key is not None else {}
            return await client.post(f"/api/fire/s2/{trigger}", json=body, headers=headers)

        # Ten copies of one request at once (a client and a proxy both retrying).
        answers = await asyncio.gather(*(post({"n": 7}) for _ in range(10)))
        assert {(r.status_code, r.content) for r in answers} == {
            (200, b'{"uid": "s2", "trigger": "order", "scheduled": ["t#0"]}')
        }
        changed = await post({"n": 8})
        assert changed.status_code == 409
        assert changed.json()["key"] == "k-7" and changed.json()["differs"] == "kwargs"
        elsewhere = await post({"n": 7}, trigger="refund")
        assert elsewhere.status_code == 409 and elsewhere.json()["differs"] == "trigger"
        assert (await post([1, 2])).status_code == 422
        assert (await client.get("/api/fire/s2/order")).status_code == 405
        assert (await post({"n": 9}, key=None)).json()["scheduled"] == ["t#1"]
        assert (await post({"n": 9}, key="k-8")).json()["scheduled"] == ["t#2"]
        assert (await post({"n": 9}, key="k-8")).json()["scheduled"] == ["t#2"]
    assert sorted(await instances(db, "s2")) == ["t#0", "t#1", "t#2"]


def test_reading_the_header() -> None:
    scope = {"type": "http", "headers": [(b"idempotency-key", b'"abc"'), (b"x", b"y")]}
    assert idempotency_key(scope) == "abc"
    assert idempotency_key({"Idempotency-Key": "k"}) == "k"
    assert idempotency_key({"Other": "k"}) is None
    with pytest.raises(InvalidInput, match="2 times"):
        idempotency_key([(b"Idempotency-Key", b"a"), (b"idempotency-key", b"b")])
    with pytest.raises(InvalidInput, match="empty or blank"):
        idempotency_key({"idempotency-key": ""})
