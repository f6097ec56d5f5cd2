"""`atriggers.web.Triggers` with Starlette, FastAPI and a raw ASGI app, each
served by a real uvicorn server on 127.0.0.1 in the test's event loop.

No ``from __future__ import annotations`` here: FastAPI resolves string
annotations in the module's globals, and these apps are built inside tests.
"""

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import FastAPI, Header
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from webserve import serve

from atriggers import Status, StorageError, TaskContext, TaskRegistry, TriggerManager
from atriggers.errors import DispatchError, UnknownRunner
from atriggers.runners import AsyncioRunner, RunnerRegistry
from atriggers.storage import MemoryStorage, SQLiteStorage
from atriggers.web import Message, Receive, Scope, Send, Triggers, status_code_for

CONFIG = {"t_work": {"after": ["go"], "run": "work"}}


def registry(delay: float = 0.0) -> TaskRegistry:
    tasks = TaskRegistry(entry_point_group=None)

    async def work(context: TaskContext) -> dict[str, Any]:
        await asyncio.sleep(delay)
        return {"done": context.trigger_kwargs["go"]["n"]}

    tasks.register(work, "work")
    return tasks


def starlette_app(triggers: Triggers, **kwargs: Any) -> Starlette:
    async def start(request: Request) -> JSONResponse:
        manager = triggers.manager(request.path_params["uid"])
        await manager.update_configuration(CONFIG)
        return JSONResponse({"ok": True})

    async def go(request: Request) -> JSONResponse:
        manager = triggers.manager(request.path_params["uid"])
        scheduled = await manager.fire("go", await request.json())
        return JSONResponse({"scheduled": [i.name for i in scheduled]})

    routes = [
        Route("/{uid}/start", start, methods=["POST"]),
        Route("/{uid}/go", go, methods=["POST"]),
    ]
    return Starlette(routes=routes, **kwargs)


async def test_starlette_lifespan_opens_and_closes_the_storage(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    triggers = Triggers(f"sqlite:///{db}", tasks=registry())
    app = starlette_app(triggers, lifespan=triggers.lifespan)
    assert not triggers.is_open
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        assert triggers.is_open
        assert isinstance(triggers.storage, SQLiteStorage)
        for uid in ("a", "b"):
            assert (await client.post(f"/{uid}/start")).status_code == 200
            response = await client.post(f"/{uid}/go", json={"n": uid})
            assert response.json() == {"scheduled": ["t_work#0"]}
    assert not triggers.is_open
    with pytest.raises(StorageError, match=r"is not open: pass `lifespan=triggers\.lifespan`"):
        triggers.manager("a")
    async with SQLiteStorage(db) as storage:
        for uid in ("a", "b"):
            instance = (await storage.load_all(uid)).instances["t_work#0"]
            assert instance.status is Status.FINISHED
            assert instance.result == {"done": uid}


async def test_shutdown_closes_the_runners(tmp_path: Path) -> None:
    closed: list[str] = []

    class Closing(AsyncioRunner):
        async def aclose(self) -> None:
            closed.append(self.name)

    own = RunnerRegistry()
    own.register(Closing(), "asyncio")
    triggers = Triggers(f"sqlite:///{tmp_path / 'app.db'}", tasks=registry(), runners=own)
    app = starlette_app(triggers, lifespan=triggers.lifespan)
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.post("/a/start")).status_code == 200
        assert (await client.post("/a/go", json={"n": 1})).json() == {"scheduled": ["t_work#0"]}
        assert closed == []
    assert closed == ["asyncio"]


