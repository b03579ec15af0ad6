"""What the profiler costs: one worker (4 threads, in this process) drains ``--tasks`` tasks
whose processor does ``--work`` µs of pure-Python work, with ``profile=False``,
``profile="time"`` (stages, wall and CPU time) and ``profile=True`` (also each run's peak
memory, by tracemalloc), in turn, best of ``--rounds``; prints tasks per second and the cost
per task of profiling.

    .venv/bin/python benches/profiler_overhead.py [--tasks 20000] [--work 0] [--rounds 3]

Off, the worker builds its usual collaborators (nothing on the per-task path knows of the
profiler): benches/worker_instructions.py counts the same instructions per task with and
without the profiler's code in the package.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import ferroq


def drain(directory: str, tasks: int, work_us: float, profile: bool | str, round_: int) -> float:
    """Seconds to drain ``tasks`` tasks."""
    q = ferroq.Queue(os.path.join(directory, f"p-{profile}-{round_}.db"), durability="normal")

    @q.task(name="work")
    def work(i: int) -> None:
        end = time.perf_counter() + work_us / 1e6
        while time.perf_counter() < end:
            pass

    for start in range(0, tasks, 5000):
        q.enqueue_many(work.call(i) for i in range(start, min(tasks, start + 5000)))
    t = time.perf_counter()
    ferroq.Worker(q, concurrency=4, profile=profile, handle_signals=False).run(until_idle=True)
    seconds = time.perf_counter() - t
    q.close()
    return seconds


MODES: tuple[bool | str, ...] = (False, "time", True)


def measure(tasks: int, work_us: float, rounds: int, directory: str) -> dict[bool | str, float]:
    """Tasks/s per profile setting (False, "time", True), best of ``rounds`` each."""
    best = {mode: float("inf") for mode in MODES}
    for r in range(rounds):
        for mode in MODES:
            best[mode] = min(best[mode], drain(directory, tasks, work_us, mode, r))
    return {mode: tasks / seconds for mode, seconds in best.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--work", type=float, default=0.0, help="µs of work per task")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        rates = measure(args.tasks, args.work, args.rounds, d)
    off = rates[False]
    print(f"{args.tasks} tasks of {args.work:g} µs, 4 threads, best of {args.rounds}")
    for mode, label in ((False, "off"), ("time", '"time"'), (True, "on")):
        rate = rates[mode]
        extra = "" if mode is False else f"   (+{(1 / rate - 1 / off) * 1e6:.1f} µs a task, {off / rate - 1:+.0%} time)"
        print(f"  profile {label:7} {rate:9,.0f} tasks/s{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
