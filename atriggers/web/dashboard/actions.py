"""The repairs: POSTs checked for CSRF and authorization, then handed to the
session's manager (`replay_failed_instance`, `skip_failed_instance`,
`mark_instance_logs_resolved`, `update_instance_status`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.datastructures import ImmutableMultiDict
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ...errors import TriggerError
from ...instance import Status
from ...manager import TriggerManager
from .app import Dashboard
from .forms import FormError, ReplayForm, SkipForm, status_field, text_field
from .requests import read_form

__all__ = ["Actions", "checked_form"]

Form = ImmutableMultiDict[str, str]


async def checked_form(d: Dashboard, request: Request, action: str) -> Form | Response:
    """The POSTed form if its CSRF token is right and `authorize` allows
    `action`; else the page that says why not (400 or 403)."""
    try:
        form = await read_form(request)
    except FormError as exc:
        return await d.render(request, "error.html", 400, message=str(exc))
    why = d.guard.check_post(request, form.get("csrf"))
    if why is not None:
        return await d.render(request, "error.html", 403, message=why)
    if not await d.guard.allows(request, action):
        message = (
            "this dashboard is read-only"
            if d.guard.read_only
            else f"you are not allowed to {action.replace('-', ' ')} here"
        )
        return await d.render(request, "error.html", 403, message=message)
    return form


Operation = Callable[[TriggerManager, Form], Awaitable[str]]


class Actions:
    def __init__(self, dashboard: Dashboard) -> None:
        self.d = dashboard

    async def _act(self, request: Request, action: str, operation: Operation) -> Response:
        form = await checked_form(self.d, request, action)
        if isinstance(form, Response):
            return form
        uid = form.get("uid", "")
        back = self.d.url(request, "session", {"uid": uid})
        try:
            text_field(form, "uid")
            storage = await self.d.open_storage()
            if (await storage.load(uid)).version == 0:
                return await self.d.render(request, "missing.html", 404, uid=uid)
            done = await operation(self.d.make_manager(storage, uid), form)
        except FormError as exc:
            return await self.d.render(request, "error.html", 400, message=str(exc), back=back)
        except TriggerError as exc:
            # The manager refused (wrong status, unknown instance, bad kwargs...):
            # nothing was changed.
            return await self.d.render(request, "error.html", 409, message=str(exc), back=back)
        target = self.d.url(request, "session", {"uid": uid, "done": done})
        return self.d.finish(request, RedirectResponse(target, 303))

    async def replay(self, request: Request) -> Response:
        async def replay(manager: TriggerManager, form: Form) -> str:
            name = text_field(form, "instance")
            current = (await manager.get_instance(name)).kwargs
            parsed = ReplayForm.read(form, current)
            clone = await manager.replay_failed_instance(parsed.instance, parsed.kwargs)
            edited = " with edited kwargs" if parsed.kwargs is not None else ""
            return f"replayed {parsed.instance}{edited}: {clone.name} is {clone.status.value}"

        return await self._act(request, "replay", replay)

    async def skip(self, request: Request) -> Response:
        async def skip(manager: TriggerManager, form: Form) -> str:
            parsed = SkipForm.read(form)
            await manager.skip_failed_instance(parsed.instance, parsed.cascade, parsed.result)
            return f"skipped {parsed.instance}" + (" (cascade fired)" if parsed.cascade else "")

        return await self._act(request, "skip", skip)

    async def resolve_logs(self, request: Request) -> Response:
        async def resolve(manager: TriggerManager, form: Form) -> str:
            name = text_field(form, "instance")
            await manager.mark_instance_logs_resolved(name)
            return f"marked the logs of {name} resolved"

        return await self._act(request, "resolve-logs", resolve)

    async def set_status(self, request: Request) -> Response:
        async def set_status(manager: TriggerManager, form: Form) -> str:
            name = text_field(form, "instance")
            status = status_field(form)
            instance = await manager.get_instance(name)
            if instance.status not in (Status.SCHEDULED, Status.RUNNING):
                raise FormError(
                    f"{name} is {instance.status.value}: only a scheduled or running (stuck) "
                    f"instance's status is set here"
                )
            await manager.update_instance_status(name, status)
            return f"set {name} from {instance.status.value} to {status.value}"

        return await self._act(request, "set-status", set_status)
