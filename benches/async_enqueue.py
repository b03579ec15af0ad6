"""asyncio producers: group commit from coroutines, and how long they stall the event loop.

1. ``threads``: N threads, each ``task.enqueue()`` one at a time (durability="full").
2. ``coroutines``: N coroutines on one event loop, each ``await task.aenqueue()`` one at a
   time. Both rates should be comparable: concurrent aenqueues share fsyncs (group commit)
   as concurrent threads do.
3. ``loop lag``: ``--lag-tasks`` tasks enqueued by ``--lag-coroutines`` concurrent
   coroutines while a ticker task sleeps 1 ms at a time; the figure is the longest gap
   between its ticks beyond the 1 ms asked (what a request handler on that loop would wait),
   next to the same ticker on an idle loop (the machine's own scheduling noise).

    .venv/bin/python benches/async_enqueue.py [--workers 16] [--seconds 3] [--lag-tasks 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from typing import Any, NamedTuple

import ferroq


class Rates(NamedTuple):
    threads_per_s: float
    coroutines_per_s: float


class Lag(NamedTuple):
    tasks: int
    seconds: float
    max_gap_ms: float
    p99_gap_ms: float


def _queue(directory: str, name: str) -> tuple[ferroq.Queue, Any]:
    q = ferroq.Queue(os.path.join(directory, f"{name}.db"), durability="full")

    @q.task(name="noop")
    def noop(i: int) -> None: ...

    return q, noop


def rate_threads(directory: str, workers: int, seconds: float) -> float:
    q, noop = _queue(directory, "threads")
    noop.enqueue(0)  # opens the connections before the clock starts
    done = [0] * workers
    end = time.monotonic() + seconds

    def produce(k: int) -> None:
        while time.monotonic() < end:
            noop.enqueue(k)
            done[k] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=produce, args=(k,)) for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    q.close()
    return sum(done) / elapsed


def rate_coroutines(directory: str, workers: int, seconds: float) -> float:
    q, noop = _queue(directory, "coroutines")

    async def main() -> float:
        await noop.aenqueue(0)
        done = [0] * workers
        end = time.monotonic() + seconds

        async def produce(k: int) -> None:
            while time.monotonic() < end:
                await noop.aenqueue(k)
                done[k] += 1

        started = time.monotonic()
        await asyncio.gather(*(produce(k) for k in range(workers)))
        return sum(done) / (time.monotonic() - started)

    try:
        return asyncio.run(main())
    finally:
        q.close()


def loop_lag(directory: str, tasks: int, coroutines: int) -> Lag:
    q, noop = _queue(directory, "lag")

    async def main() -> Lag:
        await noop.aenqueue(0)
        gaps: list[float] = []
        running = True

        async def ticker() -> None:
            last = time.perf_counter()
            while running:
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                gaps.append(now - last - 0.001)
                last = now

        async def produce(k: int) -> None:
            for i in range(k, tasks, coroutines):
                await noop.aenqueue(i)

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.01)
        started = time.monotonic()
        await asyncio.gather(*(produce(k) for k in range(coroutines)))
        elapsed = time.monotonic() - started
        running = False
        await tick
        gaps.sort()
        return Lag(tasks, elapsed, gaps[-1] * 1000, gaps[int(len(gaps) * 0.99)] * 1000)

    try:
        return asyncio.run(main())
    finally:
        q.close()


def idle_lag(seconds: float = 1.0) -> Lag:
    """The same ticker on an idle loop: the machine's own scheduling noise, for comparison."""

    async def main() -> Lag:
        gaps: list[float] = []
        last = time.perf_counter()
        end = last + seconds
        while last < end:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last - 0.001)
            last = now
        gaps.sort()
        return Lag(0, seconds, gaps[-1] * 1000, gaps[int(len(gaps) * 0.99)] * 1000)

    return asyncio.run(main())


def measure(workers: int = 16, seconds: float = 3.0, directory: str | None = None) -> Rates:
    with tempfile.TemporaryDirectory(dir=directory or os.getcwd()) as d:
        return Rates(rate_threads(d, workers, seconds), rate_coroutines(d, workers, seconds))


def measure_lag(tasks: int = 10_000, coroutines: int = 100, directory: str | None = None) -> Lag:
    with tempfile.TemporaryDirectory(dir=directory or os.getcwd()) as d:
        return loop_lag(d, tasks, coroutines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=16, help="threads, then coroutines (default 16)")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--lag-tasks", type=int, default=10_000)
    parser.add_argument("--lag-coroutines", type=int, default=100)
    args = parser.parse_args(argv)
    rates = measure(args.workers, args.seconds)
    print(f"durability=full, one enqueue at a time ({os.cpu_count()} cores, Python {sys.version.split()[0]}):")
    print(f"  {args.workers} threads     enqueue():        {rates.threads_per_s:8,.0f} tasks/s")
    print(
        f"  {args.workers} coroutines  await aenqueue(): {rates.coroutines_per_s:8,.0f} tasks/s "
        f"({rates.coroutines_per_s / rates.threads_per_s:.0%} of the threads' rate)"
    )
    lag = measure_lag(args.lag_tasks, args.lag_coroutines)
    print(
        f"loop lag while {args.lag_coroutines} coroutines aenqueue {lag.tasks:,} tasks "
        f"({lag.tasks / lag.seconds:,.0f} tasks/s): a 1 ms ticker's longest extra gap "
        f"{lag.max_gap_ms:.2f} ms, p99 {lag.p99_gap_ms:.2f} ms"
    )
    idle = idle_lag()
    print(
        f"  the same ticker on an idle loop (this machine's noise): longest {idle.max_gap_ms:.2f} ms, "
        f"p99 {idle.p99_gap_ms:.2f} ms"
    )


if __name__ == "__main__":
    main()
