"""Long-run memory: a worker process under a mixed workload, its resident memory (RSS) and
open file descriptors printed after every simulated hour.

A simulated hour is a fixed amount of work compressed in time: ``--per-hour`` tasks (3,600
by default: one a second) of a mix that exercises every per-task path the worker keeps
state for: plain runs with small results (55%), 10 KB arguments stored apart (10%), async
processors (10%), progress reports (5%), a first attempt that asks to be retried at once
(5%), fatal failures that go dead (5%), cached calls over 50 keys (5%: hits and misses), and
a route to a lane of its own (5%). The queue keeps the newest 2,000 completed and 500 dead
tasks (count retention, pruned every second), so the file stays bounded too. The worker is
a separate process (4 threads); after each hour has drained, /proc gives its RSS and open
descriptors.

    .venv/bin/python benches/soak_memory.py [--hours 24] [--per-hour 3600] [--pace 0]
    .venv/bin/python benches/soak_memory.py --hours 24 --pace 75   # 30 real minutes
    .venv/bin/python benches/soak_memory.py --quick      # what benches/test_issue17_benches.py runs

It exits 1 if memory or descriptors grew after the warm-up (the first ``--warmup`` hours,
when allocator pools, statement caches and histograms fill) beyond ``--rss-tolerance`` MiB or
``--fd-tolerance`` descriptors.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import NamedTuple

import ferroq

APP = """
import asyncio
import ferroq

queue = ferroq.Queue({db!r}, durability="normal",
                     retention=ferroq.Retention(completed_count=2000, dead_count=500, interval=1.0))
queue.group("lane", throttle=ferroq.Throttle(max_concurrency=2))
queue.route("lane", task="soak.routed")


@queue.task(name="soak.plain")
def plain(i):
    return {{"i": i, "ok": True}}


@queue.task(name="soak.large")
def large(blob):
    return len(blob)


@queue.task(name="soak.aio")
async def aio(i):
    await asyncio.sleep(0)
    return i


@queue.task(name="soak.progress")
def progress(i):
    ctx = ferroq.current_task()
    for step in range(3):
        ctx.progress((step + 1) / 3, f"step {{step}}")
    return i


@queue.task(name="soak.retry", retry=ferroq.RetryPolicy(base_delay=0, max_delay=0, jitter=0))
def retry(i):
    if ferroq.current_task().attempt == 1:
        raise ferroq.Retry(delay=0)
    return i


@queue.task(name="soak.fatal", max_attempts=1)
def fatal(i):
    raise ferroq.Fail(f"bad input {{i}}")


@queue.task(name="soak.cached", cache=ferroq.Cache(ttl=3600))
def cached(key):
    return key * 2


@queue.task(name="soak.routed")
def routed(i):
    return i
"""

WORKER = """
import signal, sys
sys.path.insert(0, sys.argv[1])
import ferroq
from app import queue
ferroq.Worker(queue, concurrency=4).run()
"""


class Sample(NamedTuple):
    hour: int
    rss_mib: float
    fds: int
    seconds: float


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _one_hour(q: ferroq.Queue, tasks: dict[str, ferroq.TaskBase[..., object]], hour: int, n: int) -> None:
    calls = []
    for i in range(n):
        k = i % 20
        if k < 11:
            calls.append(tasks["soak.plain"].call(i))
        elif k < 13:
            calls.append(tasks["soak.large"].call("x" * 10_000))
        elif k < 15:
            calls.append(tasks["soak.aio"].call(i))
        elif k == 15:
            calls.append(tasks["soak.progress"].call(i))
        elif k == 16:
            calls.append(tasks["soak.retry"].call(i))
        elif k == 17:
            calls.append(tasks["soak.fatal"].call(i))
        elif k == 18:
            calls.append(tasks["soak.cached"].call((hour * n + i) % 50))
        else:
            calls.append(tasks["soak.routed"].call(i))
    for start in range(0, len(calls), 500):
        q.enqueue_many(calls[start : start + 500])


def _drained(q: ferroq.Queue, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        counts = q.counts()
        if counts["pending"] == 0 and counts["running"] == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"not drained after {timeout}s: {counts}")
        time.sleep(0.05)


def soak(directory: str, hours: int, per_hour: int, report: bool = True, pace: float = 0.0) -> list[Sample]:
    db = os.path.join(directory, "soak.db")
    Path(directory, "app.py").write_text(textwrap.dedent(APP.format(db=db)))
    sys.path.insert(0, directory)
    try:
        from app import queue as q  # the producer declares the same tasks, cache and route
    finally:
        sys.path.remove(directory)
    tasks = dict(q.tasks)
    script = Path(directory, "worker.py")
    script.write_text(WORKER)
    err = open(Path(directory, "worker.err"), "wb")
    worker = subprocess.Popen([sys.executable, str(script), directory], stdout=subprocess.DEVNULL, stderr=err)
    samples: list[Sample] = []
    try:
        for hour in range(1, hours + 1):
            start = time.monotonic()
            _one_hour(q, tasks, hour, per_hour)
            _drained(q, timeout=max(120.0, per_hour / 20))
            if worker.poll() is not None:
                raise RuntimeError(
                    f"the worker exited with {worker.returncode}: {Path(directory, 'worker.err').read_text()[-2000:]}"
                )
            busy = time.monotonic() - start
            time.sleep(max(0.0, pace - busy))
            sample = Sample(hour, _rss_mib(worker.pid), _fds(worker.pid), busy)
            samples.append(sample)
            if report:
                print(
                    f"hour {hour:3d}: worker RSS {sample.rss_mib:7.1f} MiB   open fds {sample.fds:3d}   "
                    f"({per_hour} tasks in {sample.seconds:.1f} s)",
                    flush=True,
                )
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        err.close()
        q.close()
    return samples


def growth(samples: list[Sample], warmup: int) -> tuple[float, int]:
    """(MiB, descriptors) above the end of the warm-up at their highest since."""
    base = samples[warmup - 1]
    after = samples[warmup:]
    return (max(s.rss_mib for s in after) - base.rss_mib, max(s.fds for s in after) - base.fds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--per-hour", type=int, default=3600)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rss-tolerance", type=float, default=16.0, help="MiB")
    parser.add_argument("--fd-tolerance", type=int, default=2)
    parser.add_argument(
        "--pace",
        type=float,
        default=0.0,
        help="real seconds each simulated hour lasts at least (the worker idles the rest, its "
        "maintenance running): --hours 24 --pace 75 is a 30-minute soak",
    )
    parser.add_argument("--quick", action="store_true", help="10 hours of 2,000 tasks, as fast as they run")
    args = parser.parse_args(argv)
    if args.quick:
        args.hours, args.per_hour, args.pace = 10, 2000, 0.0
    if args.hours <= args.warmup:
        parser.error("--hours must be above --warmup")
    with tempfile.TemporaryDirectory() as d:
        samples = soak(d, args.hours, args.per_hour, pace=args.pace)
    rss, fds = growth(samples, args.warmup)
    print(
        f"after the {args.warmup}-hour warm-up: RSS grew {rss:+.1f} MiB at most (tolerance "
        f"{args.rss_tolerance:g}), open fds {fds:+d} (tolerance {args.fd_tolerance})"
    )
    return 0 if rss <= args.rss_tolerance and fds <= args.fd_tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
