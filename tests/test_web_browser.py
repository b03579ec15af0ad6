"""The dashboard in a real browser: headless Chromium from Debian (``chromium``,
``chromium-driver``; ``make test`` installs them) driven by Selenium, against ``ferroq
dashboard`` running in its own process, with tasks run by other processes.

Skipped, loudly, where Chromium is missing; under CI=true a missing browser fails instead."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import ferroq
from procs import Procs, procs  # noqa: F401
from web_helpers import XSS

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
PAGES = ["/", "/groups", "/tasks", "/workers", "/events"]


def _require_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip)")
    if not missing:
        return
    message = (
        f"*** BROWSER TESTS SKIPPED: {', '.join(missing)} missing "
        f"(Debian: apt-get install chromium chromium-driver) ***"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(message.replace("SKIPPED", "CANNOT RUN UNDER CI"))
    print(message, file=sys.stderr)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        "--disable-extensions",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SERVER = """
from ferroq.cli import main
main(["--db", sys.argv[1], "dashboard", "--port", sys.argv[2]])
"""

# Runs tasks of the file in another process: `work` completes, `fail` goes dead at once.
RUNNER = """
db, what, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
q = ferroq.Queue(db, events="all")

@q.task(name="work")
def work(x):
    return x

@q.task(name="fail", max_attempts=1)
def fail(x):
    raise ValueError(f"bad {x}")

for i in range(n):
    q.enqueue(what, i)
