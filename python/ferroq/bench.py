"""``python -m ferroq.bench``: throughput and latency figures next to the raw SQLite ceiling
measured in the same run with the same pragmas.

The ceiling runs in a subprocess with Python's sqlite3 module: never in this process, where
two SQLite copies would break each other's file locks. Each scenario prints our figure, the
ceiling, and their ratio; ratios are what the regression check compares (absolute rates
vary with the machine, ratios much less).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

import ferroq
from ferroq._core import Outcomes

__all__ = ["Figure", "run", "main"]


@dataclass
class Figure:
    """One scenario's result. ``ceiling``/``ratio`` are None where no raw equivalent exists."""

    scenario: str
    value: float
    unit: str
    ceiling: float | None = None

    @property
    def ratio(self) -> float | None:
        return None if not self.ceiling else self.value / self.ceiling


_RAW = textwrap.dedent("""
    import sqlite3, sys, threading, time
    path, sync, n, mode, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    c = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    c.execute("PRAGMA journal_mode=WAL"); c.execute(f"PRAGMA synchronous={sync}")
    c.execute("PRAGMA temp_store=MEMORY")
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, state INTEGER, payload BLOB)")
    c.execute("CREATE INDEX t_ready ON t (id) WHERE state = 0")
    row = (b'{"args":["' + b"x" * size + b'"],"kwargs":{}}' if size else b'{"args":[1],"kwargs":{}}',)
    t = time.perf_counter()
    if mode == "commit":      # one fsync'd (or not) commit per row
        for _ in range(n):
            c.execute("BEGIN IMMEDIATE"); c.execute("INSERT INTO t (state, payload) VALUES (0, ?)", row)
            c.execute("COMMIT")
    elif mode == "batch":     # all rows in one transaction
        c.execute("BEGIN IMMEDIATE")
        c.executemany("INSERT INTO t (state, payload) VALUES (0, ?)", (row for _ in range(n)))
        c.execute("COMMIT")
    elif mode == "claim_ack": # claim 100 -> ack 100, one transaction each
        c.execute("BEGIN"); c.executemany("INSERT INTO t (state, payload) VALUES (0, ?)", (row for _ in range(n)))
        c.execute("COMMIT")
        t = time.perf_counter(); done = 0
        while done < n:
            c.execute("BEGIN IMMEDIATE")
            ids = [r[0] for r in c.execute(
                "UPDATE t SET state = 1 WHERE id IN (SELECT id FROM t WHERE state = 0 ORDER BY id LIMIT 100)"
                " RETURNING id")]
            c.execute("COMMIT")
            c.execute("BEGIN IMMEDIATE")
            c.executemany("UPDATE t SET state = 2 WHERE id = ?", ((i,) for i in ids)); c.execute("COMMIT")
            done += len(ids)
    print(n / (time.perf_counter() - t))
""")


def raw_rate(sync: str, n: int, mode: str, payload: int = 0) -> float:
    """Rows per second SQLite itself does for ``mode``, in a separate process; ``payload``:
    rows carry a string argument of that many characters (else a number)."""
    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run(
            [sys.executable, "-c", _RAW, os.path.join(d, "raw.db"), sync, str(n), mode, str(payload)],
            capture_output=True,
            text=True,
            check=True,
        )
        return float(out.stdout)


@contextlib.contextmanager
def _scratch(durability: str) -> Iterator[tuple[ferroq.Queue, ferroq.Task[[int | str], None]]]:
    """A queue with a no-op task on a new file, closed before the file is deleted. Left to
    the garbage collector (a queue and its tasks refer to each other), a queue was closed
    inside a later scenario's collection, with the GIL held (SQLite checkpoints on the
    last close): in-process latency then showed 20-35 ms pauses that belonged to no scenario."""
    with tempfile.TemporaryDirectory() as d, ferroq.Queue(os.path.join(d, "bench.db"), durability=durability) as q:

        @q.task(name="noop")
        def noop(i: int | str) -> None:
            return None

        yield q, noop


