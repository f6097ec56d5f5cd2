"""The operator dashboard over HTTP (httpx against the ASGI app, a real SQLite
file): pages, escaping, the repairs, CSRF and authorization. The browser tests
are in test_dashboard_browser.py."""

from __future__ import annotations

import asyncio
import html
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from atriggers import Status, TaskContext, TriggerManager
from atriggers.graph import build_graph
from atriggers.storage import MemoryStorage, SQLiteStorage
from atriggers.storage.base import Storage
from atriggers.tasks import TaskRegistry
from atriggers.web import dashboard
from atriggers.web.dashboard.graphs import GraphRenderer, columns
from atriggers.web.dashboard.views import duration, visible

HOSTILE = "<script>alert('x')</script>\u202e\u200b🎉 \"quote\" & ampersand"
CONFIG = {
    "t": {"after": ["go"], "run": "dash.work"},
    "later": {"after": ["go", "never"], "run": "dash.work"},
}


def registry() -> TaskRegistry:
    tasks = TaskRegistry(entry_point_group=None)

    async def work(context: TaskContext) -> dict[str, Any]:
        if context.trigger_kwargs.get("go", {}).get("fail"):
            raise ValueError("asked to fail <b>bold</b>")
        return {"done": True}

    tasks.register(work, "dash.work")
    return tasks


TASKS = registry()


def manager(storage: Storage, uid: str) -> TriggerManager:
    return TriggerManager(storage, uid, tasks=TASKS)


async def make_session(storage: Storage, uid: str, fail: bool, **kwargs: Any) -> None:
    m = manager(storage, uid)
    await m.update_configuration(CONFIG)
    await m.fire("go", {"fail": fail, **kwargs})
    await m.join()


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    async with SQLiteStorage(tmp_path / "dash.db") as storage:
        await make_session(storage, "ok-1", False)
        await make_session(storage, "bad-1", True)
        await make_session(storage, "bad-2", True)
        await make_session(storage, HOSTILE, True, text=HOSTILE)
        yield storage


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dash.test")


def allow_all(request: Any, action: str) -> bool:
    return True