ferroq.Worker(q, handle_signals=False).run(until_empty=True)
emit({"done": time.time()})
"""


class Server:
    def __init__(self, procs: Procs, db: Path) -> None:
        self.procs, self.db, self.port = procs, db, _free_port()
        self.script = procs.script("dashboard_server", SERVER)
        self.child: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        self.child = self.procs.start(self.script, self.db, self.port)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.url + "/api/overview", timeout=2).read()
                return self
            except OSError:
                if time.monotonic() > deadline or not self.child.alive():
                    raise AssertionError(f"the dashboard did not start: {self.child.describe()}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        self.child.send(15)
        self.child.wait(30)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "browser.db"
    q = ferroq.Queue(path, events="all")

    @q.task(name="work")
    def work(x: object) -> object:
        return x

    q.enqueue("work", 1)
    ferroq.Worker(q, handle_signals=False).run(until_empty=True)
    q.close()
    return path


@pytest.fixture
def server(procs: Procs, db: Path) -> Iterator[Server]:
    s = Server(procs, db).start()
    yield s
    if s.child.alive():
        s.stop()


@pytest.fixture(autouse=True)
def leave_the_page(browser: Any, server: Server) -> Iterator[None]:
    """After each test, leaves the dashboard before its server stops (a stream the server
    cuts is a console error, which the next test would read as its own)."""
    yield
    browser.get("about:blank")
    browser.get_log("browser")


def run_tasks(procs: Procs, db: Path, what: str, n: int) -> Any:
    return procs.run(procs.script("runner", RUNNER), db, what, n, timeout=60)


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Polls ``condition``; an element the page replaced meanwhile (a live region swapped in
    by a refresh) is read again on the next poll."""
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except StaleElementReferenceException:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def console_errors(browser: Any) -> list[dict[str, Any]]:
    """Console errors and CSP violations (Chromium logs each as SEVERE) since the last call."""
    return [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def state(browser: Any) -> str:
    return str(browser.find_element("id", "conn-state").text)


def open_page(browser: Any, url: str) -> None:
    browser.get(url)
    wait_for(lambda: state(browser) == "live", 15, f"{url} to go live")


def test_every_page_renders_without_console_errors_or_csp_violations(
    browser: Any, server: Server, procs: Procs, db: Path
) -> None:
    run_tasks(procs, db, "fail", 1)
    console_errors(browser)
    shots = os.environ.get("FERROQ_SCREENSHOTS")
    for path in [*PAGES, "/tasks/1", "/tasks/2", "/tasks?status=dead"]:
        open_page(browser, server.url + path)
        time.sleep(0.3)  # let a first refresh run too
        assert console_errors(browser) == [], path
        assert browser.find_element("tag name", "h1").text
        if shots:
            name = {"/": "overview", "/tasks/2": "task", "/tasks?status=dead": "tasks-dead"}.get(path, path.strip("/"))
            browser.save_screenshot(str(Path(shots) / f"dashboard-{name.replace('/', '-')}.png"))


def test_a_task_finished_by_another_process_appears_within_a_second(
    browser: Any, server: Server, procs: Procs, db: Path
) -> None:
    open_page(browser, server.url + "/tasks")
    before = len(browser.find_elements("css selector", "table.tasks tbody tr[data-id]"))
    child = run_tasks(procs, db, "fail", 1)
    done_at = child.last()["done"]
    wait_for(
        lambda: len(browser.find_elements("css selector", "table.tasks tbody tr.st-dead")) >= 1,
        10,
        "the dead task on the page",
    )
    seen_at = time.time()
    assert len(browser.find_elements("css selector", "table.tasks tbody tr[data-id]")) == before + 1
    assert seen_at - done_at < 1.0, f"shown {seen_at - done_at:.2f}s after the other process finished it"
    open_page(browser, server.url + "/")
    completed = wait_for(
        lambda: browser.find_element("css selector", '.counts [data-status="completed"]').text, 5, "the completed count"
    )
    run_tasks(procs, db, "work", 1)
    wait_for(
        lambda: browser.find_element("css selector", '.counts [data-status="completed"]').text != completed,
        1.5,
        "the overview's completed count to move",
    )
    assert console_errors(browser) == []


def test_server_restart_reconnects_without_losing_events(browser: Any, server: Server, procs: Procs, db: Path) -> None:
    open_page(browser, server.url + "/events")
    run_tasks(procs, db, "fail", 2)
    server.stop()
    wait_for(lambda: state(browser).startswith("reconnecting in "), 10, "the reconnecting state")
    assert "(attempt " in state(browser)
    assert browser.find_element("id", "conn-retry").is_displayed()
    run_tasks(procs, db, "fail", 3)  # events while the server is down
    server.start()
    wait_for(lambda: state(browser) == "live", 40, "live again")
    q = ferroq.Queue(db)
    expected = [e.id for e in q.events(after=0)]
    q.close()

    def shown() -> list[int]:
        return sorted(
            browser.execute_script(
                "return Array.from(document.querySelectorAll('#event-rows tr[data-event-id]'))"
                ".map(function (r) { return Number(r.getAttribute('data-event-id')); });"
            )
        )

    wait_for(lambda: shown() == expected, 10, "every event, once")
    # The stop ended the open streams cleanly (uvicorn cut none after its grace period).
    assert "graceful shutdown exceeded" not in server.child.stderr()
    console_errors(browser)  # the failed connections while it was down are logged; that is expected


def test_xss_payloads_never_run(browser: Any, server: Server, tmp_path: Path) -> None:
    q = ferroq.Queue(server.db, events="all")

    @q.task(name=f"evil{XSS}", resource_group=f"g{XSS}", max_attempts=1)
    def evil(x: object) -> None:
        ferroq.current_task().progress(0.5, XSS)
        raise ValueError(f"bad {XSS}")

    open_page(browser, server.url + "/events")
    tid = q.enqueue(f"evil{XSS}", XSS).id
    ferroq.Worker(q, handle_signals=False).run(until_empty=True)
    q.enqueue(f"evil{XSS}", XSS)  # pending: its group is listed on the groups page
    wait_for(lambda: browser.find_elements("css selector", "#event-rows .ev-dead"), 5, "the live dead event")
    for path in [*PAGES, f"/tasks/{tid}", "/tasks?q=evil", f"/tasks?group=g{XSS}"]:
        if path != "/events":
            open_page(browser, server.url + path)
        time.sleep(0.2)
        assert browser.execute_script("return document.querySelectorAll('main img, main script').length") == 0, path
        assert not _alert_open(browser), path
        assert console_errors(browser) == [], path
    assert XSS in browser.find_element("tag name", "main").text or "evil" in browser.page_source
    q.close()


def _alert_open(browser: Any) -> bool:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        browser.switch_to.alert.dismiss()
        return True
    except NoAlertPresentException:
        return False


def test_bulk_retry_with_typed_confirmation(browser: Any, server: Server, procs: Procs, db: Path) -> None:
    run_tasks(procs, db, "fail", 3)
    open_page(browser, server.url + "/tasks?status=dead")
    browser.find_element("css selector", '[data-bulk="retry"]').click()
    prompt = wait_for(lambda: browser.find_element("css selector", "#bulk .prompt").text, 5, "the prompt")
    assert "retry 3 dead task(s)? Type 3 to confirm" in prompt
    typed = browser.find_element("css selector", "#bulk .typed")
    typed.send_keys("2")
    browser.find_element("css selector", "#bulk .go").click()
    wait_for(lambda: "type 3 to confirm" in browser.find_element("id", "flash").text, 5, "the refusal")
    q = ferroq.Queue(db)
    assert q.counts()["dead"] == 3
    typed.clear()
    typed.send_keys("3")
    browser.find_element("css selector", "#bulk .go").click()
    wait_for(lambda: "retry: 3 of 3" in browser.find_element("id", "flash").text, 5, "the result")
    assert q.counts()["dead"] == 0 and q.counts()["pending"] == 3
    wait_for(lambda: not browser.find_elements("css selector", "table.tasks tbody tr.st-dead"), 5, "the list to empty")
    q.close()
    assert console_errors(browser) == []


def test_hidden_tab_closes_its_stream(browser: Any, server: Server) -> None:
    open_page(browser, server.url + "/workers")
    stream = "window.ferroqDashboard.stream"
    browser.execute_script(
        "Object.defineProperty(document, 'hidden', {value: true, configurable: true});"
        "document.dispatchEvent(new Event('visibilitychange'));"
    )
    assert browser.execute_script(f"return {stream}.source === null")
    assert state(browser) == "hidden"
    browser.execute_script(
        "Object.defineProperty(document, 'hidden', {value: false, configurable: true});"
        "document.dispatchEvent(new Event('visibilitychange'));"
    )
    wait_for(lambda: state(browser) == "live", 10, "live again once shown")


def test_backoff_policy(browser: Any, server: Server) -> None:
    open_page(browser, server.url + "/workers")
    delays = browser.execute_script(
        "var b = FerroqProgress.backoff; return [1,2,3,4,5,6,7,8].map(function (k) { return [b(k, 0), b(k, 1)]; });"
    )
    bases = [1, 2, 4, 8, 16, 30, 30, 30]
    for (low, high), base in zip(delays, bases):
        assert low == pytest.approx(base * 0.9) and high == pytest.approx(base * 1.1)


def test_task_progress_client(browser: Any, server: Server, procs: Procs, db: Path) -> None:
    """ferroq-progress.js on a task that does not exist and one that completes."""
    open_page(browser, server.url + "/workers")
    browser.execute_script("""
        window.seen = [];
        FerroqProgress.watchTask(document.body.getAttribute('data-root'), 999, {
          onError: function (e) { window.seen.push(['error', e.status]); },
          onState: function (s) { window.seen.push(['state', s]); }});
        FerroqProgress.watchTask('', 1, {
          onProgress: function (f) { window.seen.push(['progress', f]); },
          onDone: function (d) { window.seen.push(['done', d.status, d.result]); }});
    """)
    seen = wait_for(
        lambda: (lambda s: s if ["error", 404] in s and any(x[0] == "done" for x in s) else None)(
            browser.execute_script("return window.seen")
        ),
        10,
        "both streams to end",
    )
    assert ["done", "completed", 1] in seen and ["progress", 1] in seen


def test_inline_script_is_blocked_and_reported(browser: Any, server: Server) -> None:
    """The CSP holds in the browser, and a violation is a console error: what the other tests
    check for is really seen."""
    open_page(browser, server.url + "/tasks")
    console_errors(browser)
    browser.execute_script(
        "var s = document.createElement('script'); s.textContent = 'window.ran = 1;';document.body.appendChild(s);"
    )
    time.sleep(0.2)
    assert browser.execute_script("return window.ran === undefined")
    assert any("Content Security Policy" in e["message"] for e in console_errors(browser))


def test_an_opened_circuit_shows_within_a_second(browser: Any, server: Server) -> None:
    q = ferroq.Queue(server.db)
    q.group("api", breaker=ferroq.CircuitBreaker(failure_threshold=3))
    q.task(name="call", resource_group="api")(lambda: None)
    q.enqueue("call")
    open_page(browser, server.url + "/groups")
    wait_for(lambda: browser.find_elements("css selector", 'tr[data-group="api"] .circuit-closed'), 5, "the group")
    q.circuit("api").open(reason="upstream down")
    opened = time.monotonic()
    wait_for(lambda: browser.find_elements("css selector", 'tr[data-group="api"] .circuit-open'), 5, "the open circuit")
    assert time.monotonic() - opened < 1.0
    assert "upstream down" in browser.find_element("css selector", 'tr[data-group="api"]').text
    q.close()


def test_offline_after_the_last_attempt_and_retry_now(browser: Any, server: Server) -> None:
    open_page(browser, server.url + "/workers")
    browser.execute_script("""
        window.states = [];
        window.s = new FerroqProgress.LiveStream('/nowhere', {}, {maxAttempts: 1, closeWhenHidden: false,
          onState: function (name, info) { window.states.push(name + ':' + (info.attempt || '')); }});
    """)
    wait_for(lambda: "offline:1" in browser.execute_script("return window.states"), 10, "offline")
    states = browser.execute_script("return window.states")
    assert states[0] == "reconnecting:1" and states[-1] == "offline:1", states
    seen = len(states)
    browser.execute_script("window.s.retryNow();")
    wait_for(lambda: "reconnecting:1" in browser.execute_script("return window.states")[seen:], 5, "a new attempt")
    browser.execute_script("window.s.close();")
    console_errors(browser)  # /nowhere's 404s are logged: expected here
