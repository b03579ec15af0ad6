"""The README's "Running in production" snippets run as written: the systemd unit's ExecStart
and the Docker service's command start a worker that drains the queue and stops cleanly on
SIGTERM within the stop timeout they set; the health probe's exit codes are the ones listed.
Paths of the host (/srv/shop, /data) are mapped into a temporary directory."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ferroq
from procs import child_env, wait_until

# Real worker processes: seconds each (`pytest -m 'not slow'` skips them).
pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parent.parent / "README.md"
FERROQ = str(Path(sys.executable).with_name("ferroq"))

APP = """
import time
import ferroq

queue = ferroq.Queue("shop.db")

@queue.task(name="slow_add")
def slow_add(a: int, b: int) -> int:
    time.sleep(0.05)
    return a + b
"""


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"### {title}\n")
    end = text.find("\n## ", start)
    nxt = text.find("\n### ", start + 1)
    return text[start : min(e for e in (end, nxt) if e != -1)]


def block(title: str, lang: str) -> str:
    found = re.findall(rf"```{lang}\n(.*?)```", section(title), re.S)
    assert len(found) == 1, f"one {lang} block under {title!r}"
    return str(found[0])


def make_app(root: Path) -> Path:
    """The app package ``shop.tasks`` in ``root``; its queue's file in ``root/data``."""
    (root / "shop").mkdir(parents=True)
    (root / "shop" / "__init__.py").write_text("")
    (root / "shop" / "tasks.py").write_text(textwrap.dedent(APP))
    (root / "data").mkdir()
    return root


def enqueue(db: Path, n: int) -> ferroq.Queue:
    q = ferroq.Queue(db, durability="normal")
    add = q.task(name="slow_add")(lambda a, b: a + b)
    q.enqueue_many([add.call(i, 1) for i in range(n)])
    return q


def grace_of(argv: list[str]) -> float:
    return float(argv[argv.index("--shutdown-grace") + 1]) if "--shutdown-grace" in argv else 30.0


def drain_then_sigterm(argv: list[str], cwd: Path, q: ferroq.Queue, stop_timeout: float, log: Path) -> None:
    """Starts the worker as written, waits until it ran every task, SIGTERMs it and expects
    a clean exit within the stop timeout the unit (or service) gives it."""
    with open(log, "w") as err:
        worker = subprocess.Popen(argv, cwd=cwd, env=child_env(), stderr=err)
        try:
            wait_until(lambda: q.counts()["completed"] == 20 or worker.poll() is not None, 60, "the queue drained")
            assert worker.poll() is None, log.read_text()
            assert any(w.alive for w in q.workers())
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(stop_timeout) == 0, log.read_text()
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert q.counts()["completed"] == 20


def test_the_systemd_units_exec_start_runs_and_stops_within_its_timeout(tmp_path: Path) -> None:
    unit = block("systemd", "ini")
    fields = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    root = make_app(tmp_path / "srv" / "shop")
    argv = shlex.split(fields["ExecStart"].replace("/srv/shop", str(root)))
    assert argv[0] == f"{root}/.venv/bin/ferroq"
    argv[0] = FERROQ
    assert fields["WorkingDirectory"] == "/srv/shop"
    timeout = float(fields["TimeoutStopSec"])
    assert timeout > grace_of(argv), "systemd would SIGKILL running tasks before the grace ends"
    q = enqueue(root / "data" / "shop.db", 20)
    drain_then_sigterm(argv, root, q, timeout, tmp_path / "worker.log")
    assert not (root / "shop.db").exists(), "--db, not the module's relative path"


def test_the_docker_services_command_runs_and_its_grace_period_covers_the_workers(tmp_path: Path) -> None:
    compose = block("Docker", "yaml")
    command = json.loads(re.search(r"command: (\[.*\])", compose).group(1))  # type: ignore[union-attr]
    period = re.search(r"stop_grace_period: (\d+)s", compose)
    assert period is not None
    assert float(period.group(1)) > grace_of(command), "Docker would SIGKILL running tasks"
    health = json.loads(re.search(r"test: (\[.*\])", compose).group(1))  # type: ignore[union-attr]
    assert command[0] == "ferroq" and health[:2] == ["CMD", "ferroq"]
    root = make_app(tmp_path / "app")
    data = tmp_path / "data"
    data.mkdir()
    argv = [FERROQ] + [a.replace("/data", str(data)) for a in command[1:]]
    probe = [FERROQ] + [a.replace("/data", str(data)) for a in health[2:]]
    q = enqueue(data / "shop.db", 20)
    with open(tmp_path / "worker.log", "w") as err:
        worker = subprocess.Popen(argv, cwd=root, env=child_env(), stderr=err)
        try:
            wait_until(
                lambda: q.counts()["completed"] == 20 and any(w.alive for w in q.workers()),
                60,
                "the queue drained by a live worker",
            )
            done = subprocess.run(probe, env=child_env(), capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stdout + done.stderr
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(float(period.group(1))) == 0, (tmp_path / "worker.log").read_text()
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    done = subprocess.run(probe, env=child_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "workers" in done.stdout, "no live worker: unhealthy"


def test_the_health_probe_exit_codes(tmp_path: Path) -> None:
    line = block("Health probe", "sh").strip()
    root = make_app(tmp_path / "srv" / "shop")
    argv = shlex.split(line.replace("/srv/shop", str(root)))
    assert argv[0] == "ferroq"
    argv[0] = FERROQ

    def probe(*extra: str) -> int:
        return subprocess.run([*argv, *extra], env=child_env(), capture_output=True, timeout=60).returncode

    assert probe() == 3, "no database yet"
    q = enqueue(root / "data" / "shop.db", 20)
    assert probe() == 1, "no live worker"
    with open(tmp_path / "worker.log", "w") as err:
        worker = subprocess.Popen(
            [FERROQ, "worker", "shop.tasks:queue", "--db", str(root / "data" / "shop.db")],
            cwd=root,
            env=child_env(),
            stderr=err,
        )
        try:
            wait_until(
                lambda: q.counts()["completed"] == 20 and any(w.alive for w in q.workers()),
                60,
                "a live worker drained the queue",
            )
            assert probe() == 0
            assert probe("--queue", "nosuchq") == 4
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)


@pytest.mark.parametrize("title", ["Install"])
def test_the_install_commands_name_the_make_target(title: str) -> None:
    """`make wheel-smoke` (run by `make test`) builds and installs the wheel; here only that
    the README's commands are the ones it runs."""
    text = block(title, "sh")
    assert "make wheel" in text and "pip install dist/ferroq-*.whl" in text
    makefile = (README.parent / "Makefile").read_text()
    assert "maturin build --release --quiet -o dist" in makefile and "dist/ferroq-*.whl" in makefile
