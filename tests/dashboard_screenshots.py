"""Screenshots of every dashboard page for the README (docs/img/): a demo file with groups,
failures, progress and a live worker, ``ferroq dashboard`` on it, headless Chromium.

    .venv/bin/python tests/dashboard_screenshots.py docs/img
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

WORKER = """
import sys, time, ferroq
q = ferroq.Queue(sys.argv[1], events="all")

@q.task(name="reports.render", resource_group="reports")
def render(pages):
    for page in range(pages):
        ferroq.current_task().progress((page + 1) / pages, f"page {page + 1} of {pages}")
        time.sleep(0.2 if pages < 50 else 5)
    return {"pdf": f"report-{pages}.pdf"}

@q.task(name="payments.charge", resource_group="payments", max_attempts=1)
def charge(order, amount):
    if order % 4 == 0:
        raise ConnectionError(f"payment gateway timed out for order {order}")
    return {"order": order, "charged": amount}

@q.task(name="emails.send", resource_group="emails")
def send(to, template):
    return "sent"

q.group("payments", breaker=ferroq.CircuitBreaker(failure_threshold=3, window=60, open_for=600))
q.group("emails", throttle=ferroq.Throttle(rate=20, max_concurrency=4, adaptive=True))
if sys.argv[2] == "fill":
    for i in range(1, 41):
        charge.enqueue(i, 10 * i)
    for i in range(60):
        send.enqueue(f"user{i}@example.com", "welcome")
    for n in (3, 5, 8):
        render.enqueue(n)
    ferroq.Worker(q, handle_signals=False).run(until_idle=True)
    for i in range(41, 49):
        charge.enqueue(i, 5)
    for i in range(30):
        send.enqueue(f"later{i}@example.com", "digest")
else:
    render.enqueue(100)
    ferroq.Worker(q, handle_signals=False, groups=["reports"]).run()
"""


def main(out: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ferroq-shots-"))
    db, script = work / "shop.db", work / "worker.py"
    script.write_text(WORKER)
    subprocess.run([sys.executable, str(script), str(db), "fill"], check=True, cwd=work)
    worker = subprocess.Popen([sys.executable, str(script), str(db), "run"], cwd=work)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "ferroq.cli", "--db", str(db), "dashboard", "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,860"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/api/overview", timeout=2)
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(3)  # the long report is running, with progress
        running = [t["id"] for t in _json(url + "/api/tasks?status=running")["tasks"]]
        pages = {
            "overview": "/",
            "groups": "/groups",
            "tasks": "/tasks",
            "events": "/events",
            "workers": "/workers",
            "task": f"/tasks/{running[0] if running else 1}",
        }
        for name, path in pages.items():
            driver.get(url + path)
            time.sleep(1.5)
            driver.save_screenshot(str(out / f"dashboard-{name}.png"))
            print("wrote", out / f"dashboard-{name}.png")
    finally:
        driver.quit()
        server.terminate()
        worker.terminate()
        server.wait()
        worker.wait()
        shutil.rmtree(work, ignore_errors=True)


def _json(url: str) -> dict:  # type: ignore[type-arg]
    import json

    return json.loads(urllib.request.urlopen(url, timeout=5).read())  # type: ignore[no-any-return]


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img"))
