"""Drain rate of no-op tasks with Worker(pool="process") next to pool="thread".

    .venv/bin/python benches/drain_process_pool.py [--tasks 20000] [--concurrency 2]

Children stay alive across tasks, so the per-task cost is one pipe round trip (pickle,
two context switches) on top of the thread-mode path; child start-up is excluded from the
rate (measured apart).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import ferroq

DB = os.environ.get("FERROQ_DRAIN_DB", "")
q = ferroq.Queue(DB or os.path.join(tempfile.gettempdir(), "ferroq-drain-unused.db"), durability="normal")


@q.task
def noop(i: int) -> None:
    return None


def drain(pool: str, tasks: int, concurrency: int) -> tuple[float, float]:
    q.enqueue_many([noop.call(i) for i in range(tasks)])
    worker = ferroq.Worker(q, concurrency=concurrency, pool=pool, handle_signals=False)
    t0 = time.perf_counter()
    stats = worker.run(until_idle=True)
    elapsed = time.perf_counter() - t0
    assert stats.completed == tasks, stats
    return tasks / elapsed, elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    # Child start-up alone: a run with nothing to do.
    t0 = time.perf_counter()
    ferroq.Worker(q, concurrency=args.concurrency, pool="process", handle_signals=False).run(until_idle=True)
    startup = time.perf_counter() - t0
    print(f"process pool start+stop, {args.concurrency} children: {startup * 1000:,.0f} ms")
    for pool in ("thread", "process"):
        rate, elapsed = drain(pool, args.tasks, args.concurrency)
        print(
            f"drain no-op, pool={pool:<7} concurrency={args.concurrency}: {rate:>9,.0f} tasks/s "
            f"({args.tasks:,} in {elapsed:.2f} s)"
        )


if __name__ == "__main__":
    main()