def _sync(durability: str) -> str:
    return "FULL" if durability == "full" else "NORMAL"


def bench_enqueue(durability: str, n: int, threads: int) -> Figure:
    with _scratch(durability) as (q, noop):
        per = max(1, n // threads)

        def work() -> None:
            for i in range(per):
                noop.enqueue(i)

        pool = [threading.Thread(target=work) for _ in range(threads)]
        t = time.perf_counter()
        for th in pool:
            th.start()
        for th in pool:
            th.join()
        rate = per * threads / (time.perf_counter() - t)
    return Figure(
        f"enqueue, {threads} thread(s), {durability}", rate, "tasks/s", raw_rate(_sync(durability), n, "commit")
    )


def bench_enqueue_many(durability: str, n: int) -> Figure:
    with _scratch(durability) as (q, noop):
        t = time.perf_counter()
        q.enqueue_many(noop.call(i) for i in range(n))
        rate = n / (time.perf_counter() - t)
    return Figure(f"enqueue_many, {durability}", rate, "tasks/s", raw_rate(_sync(durability), n, "batch"))


async def _async_noop(i: int | str) -> None:
    return None


def _drain_child(path: str, durability: str, concurrency: int, out: Any, is_async: bool = False) -> None:
    q = ferroq.Queue(path, durability=durability)
    if is_async:
        q.task(name="noop")(_async_noop)
    else:
        q.task(name="noop")(lambda i: None)  # i: a number, or a string (payload)
    stats = ferroq.Worker(q, concurrency=concurrency, handle_signals=False).run(until_idle=True)
    out.put(stats.completed)


def bench_drain(
    durability: str, n: int, processes: int, concurrency: int = 4, payload: int = 0, is_async: bool = False
) -> Figure:
    """``payload``: each task's argument is a string of that many characters (else its number);
    ``is_async``: the worker runs an ``async def`` processor (on its event loop)."""
    with _scratch(durability) as (q, noop):
        text = "x" * payload
        for start in range(0, n, 50_000):
            q.enqueue_many(noop.call(text or i) for i in range(start, min(n, start + 50_000)))
        ctx = multiprocessing.get_context("spawn")
        results = ctx.Queue()
        workers = [
            ctx.Process(target=_drain_child, args=(q._opened_as, durability, concurrency, results, is_async))
            for _ in range(processes)
        ]
        t = time.perf_counter()
        for w in workers:
            w.start()
        done = sum(results.get(timeout=600) for _ in workers)
        rate = done / (time.perf_counter() - t)
        for w in workers:
            w.join()
    # Start-up of the worker processes is inside the timing: it is part of draining.
    name = (
        f"drain no-op, {payload:,} B args, {processes} proc., {durability}"
        if payload
        else f"drain async no-op, {processes} process(es), {durability}"
        if is_async
        else f"drain no-op, {processes} process(es), {durability}"
    )
    return Figure(name, rate, "tasks/s", raw_rate(_sync(durability), min(n, 200_000), "claim_ack", payload))


def _always_fails(i: int) -> None:
    raise ConnectionError(f"downstream unavailable for task {i}")


#: Retries come due long after the bench: each task fails once.
_LATER = ferroq.RetryPolicy(base_delay=3600.0, max_delay=3600.0)


def _failing_child(path: str, out: Any) -> None:
    q = ferroq.Queue(path, durability="normal")
    q.task(name="flaky", retry=_LATER)(_always_fails)
    out.put(ferroq.Worker(q, concurrency=4, handle_signals=False).run(until_idle=True).retried)


def bench_drain_failing(n: int) -> Figure:
    """A downstream outage: every task raises and is scheduled for a retry (the failure
    path: traceback, retry policy, breaker accounting, history and events)."""
    with tempfile.TemporaryDirectory() as d, ferroq.Queue(os.path.join(d, "bench.db"), durability="normal") as q:
        flaky = q.task(name="flaky", retry=_LATER)(_always_fails)
        q.enqueue_many(flaky.call(i) for i in range(n))
        ctx = multiprocessing.get_context("spawn")
        results = ctx.Queue()
        proc = ctx.Process(target=_failing_child, args=(q._opened_as, results))
        t = time.perf_counter()
        proc.start()
        failed = results.get(timeout=600)
        rate = failed / (time.perf_counter() - t)
        proc.join()
    return Figure("drain, every task fails (retried later)", rate, "tasks/s")


def _latency_child(path: str, ready: Any, stop: Any) -> None:
    q = ferroq.Queue(path, durability="normal")
    q.task(name="stamp")(_stamp)
    worker = ferroq.Worker(q, concurrency=4, handle_signals=False)

    def stop_when_told() -> None:
        stop.wait()
        worker.stop()

    threading.Thread(target=stop_when_told, daemon=True).start()
    ready.set()
    worker.run()


def _stamp(sent: float) -> float:
    return time.time() - sent


def bench_latency(
    rate: float, seconds: float, cross_process: bool, label: str = "", location: str | None = None
) -> list[Figure]:
    """Enqueue -> processor start at a fixed rate, the worker waking on commits (not
    polling). Above 1,000/s the producer enqueues each millisecond's tasks together (one
    ``enqueue_many``), each stamped with the time it was sent. ``location``: an empty queue
    to use (a PostgreSQL database) instead of a new file."""
    with (
        tempfile.TemporaryDirectory() as d,
        ferroq.Queue(location or os.path.join(d, "lat.db"), durability="normal") as q,
    ):
        stamp = q.task(name="stamp")(_stamp)
        if cross_process:
            ctx = multiprocessing.get_context("spawn")
            ready, stop = ctx.Event(), ctx.Event()
            proc = ctx.Process(target=_latency_child, args=(q._opened_as, ready, stop))
            proc.start()
            ready.wait(60)
            time.sleep(0.5)

            def stop_worker() -> None:
                stop.set()
                proc.join(30)
        else:
            worker = ferroq.Worker(q, concurrency=4, handle_signals=False)
            th = threading.Thread(target=worker.run, daemon=True)
            th.start()
            time.sleep(0.2)

            def stop_worker() -> None:
                worker.stop()
                th.join(30)

        ids: list[int] = []
        tick = max(1.0 / rate, 0.001)
        per_tick = max(1, round(rate * tick))
        ticks = int(seconds / tick)
        start = time.perf_counter()
        for i in range(ticks):
            # Sleep, never spin: a spinning producer would hold the GIL the worker needs.
            wait = start + i * tick - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            if per_tick == 1:
                ids.append(stamp.enqueue(time.time()).id)
            else:
                sent = time.time()
                ids += q.enqueue_many([stamp.call(sent) for _ in range(per_tick)])
        achieved = len(ids) / (time.perf_counter() - start)
        waits = [q.handle(i).result(timeout=120) * 1000 for i in ids]
        stop_worker()
    where = "cross-process" if cross_process else "in-process"
    qs = statistics.quantiles(waits, n=100)
    name = label or f"at {rate:,.0f}/s"
    return [
        Figure(f"latency {p} {name}, {where}", qs[i - 1], "ms") for p, i in (("p50", 50), ("p95", 95), ("p99", 99))
    ] + ([Figure(f"latency load {name}, {where}", achieved, "tasks/s")] if label else [])


def _claim_ack_rate(q: ferroq.Queue, tasks: int, batch: int = 100) -> float:
    """Claim + complete ``tasks`` already-enqueued tasks straight through the store."""
    store = q._engine
    done = 0
    t = time.perf_counter()
    while done < tasks:
        rows = store.claim(q.name, "bench", batch, 30_000)
        outcomes = Outcomes()
        for r in rows:
            outcomes.completed(r.id, r.token, b"null")
        store.finish_many(outcomes)
        done += len(rows)
    return done / (time.perf_counter() - t)


def bench_claim_with_history(finished: int) -> Figure:
    """Claim cost with ``finished`` completed tasks retained, next to an empty table."""
    with _scratch("normal") as (q, noop):
        for start in range(0, finished, 50_000):
            q.enqueue_many(noop.call(i) for i in range(start, min(finished, start + 50_000)))
        _claim_ack_rate(q, finished, batch=1000)
        q.enqueue_many(noop.call(i) for i in range(20_000))
        loaded = _claim_ack_rate(q, 20_000)
    with _scratch("normal") as (q, noop):
        q.enqueue_many(noop.call(i) for i in range(20_000))
        empty = _claim_ack_rate(q, 20_000)
    # The "ceiling" here is the same loop on a table with no finished tasks.
    return Figure(f"claim+ack with {finished:,} finished retained", loaded, "tasks/s", empty)


def _claim_ack_behind(waiting: int, hold: Callable[[ferroq.Queue, Any], Any]) -> tuple[float, float]:
    """Claim+ack of 20,000 ready tasks enqueued behind ``waiting`` tasks that ``hold(q, noop)``
    returns as a task (or bound task) to enqueue and holds back; and the same with none."""
    with _scratch("normal") as (q, noop):
        held = hold(q, noop)
        for start in range(0, waiting, 50_000):
            q.enqueue_many(held.call(i) for i in range(start, min(waiting, start + 50_000)))
        q.enqueue_many(noop.call(i) for i in range(20_000))
        loaded = _claim_ack_rate(q, 20_000)
    with _scratch("normal") as (q, noop):
        q.enqueue_many(noop.call(i) for i in range(20_000))
        empty = _claim_ack_rate(q, 20_000)
    return loaded, empty


def bench_claim_behind_delayed(delayed: int) -> Figure:
    """Claim cost with ``delayed`` tasks scheduled for an hour later (as a retry storm or
    a day's scheduled work leaves them), next to a queue with none."""
    loaded, empty = _claim_ack_behind(delayed, lambda q, noop: noop.using(delay=3600))
    # The "ceiling" here is the same loop on a queue with no delayed tasks.
    return Figure(f"claim+ack with {delayed:,} delayed waiting", loaded, "tasks/s", empty)


def _paused_group(q: ferroq.Queue, noop: Any) -> Any:
    q.group("held").pause()
    return noop.using(resource_group="held")


def bench_claim_behind_held_group(held: int) -> Figure:
    """Claim cost with ``held`` ready tasks of a paused group ahead of the others (as a
    group behind an open breaker or a throttle builds up), next to a queue without them."""
    loaded, empty = _claim_ack_behind(held, _paused_group)
    return Figure(f"claim+ack behind {held:,} tasks of a held group", loaded, "tasks/s", empty)


def _rss(pagesize: int) -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * pagesize


def _rss_child(path: str, total: int, out: Any) -> None:
    import resource

    q = ferroq.Queue(path, durability="normal")
    done = [0]

    @q.task(name="noop")
    def noop(i: int) -> None:
        done[0] += 1

    worker = ferroq.Worker(q, concurrency=4, handle_signals=False)
    samples: dict[str, int] = {}

    def sample() -> None:
        while done[0] < 100_000:
            time.sleep(0.01)
        samples["100k"] = _rss(resource.getpagesize())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    worker.run(until_idle=True)
    sampler.join(5)
    samples["end"] = _rss(resource.getpagesize())
    out.put((samples, done[0]))


def bench_worker_rss(total: int) -> list[Figure]:
    """Resident memory of a worker process after 100k and after ``total`` processed tasks
    (enqueued beforehand by this process, so only the worker's own memory is measured)."""
    with _scratch("normal") as (q, noop):
        for start in range(0, total, 50_000):
            q.enqueue_many(noop.call(i) for i in range(start, min(total, start + 50_000)))
        ctx = multiprocessing.get_context("spawn")
        out = ctx.Queue()
        proc = ctx.Process(target=_rss_child, args=(q._opened_as, total, out))
        proc.start()
        samples, processed = out.get(timeout=3600)
        proc.join()
    return [
        Figure("worker RSS after 100,000 tasks", samples["100k"] / 2**20, "MiB"),
        Figure(f"worker RSS after {processed:,} tasks", samples["end"] / 2**20, "MiB"),
    ]


def median_of(runs: int, scenario: Callable[[], list[Figure]]) -> list[Figure]:
    """``scenario`` run ``runs`` times: each figure (and ceiling) is the median of its runs.
    For the scenarios that have targets and swing most from run to run on a shared machine."""
    results = [scenario() for _ in range(runs)]

    def median(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    return [
        Figure(
            first.scenario + (f" (median of {runs})" if runs > 1 else ""),
            statistics.median(r[i].value for r in results),
            first.unit,
            median([r[i].ceiling for r in results]),
        )
        for i, first in enumerate(results[0])
    ]


def run(quick: bool = False, big: bool = False) -> list[Figure]:
    """Every scenario; ``quick`` uses smaller counts (for the regression check) and runs
    each once; a full run takes the median of 3 runs for the drain, 16-thread enqueue and
    half-peak latency targets."""
    n = 20_000 if quick else 100_000
    repeats = 1 if quick else 3
    # Drains run 5x longer: the worker's start-up (spawn, import, open) is timed too, and
    # over 100,000 tasks it was a fifth of the figure.
    drained = 5 * n
    figures = [
        bench_enqueue("full", 2_000 if quick else 5_000, 1),
        *median_of(repeats, lambda: [bench_enqueue("full", 8_000 if quick else 32_000, 16)]),
        bench_enqueue("normal", 8_000 if quick else 32_000, 16),
        bench_enqueue_many("normal", n),
        *median_of(repeats, lambda: [bench_drain("normal", drained, 1)]),
        bench_drain("full", drained, 1),
    ]
    if not quick:
        figures.append(bench_drain("normal", drained, 2))
        figures.append(bench_drain("normal", n, 1, payload=2_000))
        figures.append(bench_drain_failing(n // 2))
        figures.append(bench_drain("normal", n, 1, is_async=True))
        figures += bench_latency(1_000, 3.0, cross_process=False)
        figures += bench_latency(1_000, 3.0, cross_process=True)
        # The load point: half the peak drain rate measured above, in this run.
        half = figures[4].value / 2
        figures += median_of(repeats, lambda: bench_latency(half, 3.0, cross_process=False, label="at half peak"))
        figures += median_of(repeats, lambda: bench_latency(half, 3.0, cross_process=True, label="at half peak"))
    if big:
        figures.append(bench_claim_with_history(1_000_000))
        figures.append(bench_claim_behind_delayed(1_000_000))
        figures.append(bench_claim_behind_held_group(1_000_000))
        figures += bench_worker_rss(1_000_000)
    return figures


def render(figures: list[Figure], ceiling: str = "raw SQLite") -> str:
    lines = [f"{'scenario':<56} {'ferroq':>12} {ceiling:>12} {'ratio':>7}  unit"]
    for f in figures:
        ceiling = f"{f.ceiling:>12,.0f}" if f.ceiling else f"{'-':>12}"
        ratio = f"{f.ratio:>7.2f}" if f.ratio is not None else f"{'-':>7}"
        value = f"{f.value:>12,.0f}" if f.value >= 100 else f"{f.value:>12.3f}"
        lines.append(f"{f.scenario:<56} {value} {ceiling} {ratio}  {f.unit}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ferroq.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table")
    parser.add_argument("--quick", action="store_true", help="smaller counts, throughput only")
    parser.add_argument(
        "--big",
        action="store_true",
        help="also claim cost with 1M finished tasks and worker RSS over 1M tasks (minutes)",
    )
    args = parser.parse_args(argv)
    figures = run(quick=args.quick, big=args.big)
    if args.output == "json":
        print(json.dumps([{**asdict(f), "ratio": f.ratio} for f in figures], indent=2))
    else:
        print(render(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
