"""asv benchmarks for ferroq: the scenarios of ``ferroq.bench`` and ``benches/test_benchmarks.py``
tracked over commits (``cd benches && asv run``; see ../asv.conf.json).

Every benchmark gets its own queue in a fresh temporary directory. asv (asv_runner >= 0.3)
re-runs ``setup`` before every timed call, and older runners do with ``number = 1``, which is
set wherever a call consumes state (claiming, draining), so each timed call starts from the
same state. Figures are per call: one enqueue, 1,000 tasks, one batch of 100, 10,000 tasks.

Queues that start with pending tasks are copied from a database built once per run by
``setup_cache`` (in asv's cache directory), which is both faster than enqueueing in every
``setup`` and keeps enqueueing out of the peak memory of the drain benchmark.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import ferroq

try:
    from ferroq._core import Outcomes
except ImportError:  # builds before named records crossed the boundary
    Outcomes = None  # type: ignore[assignment,misc]

DB = "bench.db"


def _noop(i: int) -> None:
    return None


def _open(directory: str, durability: str) -> tuple[ferroq.Queue, Any]:
    q = ferroq.Queue(os.path.join(directory, DB), durability=durability)
    return q, q.task(name="noop")(_noop)


def _build(tasks: int) -> str:
    """A database holding ``tasks`` pending no-op tasks, in the current directory (asv's
    setup_cache directory, kept while the benchmarks that use it run)."""
    directory = os.path.abspath(f"pending-{tasks}")
    os.makedirs(directory, exist_ok=True)
    q, noop = _open(directory, "normal")
    for start in range(0, tasks, 50_000):
        q.enqueue_many(noop.call(i) for i in range(start, min(tasks, start + 50_000)))
    q.close()
    return directory


def _clone(source: str) -> str:
    """A fresh temporary directory with a copy of the database in ``source``."""
    directory = tempfile.mkdtemp(prefix="ferroq-asv-")
    for suffix in ("", "-wal"):  # no -wal left after close(); copied anyway if there is one
        if os.path.exists(os.path.join(source, DB + suffix)):
            shutil.copyfile(os.path.join(source, DB + suffix), os.path.join(directory, DB + suffix))
    return directory


def _drain(q: ferroq.Queue, expected: int) -> None:
    stats = ferroq.Worker(q, concurrency=4, handle_signals=False).run(until_idle=True)
    if stats.completed != expected:
        raise RuntimeError(f"drained {stats.completed} tasks, expected {expected}")


class _TempQueue:
    """An empty queue in a temporary directory, per timed call."""

    durability = "normal"

    def setup(self, *params: Any) -> None:
        self.dir = tempfile.mkdtemp(prefix="ferroq-asv-")
        self.q, self.noop = _open(self.dir, self.durability)

    def teardown(self, *params: Any) -> None:
        self.q.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Enqueue(_TempQueue):
    """One ``task.enqueue`` (one commit), durability full (fsync'd) and normal."""

    params = ["full", "normal"]
    param_names = ["durability"]
    number = 1
    repeat = (10, 50, 5.0)

    def setup(self, durability: str) -> None:
        self.durability = durability
        super().setup()
        self.noop.enqueue(0)  # connection open, schema read: time the steady state

    def time_enqueue(self, durability: str) -> None:
        self.noop.enqueue(1)


class EnqueueMany(_TempQueue):
    """``queue.enqueue_many`` of 1,000 tasks (one transaction)."""

    number = 1
    repeat = (5, 20, 5.0)

    def setup(self) -> None:
        super().setup()
        self.q.enqueue_many(self.noop.call(i) for i in range(10))

    def time_enqueue_many_1000(self) -> None:
        self.q.enqueue_many(self.noop.call(i) for i in range(1000))


class ClaimAck:
    """Claim a batch of 100 and acknowledge it, straight through the store (the worker's two
    transactions without the worker), from a queue with 10,000 pending tasks."""

    number = 1
    repeat = (10, 50, 5.0)
    timeout = 120

    def setup_cache(self) -> str:
        return _build(10_000)

    def setup(self, source: str) -> None:
        self.dir = _clone(source)
        self.q, _ = _open(self.dir, "normal")
        self.store = self.q._store
        self._claim_ack()  # warm the connection and the page cache

    def teardown(self, source: str) -> None:
        self.q.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _claim_ack(self) -> None:
        rows = self.store.claim(self.q.name, "bench", 100, 30_000)
        if Outcomes is not None:
            outcomes = Outcomes()
            for r in rows:
                outcomes.completed(r.id, r.token, b"null")
            self.store.finish_many(outcomes)
            return
        # Older builds took tuples, which grew over time; asv runs this file against old commits too.
        for extra in ((False, None, None), (False, None), ()):
            try:
                self.store.finish_many([(r[0], r[1], b"null", None, None, *extra) for r in rows])
                break
            except TypeError:
                continue
        if len(rows) != 100:
            raise RuntimeError(f"claimed {len(rows)} tasks, expected 100")

    def time_claim_ack_100(self, source: str) -> None:
        self._claim_ack()


class Drain:
    """A worker (4 threads) draining 10,000 pending no-op tasks; start-up of the worker is
    inside the timing, as in test_benchmarks.py."""

    params = ["full", "normal"]
    param_names = ["durability"]
    number = 1
    repeat = (3, 5, 10.0)
    warmup_time = 0.0
    timeout = 300

    def setup_cache(self) -> str:
        return _build(10_000)

    def setup(self, source: str, durability: str) -> None:
        self.dir = _clone(source)
        self.q, _ = _open(self.dir, durability)

    def teardown(self, source: str, durability: str) -> None:
        self.q.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def time_drain_10k(self, source: str, durability: str) -> None:
        _drain(self.q, 10_000)


class PeakMemEnqueueMany(_TempQueue):
    """Peak resident memory of the process (interpreter, ferroq, and the call) through one
    ``enqueue_many`` of 100,000 tasks from a generator."""

    timeout = 300

    def peakmem_enqueue_many_100k(self) -> None:
        self.q.enqueue_many(self.noop.call(i) for i in range(100_000))


class PeakMemDrain:
    """Peak resident memory of the process through a worker (4 threads) draining 20,000
    pending no-op tasks (enqueued by setup_cache in another process)."""

    timeout = 300

    def setup_cache(self) -> str:
        return _build(20_000)

    def setup(self, source: str) -> None:
        self.dir = _clone(source)
        self.q, _ = _open(self.dir, "normal")

    def teardown(self, source: str) -> None:
        self.q.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def peakmem_drain_20k(self, source: str) -> None:
        _drain(self.q, 20_000)
