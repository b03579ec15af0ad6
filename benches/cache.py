"""Result cache: enqueue -> result for a cache hit vs a run.

A worker runs in a background thread of this process (4 threads); the task does nothing
(``noop``), so a run's figure is the queue's own round trip: the enqueue's commit, the
worker noticing it, the claim, the run, the completion's commit and ``result()`` seeing it.
A hit is one enqueue (its commit finds the completed run) and one read.

    .venv/bin/python benches/cache.py [--calls 300] [--durability normal]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from typing import Any, NamedTuple

import ferroq


class Figures(NamedTuple):
    calls: int
    run_p50_ms: float
    run_p95_ms: float
    hit_p50_ms: float
    hit_p95_ms: float


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _round_trips(task: Any, args: range) -> list[float]:
    out = []
    for i in args:
        start = time.perf_counter()
        task.enqueue(i).result(timeout=30)
        out.append((time.perf_counter() - start) * 1000)
    return out


def measure(calls: int, directory: str, durability: str = "normal") -> Figures:
    q = ferroq.Queue(os.path.join(directory, "cache.db"), durability=durability)

    @q.task(name="noop", cache=ferroq.Cache(ttl=3600))
    def noop(i: int) -> int:
        return i

    worker = ferroq.Worker(q, concurrency=4)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        _round_trips(noop, range(-20, 0))  # warm up: the worker's pool, statement caches
        runs = _round_trips(noop, range(calls))  # new arguments: each one runs
        hits = _round_trips(noop, range(calls))  # the same again: each one is a hit
    finally:
        worker.stop()
        thread.join(30)
        q.close()
    return Figures(calls, statistics.median(runs), _p(runs, 0.95), statistics.median(hits), _p(hits, 0.95))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--durability", default="normal", choices=["normal", "full"])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        f = measure(args.calls, d, args.durability)
    print(f"enqueue -> result, {f.calls} calls each, durability={args.durability}")
    print(f"  run (miss): p50 {f.run_p50_ms:7.3f} ms   p95 {f.run_p95_ms:7.3f} ms")
    print(f"  cache hit:  p50 {f.hit_p50_ms:7.3f} ms   p95 {f.hit_p95_ms:7.3f} ms")
    print(f"  hit is {f.run_p50_ms / f.hit_p50_ms:.1f}x faster at p50")
    return 0


if __name__ == "__main__":
    sys.exit(main())
