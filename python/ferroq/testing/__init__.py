"""Running tasks in tests: ``eager`` (each enqueue runs at once) and ``drain`` (run a worker
until the queue is empty), both in the calling thread, and the pytest fixture
``ferroq_queue`` (``ferroq.testing.pytest_plugin``, registered when ferroq is installed).

Both run a real ``Worker``, not a stand-in: the args go through the queue's serializer and
back, a failure is classified by the task's ``RetryPolicy`` (``Retry``, ``Fail``, fatal
classes, ``max_attempts``), a result is encoded and stored, and the task's history is what a
worker in production writes. What differs, so that a test neither sleeps nor hangs:

- the worker runs in the calling thread (one runner thread, ``concurrency=1``, so tasks run
  one at a time in claim order) with signal handling off;
- under ``eager`` (and ``drain(skip_backoff=True)``) a retry is due at once: the backoff
  (and a ``Retry(delay=...)``) is not waited. A ``RateLimited`` still holds its group as in
  production (it gives the attempt back, so running it again at once would loop forever).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator

from .._core import ManualClock
from ..errors import DrainTimeout, InvalidArgument
from ..queue import Queue
from ..worker import Worker, WorkerStats
from ..worker.failures import Outcomes
from ..worker.runs import Outcome, Run

__all__ = ["DrainTimeout", "ManualClock", "drain", "eager"]


class _RetryAtOnce(Outcomes):
    """The worker's outcomes, but a retry is due now instead of after its backoff."""

    __slots__ = ()

    def failure(self, run: Run, exc: BaseException, tb: str | None, *, fatal: bool) -> Outcome:
        outcome = super().failure(run, exc, tb, fatal=fatal)
        run_, data, error, delay, exc_, counts, hold = outcome
        if delay is None or hold is not None:  # dead, or a rate limit holding its group
            return outcome
        return (run_, data, error, 0, exc_, counts, hold)


class _RetryAtOnceWorker(Worker):
    _outcomes_type = _RetryAtOnce


def _test_worker(queue: Queue, skip_backoff: bool) -> Worker:
    if not isinstance(queue, Queue):
        raise InvalidArgument(f"needs a ferroq.Queue, got {queue!r}")
    kind = _RetryAtOnceWorker if skip_backoff else Worker
    # One runner: tasks run one at a time, in the order they are claimed. No signal
    # handlers: the test runner owns SIGINT.
    return kind(queue, concurrency=1, handle_signals=False, poll_interval=0.05)


def drain(queue: Queue, *, timeout: float | None = 30.0, skip_backoff: bool = False) -> WorkerStats:
    """Runs a worker in the calling thread until ``queue`` has no pending or running task,
    waiting for delayed tasks and retries to come due (``skip_backoff=True``: retries are
    due at once). Returns what the worker did.

    Raises ``DrainTimeout`` if the queue is not empty after ``timeout`` seconds (None: no
    limit); a task still running then is given back (pending again) and its thread is left
    to finish on its own.
    """
    worker = _test_worker(queue, skip_backoff)
    if timeout is None:
        return worker.run(until_empty=True)
    worker.shutdown_grace = 0.0  # on a timeout: give running tasks back at once
    expired = threading.Event()

    def give_up() -> None:
        expired.set()
        worker.stop()

    timer = threading.Timer(timeout, give_up)
    timer.daemon = True
    timer.start()
    try:
        stats = worker.run(until_empty=True)
    finally:
        timer.cancel()
    if expired.is_set():
        counts = queue.counts()
        if counts["pending"] or counts["running"]:
            raise DrainTimeout(
                f"queue {queue.name!r} still has {counts['pending']} pending and "
                f"{counts['running']} running task(s) after {timeout}s"
            )
    return stats


class _Eager:
    """Runs the queue's worker after each enqueue until nothing is ready (see ``eager``)."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.worker = _test_worker(queue, skip_backoff=True)
        self.lock = threading.Lock()
        self.wanted = False

    def enqueue_one(self, call: Any) -> Any:
        handle = Queue._enqueue_one(self.queue, call)
        self.run()
        return handle

    def enqueue_many(self, calls: Any) -> list[int]:
        ids = Queue.enqueue_many(self.queue, calls)
        self.run()
        return ids

    def run(self) -> None:
        """Runs the worker until idle, unless it is running already (an enqueue from a
        processor, or from another thread): then that run, or the one it is told to start
        over, picks the new task up. The flag is set before the lock is tried and read
        after it is released, so no enqueue is left behind."""
        self.wanted = True
        while self.wanted and self.lock.acquire(blocking=False):
            try:
                self.wanted = False
                self.worker.run(until_idle=True)
            finally:
                self.lock.release()


@contextmanager
def eager(queue: Queue) -> Iterator[Queue]:
    """Within the block, every enqueue on ``queue`` (``task.enqueue``, ``queue.enqueue``,
    ``enqueue_many``) stores the task for real, then runs a worker in the calling thread
    until no task is ready and none is running, so ``handle.result()`` is there when the
    enqueue returns. Tasks the processors enqueue run in the same pass; retries run at once
    (the backoff is not waited); a task delayed (``delay``/``run_at``) or held by its group
    (rate limit, open breaker, pause) stays pending: ``drain`` waits for those."""
    runner = _Eager(queue)
    # Instance attributes shadow the two methods every enqueue goes through, for this queue
    # object only and only within the block: enqueueing pays nothing outside it.
    if "_enqueue_one" in vars(queue) or "enqueue_many" in vars(queue):
        raise InvalidArgument(f"{queue!r} is already in an eager block")
    setattr(queue, "_enqueue_one", runner.enqueue_one)  # noqa: B010 - mypy refuses assigning a method
    setattr(queue, "enqueue_many", runner.enqueue_many)  # noqa: B010
    try:
        yield queue
    finally:
        vars(queue).pop("_enqueue_one", None)
        vars(queue).pop("enqueue_many", None)
