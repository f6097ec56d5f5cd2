"""The dashboard in a real headless browser: Debian's chromium driven by selenium
through chromium-driver, against the app served by a real uvicorn on 127.0.0.1.

One browser and one server for the module. The tests skip only where chromium
cannot be had (no chromium or chromium-driver binary, outside CI); scripts/install
installs both. With ``ATRIGGERS_SCREENSHOTS=DIR`` the tests save the screenshots
docs/dashboard.md shows into DIR (``docs/images``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from atriggers import Status, TaskContext, TriggerManager
from atriggers.storage import SQLiteStorage
from atriggers.storage.base import Storage
from atriggers.tasks import TaskRegistry
from atriggers.web import dashboard

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    if os.environ.get("CI"):
        raise RuntimeError("CI must have chromium and chromium-driver: scripts/install installs them")
    pytest.skip("needs chromium and chromium-driver (scripts/install installs them)", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

HOSTILE_UID = "evil-<img src=x onerror=alert(1)>\u202eexe.txt"
#: How the page shows HOSTILE_UID: as text, the direction override as an escape.
HOSTILE_SHOWN = "evil-<img src=x onerror=alert(1)>\\u202eexe.txt"
HOSTILE_TEXT = "<script>alert('pwned')</script> ünïcödé \u200b🎉"
CONFIG = {
    "charge": {"after": ["order"], "run": "browser.work"},
    "ship": {"after": ["charge"], "run": "browser.work"},
    "invoice": {"after": ["order", "paid"], "run": "browser.work"},
}


def registry() -> TaskRegistry:
    tasks = TaskRegistry(entry_point_group=None)

    async def work(context: TaskContext) -> dict[str, Any]:
        order = context.trigger_kwargs.get("order", {})
        if order.get("slow"):
            await asyncio.sleep(float(order["slow"]))
        if order.get("fail"):
            raise ValueError(f"card declined for order {order.get('id')}")
        return {"ok": True, "order": order.get("id")}

    tasks.register(work, "browser.work")
    return tasks


TASKS = registry()


def manager(storage: Storage, uid: str) -> TriggerManager:
    return TriggerManager(storage, uid, tasks=TASKS)


async def populate(path: Path) -> None:
    async with SQLiteStorage(path) as storage:
        for n in range(12):
            uid = f"order-{n:03d}"
            m = manager(storage, uid)
            await m.update_configuration(CONFIG)
            await m.fire("order", {"id": n, "fail": n in (3, 7, 8)})
            await m.join()
        for n in range(2):
            m = manager(storage, f"bulk-{n}")
            await m.update_configuration(CONFIG)
            await m.fire("order", {"id": n, "fail": True})
            await m.join()
        m = manager(storage, HOSTILE_UID)
        await m.update_configuration(CONFIG)
        await m.fire("order", {"id": HOSTILE_TEXT, "fail": True, "note": HOSTILE_TEXT})
        await m.join()


def operator_only(request: Any, action: str) -> bool:
    """The application's own authorization, here a cookie its login would set."""
    return bool(request.cookies.get("operator") == "yes")


@dataclass
class Site:
    url: str
    db: Path

    def state(self, uid: str) -> dict[str, Status]:
        async def read() -> dict[str, Status]:
            async with SQLiteStorage(self.db) as storage:
                return {n: i.status for n, i in (await storage.load_all(uid)).instances.items()}

        return asyncio.run(read())


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    import uvicorn

    with tempfile.TemporaryDirectory(prefix="atriggers-dash-") as directory:
        db = Path(directory) / "dash.db"
        asyncio.run(populate(db))
        app = dashboard(f"sqlite:///{db}", authorize=operator_only, make_manager=manager, refresh=0.3)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 15
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        try:
            yield Site(f"http://127.0.0.1:{port}", db)
        finally:
            server.should_exit = True
            thread.join(15)
            sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with tempfile.TemporaryDirectory(prefix="atriggers-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for argument in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            "--window-size=1280,1200",
        ):
            options.add_argument(argument)
        driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
        try:
            driver.set_page_load_timeout(30)
            yield driver
        finally:
            driver.quit()


