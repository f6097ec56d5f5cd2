"""The questionnaire workflow as a FastAPI app (see README.md next to this file).

A respondent's questionnaire arrives page by page over HTTP. Once the first page
arrived and the questionnaire is complete we import the subject; once the subject
exists we import every page's responses; we import browser metadata unless the
questionnaire runs embedded in a mobile app; and we compute a score with the model
the configuration names (``withParams``).

Settings (environment variables):

- ``WEBAPP_DB``: SQLite file holding the sessions and the run log (``webapp.db``).
- ``WEBAPP_TASK_DELAY``: seconds each import pretends to work (0.05).
- ``WEBAPP_CLOSE_TIMEOUT``: seconds shutdown waits for running tasks (10).

Run it:  uvicorn --app-dir examples/webapp webapp:app
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import aiosqlite
from fastapi import FastAPI, HTTPException
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from atriggers import SessionState, TaskContext, TriggerManager, task
from atriggers.web import Triggers

DB_PATH = Path(os.environ.get("WEBAPP_DB", "webapp.db"))
TASK_DELAY = float(os.environ.get("WEBAPP_TASK_DELAY", "0.05"))
CLOSE_TIMEOUT = float(os.environ.get("WEBAPP_CLOSE_TIMEOUT", "10"))

# -- a run log: every task run, so that "exactly once" can be checked -----------------


class RunLog:
    """Appends one row per task run to ``webapp_runs``, in the sessions' file.

    Independent of atriggers' own bookkeeping: an instance run twice shows up
    twice here even if its second run overwrote its first result.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None

    @asynccontextmanager
    async def opened(self) -> AsyncIterator[RunLog]:
        self._db = await aiosqlite.connect(self.path, timeout=30, isolation_level=None)
        try:
            await self._db.execute("PRAGMA journal_mode = WAL")
            await self._db.execute(
                "CREATE TABLE IF NOT EXISTS webapp_runs "
                "(uid TEXT NOT NULL, instance TEXT NOT NULL, task TEXT NOT NULL, "
                "pid INTEGER NOT NULL, at REAL NOT NULL)"
            )
            yield self
        finally:
            db, self._db = self._db, None
            await db.close()

    async def record(self, context: TaskContext) -> None:
        if self._db is None:
            raise RuntimeError("the run log is not open (the app's lifespan opens it)")
        await self._db.execute(
            "INSERT INTO webapp_runs (uid, instance, task, pid, at) VALUES (?, ?, ?, ?, ?)",
            (context.uid, context.instance_name, context.task_name, os.getpid(), time.time()),
        )


runs = RunLog(DB_PATH)

# -- the tasks --------------------------------------------------------------------------


@task("webapp.import_subject")
async def import_subject(context: TaskContext) -> dict[str, Any]:
    await runs.record(context)
    first_page = context.trigger_kwargs["firstPageReceived"]
    await asyncio.sleep(TASK_DELAY)  # pretend to write somewhere
    with context.get_logger_context() as log:
        log.info("imported subject %s", first_page["name"])
    return {"subjectId": f"subject-{context.uid}", "name": first_page["name"]}


@task("webapp.import_responses")
async def import_responses(context: TaskContext) -> dict[str, Any]:
    await runs.record(context)
    page = context.trigger_kwargs["pageReceived"]
    subject = context.trigger_kwargs["t_importSubject"]["subjectId"]
    await asyncio.sleep(TASK_DELAY)
    return {"subjectId": subject, "page": page["page"], "answers": len(page["answers"])}


@task("webapp.import_browser_metadata")
async def import_browser_metadata(context: TaskContext) -> dict[str, Any]:
    await runs.record(context)
    return {"userAgent": context.trigger_kwargs["pageReceived"].get("userAgent") or "unknown"}


@task("webapp.compute_score")
async def compute_score(context: TaskContext) -> dict[str, Any]:
    await runs.record(context)
    scoring = context.trigger_kwargs["scoring"]  # from withParams
    subject = context.trigger_kwargs["t_importSubject"]["subjectId"]
    pages = context.trigger_kwargs["questionnaireComplete"]["pages"]
    return {"subjectId": subject, "model": scoring["model"], "score": round(0.5 + pages / 100, 2)}


