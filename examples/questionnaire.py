"""The questionnaire workflow of the atriggers documentation, end to end.

A respondent's questionnaire arrives page by page. We import the subject once the
first page arrived and the questionnaire is complete, import each page's responses
once the subject exists, import browser metadata unless the questionnaire runs
embedded in a mobile app, and compute a score with a model chosen by
configuration (``withParams``).

Run it:  python examples/questionnaire.py [path/to/state.db]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

from atriggers import Status, TaskContext, TriggerManager, task
from atriggers.storage import SQLiteStorage

# -- the tasks --------------------------------------------------------------------


@task("questionnaire.import_subject")
async def import_subject(context: TaskContext) -> dict[str, Any]:
    first_page = context.trigger_kwargs["firstPageReceived"]
    with context.get_logger_context() as log:
        log.info("importing subject %s", first_page["name"])
    return {"subjectId": f"subject-{first_page['name'].lower()}"}


@task("questionnaire.import_responses")
async def import_responses(context: TaskContext) -> dict[str, Any]:
    page = context.trigger_kwargs["pageReceived"]
    subject = context.trigger_kwargs["t_importSubject"]["subjectId"]
    await asyncio.sleep(0.01)  # pretend to write somewhere
    return {"subjectId": subject, "page": page["page"], "answers": len(page["answers"])}


@task("questionnaire.import_browser_metadata")
async def import_browser_metadata(context: TaskContext) -> dict[str, Any]:
    return {"userAgent": context.trigger_kwargs["pageReceived"].get("userAgent", "unknown")}


@task("questionnaire.compute_score")
async def compute_score(context: TaskContext) -> dict[str, Any]:
    scoring = context.trigger_kwargs["scoring"]  # from withParams
    subject = context.trigger_kwargs["t_importSubject"]["subjectId"]
    return {"subjectId": subject, "model": scoring["model"], "score": 0.87}


CONFIGURATION: dict[str, dict[str, Any]] = {
    "t_importSubject": {
        "after": ["firstPageReceived", "questionnaireComplete"],
        "run": "questionnaire.import_subject",
    },
    "t_importResponses": {
        "after": ["t_importSubject"],
        "andEvery": "pageReceived",
        "run": "questionnaire.import_responses",
    },
    "t_importBrowserMetadata": {
        "after": ["t_importSubject", "pageReceived"],
        "unless": ["isEmbeddedApplication"],
        "run": "questionnaire.import_browser_metadata",
    },
    "t_computePsychometricScore": {
        "after": ["t_importSubject", "questionnaireComplete"],
        "run": "questionnaire.compute_score",
        "withParams": {"scoring": {"model": "Psych 01"}},
    },
}

PAGES = [
    {"page": 1, "answers": ["a", "b"], "userAgent": "Firefox"},
    {"page": 2, "answers": ["c"]},
    {"page": 3, "answers": ["d", "e", "f"]},
]


async def run_questionnaire(storage: SQLiteStorage, uid: str, *, embedded: bool = False) -> TriggerManager:
    """Drive one respondent's questionnaire through the workflow."""
    manager = TriggerManager(storage, uid)
    await manager.update_configuration(CONFIGURATION)
    if embedded:
        await manager.fire("isEmbeddedApplication", {"app": "ios"})
    await manager.fire("firstPageReceived", {"name": "Ada"})
    for page in PAGES:
        await manager.fire("pageReceived", page)
    await manager.fire("questionnaireComplete", {"pages": len(PAGES)})
    await manager.join()  # wait for the runs and their cascades
    return manager


def render_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*header), line.format(*("-" * w for w in widths))]
    out += [line.format(*row) for row in rows]
    return "\n".join(out)


async def main(path: Path) -> None:
    async with SQLiteStorage(path) as storage:
        web = await run_questionnaire(storage, "respondent-web")
        await run_questionnaire(storage, "respondent-app", embedded=True)
        for uid in ("respondent-web", "respondent-app"):
            state = await TriggerManager(storage, uid).get_state()
            rows = [
                [
                    instance.name,
                    instance.status.value,
                    ", ".join(sorted(instance.kwargs)),
                    str(instance.result) if instance.result is not None else "",
                ]
                for task_name in state.tasks
                for instance in state.instances_of_task(task_name)
            ]
            print(f"\nSession {uid!r} (version {state.version}):")
            print(render_table(rows, ["instance", "status", "triggers applied", "result"]))
            unresolved = [t.name for t in state.get_unresolved_tasks()]
            print(f"unresolved tasks: {', '.join(unresolved) or 'none'}")
        state = await web.get_state()
        finished = sum(i.status is Status.FINISHED for i in state.instances.values())
        print(f"\n{finished} instances finished for respondent-web; state in {path}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        target = Path(sys.argv[1])
    else:
        target = Path(tempfile.mkdtemp(prefix="atriggers-")) / "questionnaire.db"
    asyncio.run(main(target))