async def test_the_lifespan_runs_a_sweeper(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    # A process that stored a delayed fire and is gone before it is due.
    async with SQLiteStorage(db) as gone:
        manager = TriggerManager(gone, "later", tasks=registry())
        await manager.update_configuration(CONFIG)
        await manager.fire("go", {"n": 5}, delay=0.2)
    triggers = Triggers(f"sqlite:///{db}", tasks=registry(), sweep_interval=0.05)
    async with serve(starlette_app(triggers, lifespan=triggers.lifespan)):
        deadline = time.monotonic() + 10
        while True:
            instance = (await triggers.storage.load_all("later")).instances.get("t_work#0")
            if instance is not None and instance.status is Status.FINISHED:
                break
            assert time.monotonic() < deadline, instance
            await asyncio.sleep(0.05)
    assert instance.result == {"done": 5}
    untouched = Triggers(f"sqlite:///{tmp_path / 'other.db'}", sweeper=False)
    await untouched.open()
    assert untouched._sweeper is None
    await untouched.aclose()


async def test_the_same_triggers_serves_one_lifespan_after_another(tmp_path: Path) -> None:
    triggers = Triggers(f"sqlite:///{tmp_path}/app.db", tasks=registry())
    app = starlette_app(triggers, lifespan=triggers.lifespan)
    storages = []
    for n in range(2):
        async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
            await client.post("/s/start")
            response = await client.post("/s/go", json={"n": n})
            storages.append(triggers.storage)
            # t_work is one-shot: the second server sees it already ran.
            assert response.json() == {"scheduled": ["t_work#0"] if n == 0 else []}
        assert not triggers.is_open
    assert storages[0] is not storages[1]  # a fresh storage object per lifespan
    async with SQLiteStorage(tmp_path / "app.db") as reopened:
        state = await reopened.load_all("s")
    assert list(state.instances) == ["t_work#0"]
    assert state.latest_kwargs["go"] == {"n": 1}


async def test_shutdown_drains_in_flight_runs(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    triggers = Triggers(f"sqlite:///{db}", tasks=registry(delay=0.5))
    app = starlette_app(triggers, lifespan=triggers.lifespan)
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        await client.post("/s/start")
        await client.post("/s/go", json={"n": 1})
        stopping = time.monotonic()
    assert time.monotonic() - stopping >= 0.3  # shutdown waited for the run
    async with SQLiteStorage(db) as storage:
        instance = (await storage.load_all("s")).instances["t_work#0"]
    assert instance.status is Status.FINISHED


async def test_tasks_drained_at_shutdown_can_still_use_the_triggers(tmp_path: Path) -> None:
    # A task that fires into another session through `triggers.manager`, and
    # runs while shutdown drains: the storage must still be reachable.
    tasks = TaskRegistry(entry_point_group=None)
    triggers = Triggers(f"sqlite:///{tmp_path}/app.db", tasks=tasks)

    async def notify(context: TaskContext) -> None:
        await asyncio.sleep(0.3)
        await triggers.manager("audit").fire("orderDone", {"order": context.uid})

    tasks.register(notify, "notify")
    app = Starlette(lifespan=triggers.lifespan)
    async with serve(app):
        manager = triggers.manager("order-1")
        await manager.update_configuration({"t_notify": {"after": ["go"], "run": "notify"}})
        await manager.fire("go", {"n": 1})
    async with SQLiteStorage(tmp_path / "app.db") as storage:
        audit = await storage.load_all("audit")
    assert audit.latest_kwargs["orderDone"] == {"order": "order-1"}


async def test_shutdown_cancels_stragglers_after_close_timeout(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    triggers = Triggers(f"sqlite:///{db}", tasks=registry(delay=60), close_timeout=0.2)
    app = starlette_app(triggers, lifespan=triggers.lifespan)
    stopping = 0.0
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        await client.post("/s/start")
        await client.post("/s/go", json={"n": 1})
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 5
    async with SQLiteStorage(db) as storage:
        instance = (await storage.load_all("s")).instances["t_work#0"]
    assert instance.status is Status.FAILED
    assert instance.metadata["exceptionType"] == "asyncio.exceptions.CancelledError"
    assert instance.can_replay


async def test_fastapi_dependency_and_error_handlers() -> None:
    storage = MemoryStorage()
    triggers = Triggers(storage, tasks=registry())
    app = FastAPI(lifespan=triggers.lifespan, exception_handlers=triggers.exception_handlers())

    @app.post("/sessions/{uid}")
    async def start(manager: Annotated[TriggerManager, triggers.depends()]) -> dict[str, str]:
        await manager.update_configuration(CONFIG)
        return {"uid": manager.uid}

    @app.post("/sessions/{uid}/configure")
    async def configure(body: dict[str, Any], manager: Annotated[TriggerManager, triggers.depends()]) -> None:
        await manager.update_configuration(body)

    @app.post("/sessions/{uid}/instances/{name}/replay")
    async def replay(name: str, manager: Annotated[TriggerManager, triggers.depends()]) -> None:
        await manager.replay_failed_instance(name)

    async def session_header(x_session: Annotated[str, Header()]) -> str:
        return x_session

    @app.post("/go")
    async def go(
        manager: Annotated[TriggerManager, triggers.depends(session_header)],
    ) -> dict[str, Any]:
        scheduled = await manager.fire("go", {"n": manager.uid})
        await manager.join()
        state = await manager.get_state()
        return {"scheduled": [i.name for i in scheduled], "result": state.instances["t_work#0"].result}

    @app.get("/query")
    async def query(
        manager: Annotated[TriggerManager, triggers.depends("session")],
    ) -> dict[str, str]:
        return {"uid": manager.uid}

    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.post("/sessions/s1")).json() == {"uid": "s1"}
        response = await client.post("/go", headers={"X-Session": "s1"})
        assert response.json() == {"scheduled": ["t_work#0"], "result": {"done": "s1"}}
        assert (await client.post("/go")).status_code == 422  # no header
        assert (await client.get("/query", params={"session": "s9"})).json() == {"uid": "s9"}
        assert (await client.get("/query", params={"session": ""})).status_code == 422

        bad = await client.post("/sessions/s1/configure", json={"t_x": {"run": "work"}})
        assert bad.status_code == 422
        assert bad.json()["error"] == "ConfigurationError"
        assert "'after'" in bad.json()["detail"]
        missing = await client.post("/sessions/s1/instances/t_nope%233/replay")
        assert missing.status_code == 404
        assert missing.json()["error"] == "InstanceNotFound"
        finished = await client.post("/sessions/s1/instances/t_work%230/replay")
        assert finished.status_code == 409, finished.text
        assert "finished" in finished.json()["detail"]
    assert not triggers.is_open


async def test_wrap_a_raw_asgi_app_without_lifespan_support() -> None:
    triggers = Triggers("memory://", tasks=registry())

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError(f"only http, not {scope['type']}")
        manager = triggers.manager(scope["path"].strip("/"))
        await manager.update_configuration(CONFIG)
        scheduled = await manager.fire("go", {"n": 1})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scheduled[0].name.encode()})

    async with serve(triggers.wrap(app)) as url, httpx.AsyncClient(base_url=url) as client:
        assert triggers.is_open
        assert (await client.get("/raw")).text == "t_work#0"
    assert not triggers.is_open