def configuration(scoring_model: str) -> dict[str, dict[str, Any]]:
    """The session's trigger tasks (the seed document's questionnaire)."""
    return {
        "t_importSubject": {
            "after": ["firstPageReceived", "questionnaireComplete"],
            "run": "webapp.import_subject",
        },
        "t_importResponses": {
            "after": ["t_importSubject"],
            "andEvery": "pageReceived",
            "run": "webapp.import_responses",
        },
        "t_importBrowserMetadata": {
            "after": ["t_importSubject", "pageReceived"],
            "unless": ["isEmbeddedApplication"],
            "run": "webapp.import_browser_metadata",
        },
        "t_computePsychometricScore": {
            "after": ["t_importSubject", "questionnaireComplete"],
            "run": "webapp.compute_score",
            "withParams": {"scoring": {"model": scoring_model}},
        },
    }


# -- the app ------------------------------------------------------------------------------

triggers = Triggers(f"sqlite:///{DB_PATH}", close_timeout=CLOSE_TIMEOUT)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # The run log opens first and closes last: tasks drained at shutdown use it.
    async with runs.opened(), triggers.lifespan(app):
        yield


app = FastAPI(
    title="atriggers questionnaire",
    lifespan=lifespan,
    exception_handlers=triggers.exception_handlers(),
)

Manager = Annotated[TriggerManager, triggers.depends("uid")]


class Start(BaseModel):
    scoringModel: str = "Psych 01"  # noqa: N815 - JSON field names


class Page(BaseModel):
    answers: list[str]
    name: str | None = Field(default=None, description="respondent's name (page 1)")
    userAgent: str | None = None  # noqa: N815


class Complete(BaseModel):
    pages: int = Field(ge=1)


class Embedded(BaseModel):
    app: str = "unknown"


async def fire(manager: TriggerManager, trigger: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    await require_started(manager)
    scheduled = await manager.fire(trigger, kwargs)
    return {"trigger": trigger, "scheduled": [i.name for i in scheduled]}


async def require_started(manager: TriggerManager) -> None:
    state = await manager.storage.read(manager.uid)
    if not state.tasks:
        # The cached snapshot may predate a start handled by another worker.
        state = await manager.storage.read(manager.uid, fresh=True)
    if not state.tasks:
        raise HTTPException(404, f"questionnaire {manager.uid!r} was not started")


@app.post("/questionnaires/{uid}", status_code=201)
async def start(manager: Manager, body: Start | None = None) -> dict[str, Any]:
    """Start a questionnaire: store its configuration."""
    model = body.scoringModel if body is not None else Start().scoringModel
    await manager.update_configuration(configuration(model))
    return {"uid": manager.uid, "scoringModel": model}


@app.post("/questionnaires/{uid}/pages/{page}")
async def post_page(manager: Manager, page: Annotated[int, PathParam(ge=1)], body: Page) -> dict[str, Any]:
    """A page of responses; page 1 also carries the respondent's name."""
    received = {"page": page, "answers": body.answers, "userAgent": body.userAgent}
    result = await fire(manager, "pageReceived", received)
    if page == 1:
        first = await fire(manager, "firstPageReceived", {"name": body.name or "anonymous"})
        result["scheduled"] += first["scheduled"]
    return result


@app.post("/questionnaires/{uid}/complete")
async def complete(manager: Manager, body: Complete) -> dict[str, Any]:
    return await fire(manager, "questionnaireComplete", {"pages": body.pages})


@app.post("/questionnaires/{uid}/embedded")
async def embedded(manager: Manager, body: Embedded) -> dict[str, Any]:
    """The questionnaire runs inside a mobile app: no browser metadata."""
    return await fire(manager, "isEmbeddedApplication", {"app": body.app})


@app.get("/questionnaires/{uid}")
async def show(manager: Manager) -> dict[str, Any]:
    """The session's tasks and instances."""
    state = await manager.get_state()
    if not state.tasks:
        raise HTTPException(404, f"questionnaire {manager.uid!r} was not started")
    return describe(state)


def describe(state: SessionState) -> dict[str, Any]:
    instances = []
    for name in state.tasks:
        for instance in state.instances_of_task(name):
            view: dict[str, Any] = {
                "name": instance.name,
                "task": instance.task_name,
                "status": instance.status.value,
                "triggers": sorted(instance.kwargs),
                "result": instance.result,
                "timestamps": instance.timestamps,
            }
            if "exceptionType" in instance.metadata:
                view["error"] = instance.metadata["exceptionType"]
            instances.append(view)
    return {
        "uid": state.uid,
        "version": state.version,
        "tasks": {name: config.to_dict() for name, config in state.tasks.items()},
        "instances": instances,
        "unresolved": [i.name for i in state.get_unresolved_instances()],
    }
