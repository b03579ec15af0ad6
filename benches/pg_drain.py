"""The PostgreSQL engine's throughput on a server: ``enqueue_many``, single enqueues from
16 threads, and a drain of no-op tasks by 1 and 2 worker processes (start-up included),
each in a fresh schema of the database the URL names (a throw-away cluster removes them).

    .venv/bin/python benches/pg_drain.py postgresql://postgres@127.0.0.1:5432/postgres [--tasks 20000]

Without a URL it reads ``FERROQ_TEST_PG_URL``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
import uuid
from typing import NamedTuple

import ferroq


class Figures(NamedTuple):
    enqueue_many_per_s: float
    enqueue_16_threads_per_s: float
    drain_1_process_per_s: float
    drain_2_processes_per_s: float


def _schema_url(url: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}schema=bench_{uuid.uuid4().hex[:12]}"


def _drain_child(url: str, concurrency: int) -> None:
    q = ferroq.Queue(url)
    q.task(name="noop")(lambda i: None)
    print(ferroq.Worker(q, concurrency=concurrency, handle_signals=False).run(until_empty=True).completed)


def _drain(url: str, n: int, processes: int) -> float:
    q = ferroq.Queue(url)
    noop = q.task(name="noop")(lambda i: None)
    for start in range(0, n, 10_000):
        q.enqueue_many(noop.call(i) for i in range(start, min(n, start + 10_000)))
    # Worker processes run this script (importable as a file, wherever it was loaded from).
    t = time.perf_counter()
    workers = [
        subprocess.Popen([sys.executable, __file__, url, "--drain-child"], stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    done = sum(int(w.communicate(timeout=600)[0].split()[-1]) for w in workers)
    rate = done / (time.perf_counter() - t)
    assert q.counts()["completed"] >= n, q.counts()
    q.close()
    return rate


def _enqueue_many(url: str, n: int) -> float:
    with ferroq.Queue(url) as q:
        noop = q.task(name="noop")(lambda i: None)
        t = time.perf_counter()
        for start in range(0, n, 1000):
            q.enqueue_many([noop.call(i) for i in range(start, min(n, start + 1000))])
        return n / (time.perf_counter() - t)


def _enqueue_threads(url: str, n: int, threads: int = 16) -> float:
    with ferroq.Queue(url) as q:
        noop = q.task(name="noop")(lambda i: None)
        each = max(1, n // threads)

        def run() -> None:
            for i in range(each):
                noop.enqueue(i)

        pool = [threading.Thread(target=run) for _ in range(threads)]
        t = time.perf_counter()
        for th in pool:
            th.start()
        for th in pool:
            th.join()
        return each * threads / (time.perf_counter() - t)


def measure(url: str, tasks: int) -> Figures:
    return Figures(
        enqueue_many_per_s=_enqueue_many(_schema_url(url), tasks),
        enqueue_16_threads_per_s=_enqueue_threads(_schema_url(url), min(tasks, 4000)),
        drain_1_process_per_s=_drain(_schema_url(url), tasks, 1),
        drain_2_processes_per_s=_drain(_schema_url(url), tasks, 2),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", nargs="?", default=os.environ.get("FERROQ_TEST_PG_URL"))
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--drain-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drain_child:
        return _drain_child(args.url, 8)
    if not args.url:
        sys.exit("give a postgresql:// URL (or set FERROQ_TEST_PG_URL)")
    figures = measure(args.url, args.tasks)
    for name, value in figures._asdict().items():
        print(f"{name:28} {value:12,.0f} tasks/s")


if __name__ == "__main__":
    main()
