"""Reading requests: query parameters and urlencoded forms, bounded and checked."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl

from starlette.datastructures import ImmutableMultiDict
from starlette.requests import Request

from ...storage.index import MAX_PAGE, SessionFilter
from .forms import FormError

__all__ = ["ListQuery", "read_form"]

#: Largest form body accepted (kwargs are edited as JSON in forms).
MAX_FORM = 2_000_000

#: The list's tabs and the filter each one applies.
SHOWS = ("all", "failed", "stuck", "waiting")


async def read_form(request: Request) -> ImmutableMultiDict[str, str]:
    """The request's urlencoded form (the only kind the dashboard's pages send)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind != "application/x-www-form-urlencoded":
        raise FormError("expected a form (application/x-www-form-urlencoded)")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            raise FormError(f"the form is larger than {MAX_FORM:,} bytes")
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise FormError("the form is not UTF-8") from None
    return ImmutableMultiDict(parse_qsl(text, keep_blank_values=True))


@dataclass(frozen=True, slots=True)
class ListQuery:
    """What the sessions list shows: a tab, a task, a uid prefix, a page."""

    show: str = "all"
    task: str = ""
    prefix: str = ""
    after: str = ""
    limit: int = 50

    @classmethod
    def read(cls, request: Request) -> ListQuery:
        params = request.query_params
        show = params.get("show", "all")
        if show not in SHOWS:
            show = "all"
        try:
            limit = max(1, min(MAX_PAGE, int(params.get("limit", "50"))))
        except ValueError:
            limit = 50
        return cls(show, params.get("task", ""), params.get("prefix", ""), params.get("after", ""), limit)

    @property
    def filter(self) -> SessionFilter:
        return SessionFilter(
            failed=self.show == "failed",
            stuck=self.show == "stuck",
            waiting=self.show == "waiting",
            task=self.task or None,
            prefix=self.prefix,
        )

    def params(self, **changes: object) -> dict[str, object]:
        """The query string's parameters (with `changes`), defaults left out."""
        values: dict[str, object] = {
            "show": self.show if self.show != "all" else "",
            "task": self.task,
            "prefix": self.prefix,
            "after": self.after,
            "limit": self.limit if self.limit != 50 else "",
        }
        values.update(changes)
        return values
