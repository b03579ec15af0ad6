"""Wall-clock steps seen by real worker processes, with libfaketime offsets per process
(Debian's ``faketime``; skipped where it is missing). The monotonic clock is left alone,
as a real step leaves it."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

import ferroq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import Procs, procs  # noqa: F401

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not LIBFAKETIME.exists(), reason="libfaketime not installed (Debian: faketime)"),
]

WORKER = """
import threading
db, log_path, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
emit({"wall": time.time()})
q = ferroq.Queue(db)

@q.task(name="job")
def job(n, sleep):
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, f"{n} {os.getpid()}\\n".encode())
    os.close(fd)
    # Not time.sleep: libfaketime breaks clock_nanosleep (EINVAL) when monotonic is not faked.
    end = time.monotonic() + sleep
    while time.monotonic() < end:
        threading.Event().wait(0.01)

w = ferroq.Worker(q, concurrency=2, lease=1.0, rescue_interval=0.1, poll_interval=0.05,
                  handle_signals=False)
bound = threading.Timer(seconds, w.stop)  # in case tasks never come due
bound.daemon = True
bound.start()
emit(w.run(until_empty=True).__dict__)
"""


def faked(offset_s: int) -> dict[str, str]:
    return {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME": f"{offset_s:+d}",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_NO_CACHE": "1",
    }


def enqueue(db: Path, n: int, sleep: float) -> ferroq.Queue:
    q = ferroq.Queue(db)

    @q.task(name="job")
    def job(n: int, sleep: float) -> None:
        raise AssertionError("runs in the workers")

    for i in range(n):
        job.enqueue(i, sleep)
    return q


def runs(log: Path) -> Counter[int]:
    return Counter(int(line.split()[0]) for line in log.read_text().splitlines()) if log.exists() else Counter()


@pytest.mark.timeout(120)
def test_a_worker_whose_clock_stepped_back_runs_the_tasks_already_due(tmp_path: Path, procs: Procs) -> None:
    db, log = tmp_path / "q.db", tmp_path / "runs.log"
    q = enqueue(db, 20, 0.0)
    script = procs.script("worker", WORKER)
    behind = procs.start(script, db, log, 30, env=faked(-3600), label="behind").check(timeout=90)
    records = behind.records()
    import time

    assert records[0]["wall"] < time.time() - 3000, "faketime did not take"
    assert records[-1]["completed"] == 20, records[-1]
    assert q.counts()["completed"] == 20


@pytest.mark.timeout(120)
def test_a_worker_whose_clock_is_ahead_takes_no_lease_from_a_live_worker(tmp_path: Path, procs: Procs) -> None:
    db, log = tmp_path / "q.db", tmp_path / "runs.log"
    q = enqueue(db, 8, 1.5)  # each run holds its 1 s lease through renewals
    script = procs.script("worker", WORKER)
    normal = procs.start(script, db, log, 60, label="normal")
    ahead = procs.start(script, db, log, 60, env=faked(+3600), label="ahead")
    normal.check(timeout=90)
    ahead.check(timeout=90)
    assert ahead.records()[0]["wall"] > normal.records()[0]["wall"] + 3000, "faketime did not take"
    ran = runs(log)
    assert sorted(ran) == list(range(8))
    assert max(ran.values()) == 1, f"runs taken over from a live worker: {ran}"
    assert q.counts()["completed"] == 8
    assert normal.last()["rescued"] == 0 and ahead.last()["rescued"] == 0