async def test_wrap_runs_the_apps_own_lifespan_inside() -> None:
    triggers = Triggers("memory://")
    seen: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        seen.append(f"app startup, storage open: {triggers.is_open}")
        yield
        seen.append(f"app shutdown, storage open: {triggers.is_open}")

    async def ping(request: Request) -> JSONResponse:
        return JSONResponse({"uid": triggers.manager("x").uid})

    app = Starlette(routes=[Route("/", ping)], lifespan=lifespan)
    async with serve(triggers.wrap(app)) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/")).json() == {"uid": "x"}
    assert seen == ["app startup, storage open: True", "app shutdown, storage open: True"]
    assert not triggers.is_open


async def test_wrap_still_closes_the_storage_when_the_apps_lifespan_crashes() -> None:
    triggers = Triggers("memory://", tasks=registry(delay=0.3))

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            raise RuntimeError("the app's lifespan crashed after startup")
        manager = triggers.manager("s")
        await manager.update_configuration(CONFIG)
        await manager.fire("go", {"n": 1})
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with serve(triggers.wrap(app)) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/")).status_code == 204
        storage = triggers.storage
    assert not triggers.is_open
    # The run in flight at shutdown was drained before the storage closed.
    assert (await storage.load_all("s")).instances["t_work#0"].status is Status.FINISHED


async def test_wrap_reports_a_storage_that_cannot_open(tmp_path: Path) -> None:
    not_a_database = tmp_path / "app.db"
    not_a_database.write_bytes(b"this is not an SQLite file" * 100)
    triggers = Triggers(f"sqlite:///{not_a_database}")
    messages: list[Message] = []
    incoming = iter([{"type": "lifespan.startup"}])

    async def receive() -> Message:
        return next(incoming)

    async def send(message: Message) -> None:
        messages.append(message)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("the app must not start without its storage")

    await triggers.wrap(app)({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert [m["type"] for m in messages] == ["lifespan.startup.failed"]
    assert "file is not a database" in messages[0]["message"]
    assert not triggers.is_open


def test_construction_errors() -> None:
    with pytest.raises(ValueError, match="no storage URL scheme registered as 'nope'"):
        Triggers("nope://x")
    with pytest.raises(TypeError, match="storage URL or a Storage"):
        Triggers(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="TriggerManager subclass"):
        Triggers("memory://", manager_class=dict)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="close_timeout"):
        Triggers("memory://", close_timeout=-1)
    with pytest.raises(ValueError, match="identifier"):
        Triggers("memory://").depends("not a name")


def test_depends_without_fastapi_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)
    with pytest.raises(ImportError, match=r"pip install 'atriggers\[web\]'"):
        Triggers("memory://").depends()


def test_core_does_not_import_web_frameworks() -> None:
    import subprocess

    code = (
        "import sys, atriggers, atriggers.web, atriggers.storage, atriggers.runners\n"
        "bad = [m for m in ('fastapi', 'starlette', 'uvicorn') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def test_status_codes() -> None:
    from atriggers import (
        ConcurrencyError,
        ConfigurationError,
        InstanceNotFound,
        InvalidInput,
        InvalidStatus,
    )

    assert status_code_for(InstanceNotFound("t#0", "u")) == 404
    assert status_code_for(InvalidStatus("t#0", "finished", "replayed")) == 409
    assert status_code_for(InvalidInput("no")) == 422
    assert status_code_for(ConfigurationError([])) == 422
    assert status_code_for(ConcurrencyError("busy")) == 503
    assert status_code_for(StorageError("down")) == 500
    assert status_code_for(UnknownRunner("no runner 'x'")) == 502
    assert status_code_for(DispatchError("broker down")) == 502