def wait(browser: WebDriver, condition: Callable[[WebDriver], Any], timeout: float = 15) -> Any:
    return WebDriverWait(browser, timeout, poll_frequency=0.05).until(condition)


def graph_drawn(browser: WebDriver) -> bool:
    """The page's graph image loaded and has a size (an SVG the server drew)."""
    return bool(
        browser.execute_script(
            "const g = document.getElementById('graph');"
            "return g !== null && g.complete && g.naturalWidth > 0;"
        )
    )


def screenshot(browser: WebDriver, name: str) -> None:
    directory = os.environ.get("ATRIGGERS_SCREENSHOTS")
    if directory:
        if browser.find_elements(By.CSS_SELECTOR, "img#graph"):
            wait(browser, graph_drawn)
        Path(directory).mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(Path(directory) / f"{name}.png"))


def as_operator(browser: WebDriver, site: Site, yes: bool = True) -> None:
    browser.get(site.url + "/static/dashboard.css")  # a page of the site, to set its cookie
    browser.delete_cookie("operator")
    if yes:
        browser.add_cookie({"name": "operator", "value": "yes", "path": "/"})


def uids_listed(browser: WebDriver) -> list[str]:
    return [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#sessions a.uid")]


def status_of(browser: WebDriver, instance: str) -> str | None:
    rows = browser.find_elements(By.CSS_SELECTOR, f'tr.instance[data-name="{instance}"]')
    return rows[0].get_attribute("data-status") if rows else None


def test_filter_open_replay_and_watch_it_finish(browser: WebDriver, site: Site) -> None:
    as_operator(browser, site)
    browser.get(site.url + "/")
    assert "15 session(s)" in browser.find_element(By.CSS_SELECTOR, ".totals").text
    assert len(uids_listed(browser)) == 15
    browser.find_element(By.ID, "show-failed").click()
    wait(browser, lambda b: "show=failed" in b.current_url)
    failed = uids_listed(browser)
    assert "order-003" in failed and "order-000" not in failed
    assert HOSTILE_SHOWN in failed
    screenshot(browser, "dashboard-sessions")
    browser.find_element(By.LINK_TEXT, "order-003").click()
    wait(browser, lambda b: b.find_elements(By.ID, "session-uid"))
    assert status_of(browser, "charge#0") == "failed"
    if browser.find_elements(By.CSS_SELECTOR, "img#graph"):  # Graphviz is installed
        wait(browser, graph_drawn)
    assert "card declined for order 3" in browser.find_element(By.CSS_SELECTOR, "pre.traceback").text
    screenshot(browser, "dashboard-session")
    # Replay with edited kwargs: not failing this time, and slow enough to be
    # seen running before the page's live refresh shows it finished.
    form = browser.find_element(By.CSS_SELECTOR, 'tr.instance[data-name="charge#0"] form.replay')
    form.find_element(By.TAG_NAME, "summary").click()
    kwargs = form.find_element(By.NAME, "kwargs")
    kwargs.clear()
    kwargs.send_keys('{"order": {"id": 3, "slow": 1}}')
    form.find_element(By.CSS_SELECTOR, "button.replay-button").click()
    wait(browser, lambda b: b.find_elements(By.ID, "done"))
    assert "replayed charge#0 with edited kwargs: charge#1" in browser.find_element(By.ID, "done").text
    browser.execute_script("window.stillThisPage = true")
    assert status_of(browser, "charge#1") in ("scheduled", "running")
    # The live part refreshes itself (htmx): no reload, yet the clone finishes
    # and the cascade it fired shows up.
    wait(browser, lambda b: status_of(b, "ship#0") == "finished")
    assert status_of(browser, "charge#1") == "finished" and status_of(browser, "charge#0") == "replayed"
    assert browser.execute_script("return window.stillThisPage") is True
    if browser.find_elements(By.CSS_SELECTOR, "img#graph"):  # redrawn for the new version
        wait(browser, graph_drawn)
    assert "clone of charge#0" in browser.find_element(By.CSS_SELECTOR, 'tr[data-name="charge#1"]').text
    screenshot(browser, "dashboard-replayed")
    assert site.state("order-003")["charge#1"] is Status.FINISHED


def test_hostile_kwargs_render_as_text(browser: WebDriver, site: Site) -> None:
    as_operator(browser, site)
    browser.get(site.url + "/?show=failed")
    browser.find_element(By.PARTIAL_LINK_TEXT, "evil-").click()
    wait(browser, lambda b: b.find_elements(By.ID, "session-uid"))
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - nothing ran, so no alert is open
    assert browser.find_element(By.ID, "session-uid").text == HOSTILE_SHOWN
    assert not browser.find_elements(By.CSS_SELECTOR, "main img:not(#graph), main script")
    details = browser.find_element(By.CSS_SELECTOR, 'tr.instance[data-name="charge#0"] + tr details.kwargs')
    details.find_element(By.TAG_NAME, "summary").click()
    text = details.find_element(By.TAG_NAME, "pre").text
    assert "<script>alert('pwned')</script> ünïcödé \\u200b🎉" in text


def test_an_action_without_authorization_is_refused(browser: WebDriver, site: Site) -> None:
    as_operator(browser, site, yes=False)
    browser.get(site.url + "/session?uid=order-007")
    assert status_of(browser, "charge#0") == "failed"
    assert not browser.find_elements(By.CSS_SELECTOR, "button.skip-button, button.replay-button")
    # Allowed when the page was loaded, not any more when the button is pressed.
    as_operator(browser, site)
    browser.get(site.url + "/session?uid=order-007")
    browser.delete_cookie("operator")
    browser.find_element(By.CSS_SELECTOR, 'tr.instance[data-name="charge#0"] button.skip-button').click()
    wait(browser, lambda b: b.find_elements(By.ID, "error"))
    assert "you are not allowed to skip here" in browser.find_element(By.ID, "error").text
    assert site.state("order-007")["charge#0"] is Status.FAILED


def test_posts_without_the_csrf_token_are_refused(browser: WebDriver, site: Site) -> None:
    as_operator(browser, site)
    browser.get(site.url + "/session?uid=order-008")
    form = browser.find_element(By.CSS_SELECTOR, 'tr.instance[data-name="charge#0"] form.replay')
    browser.execute_script("arguments[0].querySelector('input[name=csrf]').remove()", form)
    form.find_element(By.CSS_SELECTOR, "button.replay-button").click()
    wait(browser, lambda b: b.find_elements(By.ID, "error"))
    assert "CSRF token is missing or wrong" in browser.find_element(By.ID, "error").text
    # Another site's form (no cookie, no token) to the real server: refused too.
    forged = httpx.post(
        site.url + "/session/replay",
        data={"uid": "order-008", "instance": "charge#0"},
        cookies={"operator": "yes"},
        headers={"origin": "http://evil.example"},
    )
    assert forged.status_code == 403
    assert site.state("order-008")["charge#0"] is Status.FAILED


def test_bulk_confirmation_lists_what_will_change(browser: WebDriver, site: Site) -> None:
    as_operator(browser, site)
    browser.get(site.url + "/")
    search = browser.find_element(By.ID, "search")
    search.send_keys("bulk-")
    search.submit()
    wait(browser, lambda b: "q=bulk-" in b.current_url)
    browser.find_element(By.ID, "show-failed").click()
    wait(browser, lambda b: "show=failed" in b.current_url)
    assert uids_listed(browser) == ["bulk-0", "bulk-1"]
    browser.find_element(By.ID, "bulk-skip").click()
    wait(browser, lambda b: b.find_elements(By.ID, "bulk-items"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#bulk-items tbody tr")
    assert [[td.text for td in r.find_elements(By.TAG_NAME, "td")] for r in rows] == [
        ["bulk-0", "charge#0", "builtins.ValueError", "skipped"],
        ["bulk-1", "charge#0", "builtins.ValueError", "skipped"],
    ]
    screenshot(browser, "dashboard-bulk")
    browser.find_element(By.ID, "confirm").click()
    wait(browser, lambda b: b.find_elements(By.ID, "bulk-results"))
    assert "2 of 2 done" in browser.find_element(By.TAG_NAME, "h1").text
    assert site.state("bulk-0")["charge#0"] is Status.SKIPPED
    assert site.state("bulk-1")["charge#0"] is Status.SKIPPED
