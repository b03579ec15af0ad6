"""A circuit breaker trips within one worker process as the runs end, not when their outcomes
are written: at most ``failure_threshold + concurrency - 1`` calls reach a down upstream."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

import ferroq
from workers import WAIT

pytestmark = pytest.mark.both_engines  # every test runs on SQLite and PostgreSQL

LONG_BACKOFF = ferroq.RetryPolicy(base_delay=60, max_delay=60, jitter=0)
THRESHOLD = 3


def wait_until(condition, timeout: float = WAIT) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.mark.parametrize("concurrency", [1, 4, 8])
def test_calls_to_a_down_upstream_stop_at_threshold_plus_concurrency_minus_one(
    queue: ferroq.Queue, concurrency: int
) -> None:
    pay = queue.group("pay", breaker=ferroq.CircuitBreaker(failure_threshold=THRESHOLD, open_for=60))
    calls: list[int] = []

    @queue.task(resource_group=pay, max_attempts=5, retry=LONG_BACKOFF)
    def charge(n: int) -> None:
        calls.append(n)
        time.sleep(0.01)  # a connection attempt that times out
        raise ConnectionError("payments API down")

    handles = [charge.enqueue(i) for i in range(60)]
    stats = ferroq.Worker(queue, handle_signals=False, concurrency=concurrency).run(until_idle=True)
    assert pay.circuit.state == "open"
    assert len(calls) <= THRESHOLD + concurrency - 1, f"{len(calls)} calls with concurrency {concurrency}"
    called = set(calls)
    untouched = [queue.get(h.id) for n, h in enumerate(handles) if n not in called]
    assert len(untouched) == 60 - len(called)
    assert all(t.status == "pending" and t.attempts == 0 for t in untouched), "given back, attempts kept"
    assert stats.claimed == len(calls) + stats.released, "each claimed task either ran or went back"


@pytest.mark.parametrize("concurrency", [1, 4])
def test_async_processors_stop_at_the_same_bound(queue: ferroq.Queue, concurrency: int) -> None:
    pay = queue.group("pay", breaker=ferroq.CircuitBreaker(failure_threshold=THRESHOLD, open_for=60))
    calls: list[int] = []

    @queue.task(resource_group=pay, max_attempts=5, retry=LONG_BACKOFF)
    async def charge(n: int) -> None:
        calls.append(n)
        await asyncio.sleep(0.01)
        raise ConnectionError("payments API down")

    handles = [charge.enqueue(i) for i in range(40)]
    stats = ferroq.Worker(queue, handle_signals=False, concurrency=concurrency).run(until_idle=True)
    assert pay.circuit.state == "open"
    assert len(calls) <= THRESHOLD + concurrency - 1, f"{len(calls)} calls with concurrency {concurrency}"
    assert stats.claimed == len(calls) + stats.released
    untouched = [queue.get(h.id) for n, h in enumerate(handles) if n not in set(calls)]
    assert all(t.status == "pending" and t.attempts == 0 for t in untouched)


def test_buffered_tasks_are_given_back_when_the_process_trips_not_after_the_flush(queue: ferroq.Queue) -> None:
    """One runner, its whole share buffered: the third failure stops it before the fourth call,
    and the tasks behind it go back with their attempts while the worker still runs."""
    pay = queue.group("pay", breaker=ferroq.CircuitBreaker(failure_threshold=THRESHOLD, open_for=60))
    calls: list[int] = []
    worker = ferroq.Worker(queue, handle_signals=False, concurrency=1, prefetch=30)

    @queue.task(resource_group=pay, max_attempts=5, retry=LONG_BACKOFF)
    def charge(n: int) -> None:
        calls.append(n)
        raise ConnectionError("payments API down")  # fails at once: many runs before a flush

    handles = [charge.enqueue(i) for i in range(30)]
    stats = worker.run(until_idle=True)
    assert stats.claimed == 30, "all 30 were in the worker's buffer, and none was claimed twice"
    assert len(calls) == THRESHOLD
    assert stats.released == 30 - THRESHOLD
    rest = [queue.get(h.id) for h in handles[THRESHOLD:]]
    assert all(t.status == "pending" and t.attempts == 0 for t in rest), "given back, attempts kept"
    assert pay.circuit.state == "open"


def test_half_open_lets_k_probes_through_and_a_success_closes_it(queue: ferroq.Queue, tmp_path: Path) -> None:
    probes = 2
    pay = queue.group(
        "pay", breaker=ferroq.CircuitBreaker(failure_threshold=THRESHOLD, open_for=0.3, half_open_probes=probes)
    )
    healthy = tmp_path / "healthy"
    calls: list[int] = []
    running = 0
    most_probes_at_once = 0
    lock = threading.Lock()

    @queue.task(resource_group=pay, max_attempts=10, retry=ferroq.RetryPolicy(base_delay=0, max_delay=0, jitter=0))
    def charge(n: int) -> int:
        nonlocal running, most_probes_at_once
        probing = pay.circuit.state == "half_open"
        with lock:
            calls.append(n)
            running += 1
            if probing:
                most_probes_at_once = max(most_probes_at_once, running)
        try:
            time.sleep(0.01)
            if not healthy.exists():
                raise ConnectionError("payments API down")
            return n
        finally:
            with lock:
                running -= 1

    handles = [charge.enqueue(i) for i in range(40)]

    def run() -> ferroq.WorkerStats:
        return ferroq.Worker(queue, handle_signals=False, concurrency=8).run(until_idle=True)

    run()
    assert pay.circuit.state == "open"
    assert len(calls) <= THRESHOLD + 8 - 1

    # Still down when it turns half-open: the probes fail and open it again.
    wait_until(lambda: pay.circuit.state == "half_open")
    before = len(calls)
    run()
    assert pay.circuit.state == "open"
    assert len(calls) - before <= probes, "only the probes reached the upstream"

    healthy.touch()
    wait_until(lambda: pay.circuit.state == "half_open")
    stats = ferroq.Worker(queue, handle_signals=False, concurrency=8).run(until_empty=True)
    assert pay.circuit.state == "closed"
    assert most_probes_at_once <= probes
    assert stats.completed == 40
    assert [h.result(timeout=WAIT) for h in handles] == list(range(40))
    kinds = [(e.detail["from"], e.detail["to"]) for e in pay.circuit.transitions()]
    assert kinds == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


def test_the_file_decides_when_its_breaker_does_not_open(queue: ferroq.Queue) -> None:
    """This process declared a threshold of 3, but the file holds another declaration's 100:
    the process holds the group after 3 failures only until the file's verdict, then follows
    the file (nothing stays held, every task runs)."""
    queue.group("pay", breaker=ferroq.CircuitBreaker(failure_threshold=THRESHOLD))
    ferroq.Queue(queue.path).group("pay", breaker=ferroq.CircuitBreaker(failure_threshold=100))
    calls: list[int] = []

    @queue.task(resource_group="pay", max_attempts=1)
    def charge(n: int) -> None:
        calls.append(n)
        raise ConnectionError("payments API down")

    for i in range(20):
        charge.enqueue(i)
    stats = ferroq.Worker(queue, handle_signals=False, concurrency=2).run(until_idle=True)
    assert sorted(calls) == list(range(20))
    assert stats.dead == 20
    assert queue.circuit("pay").state == "closed"
