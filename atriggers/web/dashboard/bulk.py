"""Replaying or skipping many failed instances at once: a confirmation page that
lists exactly what will change, then the change of exactly those instances."""

from __future__ import annotations

import json
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from ...errors import TriggerError
from ...instance import Meta, Status
from ...storage.index import each_summary
from .actions import checked_form
from .app import Dashboard
from .requests import ListQuery

__all__ = ["BULK_LIMIT", "Bulk", "Item", "Outcome"]

#: Instances one bulk action changes at most (run it again for the rest).
BULK_LIMIT = 200

_VERBS = {"replay": "replayed", "skip": "skipped"}


@dataclass(frozen=True, slots=True)
class Item:
    uid: str
    instance: str
    exception: str
    #: The form value naming it: ``["uid", "instance"]`` as JSON.
    key: str


@dataclass(frozen=True, slots=True)
class Outcome:
    uid: str
    instance: str
    ok: bool
    text: str


def _key(uid: str, instance: str) -> str:
    return json.dumps([uid, instance], ensure_ascii=False)


class Bulk:
    def __init__(self, dashboard: Dashboard) -> None:
        self.d = dashboard

    async def confirm(self, request: Request) -> Response:
        action = request.query_params.get("action", "")
        if action not in _VERBS:
            return await self.d.render(request, "error.html", 400, message="action must be replay or skip")
        query = ListQuery.read(request)
        query = ListQuery("failed", query.task, query.prefix, "", query.limit)
        storage = await self.d.open_storage()
        items: list[Item] = []
        more = False
        async for summary in each_summary(storage, query.filter):
            state = await storage.load(summary.uid)
            for instance in state.ordered_instances():
                if instance.status is not Status.FAILED or (query.task and instance.task_name != query.task):
                    continue
                if len(items) == BULK_LIMIT:
                    more = True
                    break
                exception = str(instance.metadata.get(Meta.EXCEPTION_TYPE) or "")
                items.append(Item(summary.uid, instance.name, exception, _key(summary.uid, instance.name)))
            if more:
                break
        return await self.d.render(
            request,
            "bulk_confirm.html",
            action=action,
            verb=_VERBS[action],
            query=query,
            items=items,
            more=more,
            limit=BULK_LIMIT,
        )

    async def apply(self, request: Request) -> Response:
        action = request.query_params.get("action", "")
        if action not in _VERBS:
            return await self.d.render(request, "error.html", 400, message="action must be replay or skip")
        form = await checked_form(self.d, request, f"bulk-{action}")
        if isinstance(form, Response):
            return form
        storage = await self.d.open_storage()
        results: list[Outcome] = []
        for key in form.getlist("item")[:BULK_LIMIT]:
            try:
                uid, name = json.loads(key)
                if not isinstance(uid, str) or not isinstance(name, str):
                    raise ValueError
            except ValueError:
                results.append(Outcome("?", key, False, "not an item of the confirmation page"))
                continue
            manager = self.d.make_manager(storage, uid)
            try:
                if action == "replay":
                    clone = await manager.replay_failed_instance(name)
                    outcome = f"replayed: {clone.name} is {clone.status.value}"
                else:
                    await manager.skip_failed_instance(name)
                    outcome = "skipped"
            except TriggerError as exc:
                # One item's refusal (replayed meanwhile, say) leaves the others be.
                results.append(Outcome(uid, name, False, str(exc)))
            else:
                results.append(Outcome(uid, name, True, outcome))
        return await self.d.render(request, "bulk_done.html", action=action, results=results)