def token(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "no CSRF token in the page"
    return found.group(1)


def uids(page: str) -> list[str]:
    return [html.unescape(u) for u in re.findall(r'<a class="uid" href="[^"]*"><bdi>(.*?)</bdi>', page)]


async def test_sessions_list_filters_and_pages(storage: SQLiteStorage) -> None:
    async with client(dashboard(storage)) as c:
        page = (await c.get("/")).text
        assert uids(page) == sorted(["ok-1", "bad-1", "bad-2", visible(HOSTILE)])
        assert "4 session(s)" in page and "3 failed" in page
        failed = (await c.get("/", params={"show": "failed"})).text
        assert uids(failed) == sorted(["bad-1", "bad-2", visible(HOSTILE)])
        first = (await c.get("/", params={"limit": "2"})).text
        assert len(uids(first)) == 2
        after = re.search(r'id="next-page" href="([^"]+)"', first)
        assert after is not None
        second = (await c.get(html.unescape(after.group(1)))).text
        assert uids(first) + uids(second) == uids(page)
        assert uids((await c.get("/", params={"q": "bad"})).text) == ["bad-1", "bad-2"]
        # A whole uid opens its session.
        found = await c.get("/", params={"q": "bad-1"})
        assert found.status_code == 303 and found.headers["location"] == "/session?uid=bad-1"
        assert uids((await c.get("/", params={"task": "nosuch"})).text) == []
        assert uids((await c.get("/", params={"show": "stuck"})).text) == []
        assert uids((await c.get("/", params={"show": "waiting", "prefix": "ok"})).text) == ["ok-1"]


async def test_live_fragments_answer_204_until_something_changes(storage: SQLiteStorage) -> None:
    async with client(dashboard(storage)) as c:
        live = await c.get("/sessions/live")
        digest = re.search(r"digest=(\w+)", live.text)
        assert live.status_code == 200 and digest is not None
        assert (await c.get("/sessions/live", params={"digest": digest.group(1)})).status_code == 204
        version = (await storage.load("ok-1")).version
        assert (await c.get("/session/live", params={"uid": "ok-1", "version": version})).status_code == 204
        await manager(storage, "ok-1").fire("other", {})
        changed = await c.get("/session/live", params={"uid": "ok-1", "version": version})
        assert changed.status_code == 200 and f"version={version + 1}" in changed.text
        assert (await c.get("/sessions/live", params={"digest": digest.group(1)})).status_code == 200


async def test_hostile_text_is_escaped_everywhere(storage: SQLiteStorage) -> None:
    async with client(dashboard(storage, authorize=allow_all)) as c:
        pages = [
            (await c.get("/")).text,
            (await c.get("/session", params={"uid": HOSTILE})).text,
            (await c.get("/bulk", params={"action": "replay"})).text,
            (await c.get("/", params={"q": HOSTILE[:10]})).text,
        ]
    for page in pages:
        # Hidden inputs carry the uid back exactly as it is; nothing shows them.
        page = re.sub(r'<input type="hidden"[^>]*>', "", page)
        assert "<script>alert" not in page
        assert "\u202e" not in page and "\u200b" not in page  # shown as escapes instead
        assert "<b>bold</b>" not in page
    session = pages[1]
    assert "&lt;script&gt;alert(" in session and "\\u202e" in session and "🎉" in session
    assert "&lt;b&gt;bold&lt;/b&gt;" in session  # the exception message, as text


async def test_session_page_shows_instances_graph_and_kwargs(storage: SQLiteStorage) -> None:
    async with client(dashboard(storage)) as c:
        page = (await c.get("/session", params={"uid": "bad-1"})).text
        assert 'data-name="t#0" data-status="failed"' in page
        assert 'data-name="later#0" data-status="unstarted"' in page
        assert "builtins.ValueError" in page and "Traceback (most recent call last)" in page
        assert "UTC" in page and "ran " in page
        # Why: the failure, and the trigger the other task still waits for.
        assert 'class="badge code-failed">failed</span> <bdi>t#0</bdi>' in page
        assert 'class="badge code-waiting">waiting</span> <bdi>later#0</bdi>' in page
        assert "never" in page.split('id="explanations"')[1].split("</section>")[0]
        # Read-only: no repair offered.
        assert "Replay</button>" not in page and "read-only" in page
        graph = await c.get("/session/graph.svg", params={"uid": "bad-1"})
        assert graph.status_code == 200 and graph.headers["content-type"] == "image/svg+xml"
        assert b"<svg" in graph.content and b"#f8d7da" in graph.content  # the failed colour
        assert "script-src 'self'" in (await c.get("/")).headers["content-security-policy"]
        missing = await c.get("/session", params={"uid": "nosuch"})
        assert missing.status_code == 404 and "No such session" in missing.text
        assert (await c.get("/status.css")).text.count(".status-") >= 9


async def test_graph_without_graphviz_is_drawn_in_html(storage: SQLiteStorage) -> None:
    app = dashboard(storage)
    app.state.dashboard.graphs = GraphRenderer(dot=None)
    async with client(app) as c:
        page = (await c.get("/session", params={"uid": "bad-1"})).text
    assert 'class="columns" id="graph"' in page and "node-task status-failed" in page
    state = await storage.load_all("bad-1")
    laid = columns(build_graph(state.tasks, state))
    assert [[n.name for n in column] for column in laid.columns] == [["go", "never"], ["t", "later"]]


async def test_replay_skip_and_the_other_repairs(storage: SQLiteStorage) -> None:
    async with client(dashboard(storage, authorize=allow_all, make_manager=manager)) as c:
        page = (await c.get("/session", params={"uid": "bad-1"})).text
        assert "Replay</button>" in page and "Skip</button>" in page
        csrf = token(page)
        # Edited kwargs are validated: bad JSON changes nothing.
        bad = await c.post(
            "/session/replay", data={"csrf": csrf, "uid": "bad-1", "instance": "t#0", "kwargs": "{nope"}
        )
        assert bad.status_code == 400 and "not valid JSON" in bad.text
        shape = await c.post(
            "/session/replay", data={"csrf": csrf, "uid": "bad-1", "instance": "t#0", "kwargs": '{"go": 3}'}
        )
        assert shape.status_code == 400 and "JSON object" in shape.text
        assert (await storage.load("bad-1")).instances["t#0"].status is Status.FAILED
        done = await c.post(
            "/session/replay",
            data={"csrf": csrf, "uid": "bad-1", "instance": "t#0", "kwargs": '{"go": {"fail": false}}'},
        )
        assert done.status_code == 303 and "replayed" in done.headers["location"]
        await asyncio.wait_for(storage.drain(), 10)
        state = await storage.load_all("bad-1")
        assert state.instances["t#0"].status is Status.REPLAYED
        assert state.instances["t#1"].status is Status.FINISHED
        assert state.instances["t#1"].kwargs == {"go": {"fail": False}}
        # Replaying it again is refused by the manager, with nothing changed.
        again = await c.post("/session/replay", data={"csrf": csrf, "uid": "bad-1", "instance": "t#0"})
        assert again.status_code == 409 and "replayed" in again.text
        # Skip with a cascade and a result.
        skipped = await c.post(
            "/session/skip",
            data={
                "csrf": csrf,
                "uid": "bad-2",
                "instance": "t#0",
                "cascade": "on",
                "result": '{"why": "ops"}',
            },
        )
        assert skipped.status_code == 303
        instance = (await storage.load("bad-2", ["t#0"])).instances["t#0"]
        assert instance.status is Status.SKIPPED and instance.result == {"why": "ops"}
        # Logs resolved, and a stuck instance's status set by hand.
        resolved = await c.post(
            "/session/resolve-logs", data={"csrf": csrf, "uid": HOSTILE, "instance": "t#0"}
        )
        assert resolved.status_code == 303
        assert (await storage.load(HOSTILE)).instances["t#0"].metadata["logsResolved"] is True
        refused = await c.post(
            "/session/set-status",
            data={"csrf": csrf, "uid": HOSTILE, "instance": "t#0", "status": "finished"},
        )
        assert refused.status_code == 400 and "only a scheduled or running" in refused.text


async def test_set_status_of_a_stuck_instance(tmp_path: Path) -> None:
    async with SQLiteStorage(tmp_path / "stuck.db") as storage:
        from atriggers import _rules as rules
        from atriggers.config import parse_configuration
        from atriggers.state import Draft

        tasks = parse_configuration(CONFIG)
        for apply in (lambda d: rules.configure(d, tasks), lambda d: rules.fire(d, "go", {})):
            state = await storage.load("stuck")
            draft = Draft(state)
            apply(draft)
            await storage.store("stuck", state.version, draft.changes())
        async with client(dashboard(storage, authorize=allow_all, make_manager=manager)) as c:
            stuck = (await c.get("/", params={"show": "stuck"})).text
            assert uids(stuck) == ["stuck"]
            page = (await c.get("/session", params={"uid": "stuck"})).text
            assert "Set status</button>" in page
            wrong = await c.post(
                "/session/set-status",
                data={"csrf": token(page), "uid": "stuck", "instance": "t#0", "status": "nosuch"},
            )
            assert wrong.status_code == 400 and "unknown status" in wrong.text
            done = await c.post(
                "/session/set-status",
                data={"csrf": token(page), "uid": "stuck", "instance": "t#0", "status": "failed"},
            )
            assert done.status_code == 303
        assert (await storage.load("stuck")).instances["t#0"].status is Status.FAILED


async def test_posts_without_the_csrf_token_or_authorization_are_refused(storage: SQLiteStorage) -> None:
    def only_skip(request: Any, action: str) -> bool:
        return action == "skip"

    async def operator_header(request: Any, action: str) -> bool:
        return bool(request.headers.get("x-operator") == "yes")

    form = {"uid": "bad-1", "instance": "t#0"}
    async with client(dashboard(storage, authorize=only_skip, make_manager=manager)) as c:
        page = (await c.get("/session", params={"uid": "bad-1"})).text
        assert "Skip</button>" in page and "Replay</button>" not in page
        csrf = token(page)
        assert (await c.post("/session/skip", data=form)).status_code == 403
        assert (await c.post("/session/skip", data={**form, "csrf": "x.y"})).status_code == 403
        forged = csrf.split(".")[0] + "." + "0" * 64
        c.cookies.set("atriggers_csrf", forged)
        assert (await c.post("/session/skip", data={**form, "csrf": forged})).status_code == 403
        c.cookies.set("atriggers_csrf", csrf)
        other_site = await c.post(
            "/session/skip", data={**form, "csrf": csrf}, headers={"origin": "http://evil"}
        )
        assert other_site.status_code == 403 and "another site" in other_site.text
        refused = await c.post("/session/replay", data={**form, "csrf": csrf})
        assert refused.status_code == 403 and "not allowed to replay" in refused.text
        json_body = await c.post("/session/skip", json={**form, "csrf": csrf})
        assert json_body.status_code == 400
    assert (await storage.load("bad-1")).instances["t#0"].status is Status.FAILED
    async with client(dashboard(storage)) as c:
        csrf = token((await c.get("/bulk", params={"action": "replay"})).text)
        read_only = await c.post("/session/replay", data={**form, "csrf": csrf})
        assert read_only.status_code == 403 and "read-only" in read_only.text
    async with client(dashboard(storage, authorize=operator_header)) as c:
        csrf = token((await c.get("/bulk", params={"action": "replay"})).text)
        assert (await c.post("/session/skip", data={**form, "csrf": csrf})).status_code == 403
    assert (await storage.load("bad-1")).instances["t#0"].status is Status.FAILED


async def test_bulk_replay_changes_exactly_what_was_confirmed(storage: SQLiteStorage) -> None:
    async with client(dashboard(storage, authorize=allow_all, make_manager=manager)) as c:
        confirm = await c.get("/bulk", params={"action": "replay", "prefix": "bad"})
        assert confirm.status_code == 200
        items = re.findall(r'name="item" value="([^"]+)"', confirm.text)
        assert len(items) == 2 and "Replay 2 failed instance(s)?" in confirm.text
        # Meanwhile bad-2 is skipped by someone else: its item is refused, the other done.
        await manager(storage, "bad-2").skip_failed_instance("t#0")
        data = {"csrf": token(confirm.text), "item": [html.unescape(i) for i in items]}
        done = await c.post("/bulk/apply?action=replay", data=data)
        assert done.status_code == 200 and "1 of 2 done" in done.text
        await asyncio.wait_for(storage.drain(), 10)
    assert (await storage.load_all("bad-1")).instances["t#0"].status is Status.REPLAYED
    assert (await storage.load_all(HOSTILE)).instances["t#0"].status is Status.FAILED  # not confirmed


async def test_no_password_is_rendered() -> None:
    class Secretive(MemoryStorage):
        @property
        def url(self) -> str:
            return "redis://operator:hunter2@db.internal:6379/0"

    async with Secretive() as storage:
        await make_session(storage, "s", True)
        async with client(dashboard(storage, authorize=allow_all)) as c:
            for path in ("/", "/session?uid=s", "/bulk?action=skip"):
                page = (await c.get(path)).text
                assert "hunter2" not in page and "operator:***@db.internal" in page


async def test_a_failing_storage_gets_a_page_saying_so(storage: SQLiteStorage, tmp_path: Path) -> None:
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(tmp_path / "dash.db")) as db, db:
        db.execute("UPDATE atriggers_sessions SET counts = 'garbage' WHERE uid = 'bad-1'")
    async with client(dashboard(storage)) as c:
        page = await c.get("/")
    assert page.status_code == 503
    assert "session &#39;bad-1&#39;: the stored session header is corrupt" in page.text


