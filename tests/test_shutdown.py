"""SIGTERM / SIGINT stop a worker process gracefully; a second signal stops it at once."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import ferroq

# The worker processes run on both engines; the signal-handler unit tests need no store of their own.
pytestmark = pytest.mark.both_engines

WORKER = textwrap.dedent("""
    import sys, time, pathlib, ferroq
    db, marker, seconds = sys.argv[1], pathlib.Path(sys.argv[2]), float(sys.argv[3])
    q = ferroq.Queue(db, durability="normal")

    @q.task(name="slow")
    def slow(n: int) -> int:
        marker.write_text("started")
        time.sleep(seconds)
        return n

    stats = ferroq.Worker(q, concurrency=2, lease=5.0, shutdown_grace=float(sys.argv[4])).run()
    print(f"completed={stats.completed} released={stats.released}", flush=True)
""")


def start_worker(tmp_path: Path, db: Path | str, seconds: float, grace: float) -> tuple[subprocess.Popen[str], Path]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    marker = tmp_path / "started"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(db), str(marker), str(seconds), str(grace)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, marker


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.02)


def queue(db: Path | str) -> ferroq.Queue:
    q = ferroq.Queue(db, durability="normal")
    q.task(name="slow")(lambda n: n)
    return q


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_lets_the_running_task_finish(tmp_path: Path, queue_location: Path | str, sig: signal.Signals) -> None:
    db = queue_location
    q = queue(db)
    h = q.enqueue("slow", 7)
    proc, marker = start_worker(tmp_path, db, seconds=1.0, grace=30.0)
    try:
        wait_for(marker, proc)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "completed=1 released=0" in out
    assert h.result(timeout=1) == 7
    assert q.counts()["running"] == 0


def test_a_second_signal_stops_at_once_and_gives_the_task_back(tmp_path: Path, queue_location: Path | str) -> None:
    db = queue_location
    q = queue(db)
    h = q.enqueue("slow", 7)
    proc, marker = start_worker(tmp_path, db, seconds=60.0, grace=60.0)
    try:
        wait_for(marker, proc)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "completed=0 released=1" in out
    info = h.info()
    # Released, not failed: pending again with its attempt given back, nothing lost.
    assert (info.status, info.attempts) == ("pending", 0)
    assert [t.to_status for t in q.history(h.id)] == ["pending", "running", "pending"]


def test_grace_period_expiry_releases_the_task(tmp_path: Path, queue_location: Path | str) -> None:
    db = queue_location
    q = queue(db)
    h = q.enqueue("slow", 1)
    proc, marker = start_worker(tmp_path, db, seconds=60.0, grace=0.5)
    try:
        wait_for(marker, proc)
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "released=1" in out
    assert h.info().status == "pending"


def test_a_second_signal_arriving_while_the_first_is_handled_stops_at_once(tmp_path: Path) -> None:
    # Python may run a second signal's handler inside the first one's, between any two
    # bytecodes: here, while the first is logging (as a quick second Ctrl-C can). The first
    # handler used to log before it recorded the stop, so the nested one took itself for
    # the first and the worker waited out its whole grace (a CI run hung 30 s on it).
    q = queue(tmp_path / "q.db")
    worker = ferroq.Worker(q, handle_signals=False, shutdown_grace=60.0)

    class SecondSignalWhileLogging(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "finishing running tasks" in record.getMessage():
                worker._on_signal(signal.SIGTERM, None)

    nested = SecondSignalWhileLogging()
    logger = logging.getLogger("ferroq.worker")
    logger.addHandler(nested)
    try:
        worker._on_signal(signal.SIGTERM, None)
    finally:
        logger.removeHandler(nested)
    assert worker._stopping.is_set() and worker._hard_stop.is_set()


def test_one_signal_finishes_and_a_second_stops_at_once(tmp_path: Path) -> None:
    worker = ferroq.Worker(queue(tmp_path / "q.db"), handle_signals=False, shutdown_grace=60.0)
    worker._on_signal(signal.SIGINT, None)
    assert worker._stopping.is_set() and not worker._hard_stop.is_set()
    worker._on_signal(signal.SIGINT, None)
    assert worker._hard_stop.is_set()
