"""Routing against head-of-line blocking: a mixed workload (95% 1 ms tasks, 5% 500 ms
tasks) through one worker, with and without a route sending tasks whose observed p95 run
time exceeds 100 ms to a slow lane (a group capped at ``--lane`` concurrent runs).

Tasks arrive at ``--rate`` per second (Poisson, a fixed seed) for ``--seconds``. The figure
is each short task's wait: from its enqueue to its processor starting (what a caller
waiting for a 1 ms job sees beyond the 1 ms). Before each scenario a warm-up runs both tasks
so their run times are in the metrics table: the route decides from those, as in
production (no hint from this script about which task is slow).

    .venv/bin/python benches/routing.py [--seconds 10] [--rate 80] [--concurrency 4] [--lane 3]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
from typing import NamedTuple

import ferroq


class Waits(NamedTuple):
    short: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    long_p95_ms: float


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def scenario(
    directory: str,
    routed: bool,
    seconds: float,
    rate: float,
    concurrency: int,
    lane: int,
    long_s: float = 0.5,
    seed: int = 17,
) -> Waits:
    q = ferroq.Queue(os.path.join(directory, f"routing-{routed}.db"), durability="normal")
    waits: dict[str, list[float]] = {"short": [], "long": []}

    @q.task(name="short")
    def short(enqueued: float) -> None:
        waits["short"].append(time.time() - enqueued)
        time.sleep(0.001)

    @q.task(name="long")
    def long(enqueued: float) -> None:
        waits["long"].append(time.time() - enqueued)
        time.sleep(long_s)

    worker = ferroq.Worker(q, concurrency=concurrency)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        # Warm-up: enough runs of each for a p95, then the worker's figures flushed.
        handles = [long.enqueue(time.time()) for _ in range(20)] + [short.enqueue(time.time()) for _ in range(20)]
        for h in handles:
            h.result(timeout=120)
        q._store.flush_metrics()
        waits["short"].clear()
        waits["long"].clear()
        if routed:
            q.group("slow-lane", throttle=ferroq.Throttle(max_concurrency=lane))
            q.route("slow-lane", slower_than=min(0.1, long_s / 2), min_runs=10, name="slow lane")
        rng = random.Random(seed)
        end = time.monotonic() + seconds
        pending = []
        while time.monotonic() < end:
            task = long if rng.random() < 0.05 else short
            pending.append(task.enqueue(time.time()))
            time.sleep(rng.expovariate(rate))
        for h in pending:
            h.result(timeout=300)
    finally:
        worker.stop()
        thread.join(60)
        q.close()
    s = [w * 1000 for w in waits["short"]]
    return Waits(len(s), _p(s, 0.5), _p(s, 0.95), _p(s, 0.99), _p([w * 1000 for w in waits["long"]], 0.95))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=80.0, help="tasks per second")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--lane", type=int, default=3, help="the slow lane's concurrency")
    args = parser.parse_args(argv)
    print(
        f"{args.rate:g} tasks/s for {args.seconds:g} s (95% 1 ms, 5% 500 ms), worker concurrency "
        f"{args.concurrency}, slow lane {args.lane}"
    )
    print(f"{'':18} {'short tasks':>11} {'wait p50':>10} {'p95':>10} {'p99':>10} {'long p95 wait':>14}")
    with tempfile.TemporaryDirectory() as d:
        for routed in (False, True):
            w = scenario(d, routed, args.seconds, args.rate, args.concurrency, args.lane)
            label = "with routing" if routed else "without routing"
            print(
                f"{label:18} {w.short:11d} {w.p50_ms:8.1f}ms {w.p95_ms:8.1f}ms {w.p99_ms:8.1f}ms "
                f"{w.long_p95_ms:12.1f}ms"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
