"""``ferroq worker`` (the CLI, real processes) running a periodic schedule: two workers on
one file enqueue each tick once, and one of them runs it. The workers' wall clocks are set
(libfaketime, an offset per process; the monotonic clock is left alone) a few seconds
before a minute boundary, so an every-minute schedule ticks without waiting for one."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ferroq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import Procs, child_env, procs, wait_until  # noqa: F401

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not LIBFAKETIME.exists(), reason="libfaketime not installed (Debian: faketime; `make system-deps` installs it)"
    ),
]

APP = """
import os
import ferroq

q = ferroq.Queue("periodic.db")


@q.periodic("* * * * *")
def every_minute():
    ctx = ferroq.current_task()
    fd = os.open("runs.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, f"{ctx.id} {os.getpid()}\\n".encode())
    os.close(fd)
"""

#: ``ferroq ARGS...`` in a process the procs fixture owns (its output in files, killed at the end).
CLI = """
from ferroq.cli import main
main(sys.argv[1:], prog_name="ferroq")
"""


def faked(offset_s: int) -> dict[str, str]:
    return {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME": f"{offset_s:+d}",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_NO_CACHE": "1",
    }


def offset_to_just_before_a_minute(runway: float) -> int:
    """Seconds to add to the wall clock so that it reads ``runway`` seconds (or up to one
    more) before a whole minute."""
    now = time.time()
    boundary = math.ceil((now + runway + 1) / 60) * 60
    return int(boundary - runway - now)


def runs(tmp_path: Path) -> list[tuple[int, int]]:
    log = tmp_path / "runs.log"
    if not log.exists():
        return []
    return [(int(a), int(b)) for a, b in (line.split() for line in log.read_text().splitlines())]


@pytest.mark.timeout(180)
def test_two_cli_workers_enqueue_a_tick_once_and_run_it_once(tmp_path: Path, procs: Procs) -> None:
    (tmp_path / "app.py").write_text(APP)
    ferroq.Queue(tmp_path / "periodic.db").close()  # the worker does not create one
    cli = procs.script("cli", CLI)
    env = faked(offset_to_just_before_a_minute(runway=5))
    workers = [
        procs.start(cli, "worker", "app:q", "--concurrency", "2", "--shutdown-grace", "5", env=env, label=f"worker-{i}")
        for i in range(2)
    ]
    wait_until(lambda: runs(tmp_path), timeout=60, what="the first tick's run")
    # Both schedulers poll every 0.1 s: give the other one time to try the same tick.
    time.sleep(2)
    for w in workers:
        assert w.alive, w.describe()
        w.send(15)  # SIGTERM: a clean stop
    for w in workers:
        assert w.wait(60) == 0, w.describe()
        assert "Traceback" not in w.stderr(), w.describe()
    (task_id, _pid), *more = runs(tmp_path)
    assert more == [], f"the tick ran more than once: {runs(tmp_path)}"
    q = ferroq.Queue(tmp_path / "periodic.db")
    tasks = q.list(name="app.every_minute")
    assert [(t.id, t.status) for t in tasks] == [(task_id, "completed")]
    assert tasks[0].unique_key is not None
    listed = subprocess.run(
        [sys.executable, "-m", "ferroq.cli", "--db", str(tmp_path / "periodic.db"), "schedules", "-o", "json"],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    (schedule,) = json.loads(listed.stdout)
    assert (schedule["name"], schedule["cron"], schedule["last_task_id"]) == ("app.every_minute", "* * * * *", task_id)