def test_pretty_json_reads_back() -> None:
    import json

    from atriggers.web.dashboard.views import pretty_json

    value = {"k": HOSTILE + "\U000f0000\x01", "n": [1, 2.5, None]}
    text = pretty_json(value)
    assert json.loads(text) == value and "\u202e" not in text and "\U000f0000" not in text


def test_durations_and_visible_text() -> None:
    assert duration(0.25) == "250 ms" and duration(4.2) == "4.2 s"
    assert duration(185) == "3 min 5 s" and duration(7800) == "2 h 10 min"
    assert duration(3 * 86400 + 4 * 3600) == "3 d 4 h"
    assert visible("a\u202eb\u200bc\x00") == "a\\u202eb\\u200bc\\u0000"
    assert visible("héllo 🎉") == "héllo 🎉"


def test_dashboard_without_its_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jinja2", None)
    monkeypatch.delitem(sys.modules, "atriggers.web.dashboard.app", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'atriggers\[dashboard\]'"):
        dashboard("memory://")


async def test_an_authorize_that_raises_refuses(
    storage: SQLiteStorage, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(request: Any, action: str) -> bool:
        raise RuntimeError("the user database is down")

    async with client(dashboard(storage, authorize=broken)) as c:
        page = (await c.get("/session", params={"uid": "bad-1"})).text
        assert "Replay</button>" not in page
        csrf = token((await c.get("/bulk", params={"action": "replay"})).text)
        refused = await c.post("/session/replay", data={"csrf": csrf, "uid": "bad-1", "instance": "t#0"})
    assert refused.status_code == 403
    assert "the user database is down" in caplog.text
    assert (await storage.load("bad-1")).instances["t#0"].status is Status.FAILED


async def test_behind_a_proxy_the_forwarded_host_is_the_origin(storage: SQLiteStorage) -> None:
    async with client(dashboard(storage, authorize=allow_all, make_manager=manager)) as c:
        csrf = token((await c.get("/session", params={"uid": "bad-1"})).text)
        done = await c.post(
            "/session/skip",
            data={"csrf": csrf, "uid": "bad-1", "instance": "t#0"},
            headers={"origin": "https://ops.example.com", "x-forwarded-host": "ops.example.com"},
        )
    assert done.status_code == 303
