"""Where a drained task's time goes: the store's claim and record costs per task (no worker,
one thread), next to the worker's Python per task (start, run, record, with the store's
answers faked so only Python is timed).

    .venv/bin/python benches/store_costs.py [--tasks 200000] [--batch 500] [--payload 1000 4000 16000]
                                            [--cycle 62 500]

Single-threaded and best-of-N, so it is steadier than a drain on a shared machine: use it
to compare two builds of the hot path, then confirm with a drain (`python -m ferroq.bench`).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

import ferroq

try:
    from ferroq._core import ClaimedTask, Outcomes
except ImportError:  # older builds pass tuples (compared by worker_instructions.py)
    ClaimedTask = Outcomes = None  # type: ignore[assignment,misc]


def store_costs(tasks: int, batch: int, payload: int = 0) -> tuple[float, float]:
    """µs per task for claim and for finish_many, `batch` at a time; each task's argument is
    its number, or a string of `payload` characters."""
    with tempfile.TemporaryDirectory() as d:
        q = ferroq.Queue(os.path.join(d, "q.db"), durability="normal")
        noop = q.task(name="noop")(lambda i: None)
        arg = "x" * payload
        for start in range(0, tasks, 50_000):
            q.enqueue_many(noop.call(arg or i) for i in range(start, min(tasks, start + 50_000)))
        store = q._store
        claim_s = finish_s = 0.0
        done = 0
        while True:
            t0 = time.perf_counter()
            rows = store.claim(q.name, "bench", batch, 60_000)
            t1 = time.perf_counter()
            if not rows:
                break
            outcomes = _completed(rows)
            t2 = time.perf_counter()
            store.finish_many(outcomes)
            finish_s += time.perf_counter() - t2
            claim_s += t1 - t0
            done += len(rows)
        q.close()
    return claim_s / done * 1e6, finish_s / done * 1e6


def cycle_costs(tasks: int, batch: int) -> tuple[float, float, float]:
    """µs per task for enqueue_many, claim and finish_many in a steady cycle of `batch`
    tasks each, as under a steady load where few tasks wait (the latency scenarios): every
    transaction is small, so its commit and the pages it rewrites weigh on each task."""
    with tempfile.TemporaryDirectory() as d:
        q = ferroq.Queue(os.path.join(d, "q.db"), durability="normal")
        noop = q.task(name="noop")(lambda i: None)
        store = q._store
        enqueue_s = claim_s = finish_s = 0.0
        done = 0
        while done < tasks:
            t0 = time.perf_counter()
            q.enqueue_many([noop.call(i) for i in range(batch)])
            t1 = time.perf_counter()
            rows = store.claim(q.name, "bench", batch, 60_000)
            t2 = time.perf_counter()
            store.finish_many(_completed(rows))
            t3 = time.perf_counter()
            enqueue_s, claim_s, finish_s = enqueue_s + t1 - t0, claim_s + t2 - t1, finish_s + t3 - t2
            done += len(rows)
        q.close()
    return enqueue_s / done * 1e6, claim_s / done * 1e6, finish_s / done * 1e6


def _completed(rows: list[Any]) -> Any:
    """Each claimed row's run completed (null result, 1 µs)."""
    outcomes = Outcomes()
    for r in rows:
        outcomes.completed(r.id, r.token, b"null", 1)
    return outcomes


def _claimed(task_id: int) -> Any:
    """A claimed row as the store returns it (a tuple before named rows crossed the boundary)."""
    fields = (task_id, 7, "noop", "default", b'{"args":[1],"kwargs":{}}', 0, 1, 3, 0)
    return ClaimedTask(*fields) if ClaimedTask is not None else fields


class _Answers:
    """Stands in for the store when timing the worker's Python: every outcome completes."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.max_payload = store.max_payload

    def finish_many(self, rows: list[Any]) -> list[str]:
        return ["completed"] * len(rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def python_costs(tasks: int = 2000, repeats: int = 15) -> dict[str, float]:
    """µs per task of the worker's own Python, best of `repeats`: start (claimed rows into
    runs), run (a no-op processor), record (outcomes handed over and bookkept)."""
    with tempfile.TemporaryDirectory() as d:
        q = ferroq.Queue(os.path.join(d, "q.db"), durability="normal")
        q.task(name="noop")(lambda i: None)
        worker = ferroq.Worker(q, concurrency=4, handle_signals=False)
        worker.id = "bench"
        if hasattr(worker, "_open_journal"):  # the run journal's notes are part of a run
            worker._journal = worker._open_journal()
        real = q._store
        q._store = _Answers(real)  # type: ignore[assignment]
        rows = [_claimed(i) for i in range(tasks)]
        # The package's collaborators (ferroq.worker), or the one-file worker's methods.
        if hasattr(worker, "_claims"):
            start, execute, flush = worker._claims.start, worker._runners.execute, worker._completer.flush
        else:
            start, execute, flush = worker._start, worker._execute, worker._flush
        best = {"start": float("inf"), "run": float("inf"), "record": float("inf")}
        try:
            for _ in range(repeats):
                t0 = time.perf_counter()
                start(rows)
                t1 = time.perf_counter()
                runs: list[Any] = list(worker._ready)
                worker._ready.clear()
                outcomes = [execute(run) for run in runs]
                t2 = time.perf_counter()
                flush([o for o in outcomes if o is not None])
                t3 = time.perf_counter()
                for key, seconds in (("start", t1 - t0), ("run", t2 - t1), ("record", t3 - t2)):
                    best[key] = min(best[key], seconds / tasks * 1e6)
        finally:
            q._store = real
            q.close()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument(
        "--payload",
        type=int,
        nargs="*",
        default=[],
        help="also measure the store with string arguments of these lengths",
    )
    parser.add_argument(
        "--cycle",
        type=int,
        nargs="*",
        default=[],
        help="also time enqueue, claim and finish in a steady cycle of this many tasks each",
    )
    args = parser.parse_args()
    claim_us, finish_us = store_costs(args.tasks, args.batch)
    print(f"store, {args.batch} a batch:  claim {claim_us:.2f} µs/task   finish {finish_us:.2f} µs/task")
    for size in args.payload:
        claim_us, finish_us = store_costs(min(args.tasks, 60_000), args.batch, size)
        print(f"  {size:>6}-char argument:  claim {claim_us:.2f} µs/task   finish {finish_us:.2f} µs/task")
    for size in args.cycle:
        costs = cycle_costs(min(args.tasks, 60_000), size)
        print(
            f"  cycle of {size:>5}:  enqueue {costs[0]:.2f}   claim {costs[1]:.2f}   finish {costs[2]:.2f} µs/task"
            f"   (the write connection is saturated at {1e6 / sum(costs):,.0f} tasks/s)"
        )
    py = python_costs()
    print(
        "worker Python:        "
        + "   ".join(f"{k} {v:.2f} µs/task" for k, v in py.items())
        + f"   total {sum(py.values()):.2f}"
    )


if __name__ == "__main__":
    main()
