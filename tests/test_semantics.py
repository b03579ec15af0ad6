"""The queue's semantics, one test per rule: ordering, delays, retries, unique keys,
results and retention, timeouts, unregistered processors.

Nothing here asserts how fast the machine is. Time-based rules are checked against the
times the queue itself stored (run_at, history), which follow from the rules exactly.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import ferroq
from workers import BackgroundWorker

pytestmark = pytest.mark.both_engines  # every test runs on SQLite and PostgreSQL

WAIT = 30.0  # generous: waits end as soon as the condition holds
NO_BACKOFF = ferroq.RetryPolicy(base_delay=0, jitter=0)


def run_idle(q: ferroq.Queue, concurrency: int = 1) -> ferroq.WorkerStats:
    """Runs what is ready now (delayed tasks stay pending), then returns."""
    return ferroq.Worker(q, concurrency=concurrency).run(until_idle=True)


def run_empty(q: ferroq.Queue, concurrency: int = 1) -> ferroq.WorkerStats:
    """Runs until no task is pending or running, waiting for delayed ones."""
    return ferroq.Worker(q, concurrency=concurrency).run(until_empty=True)


def run_empty_async(q: ferroq.Queue, concurrency: int = 1) -> ferroq.WorkerStats:
    """``run_empty`` for async processors. The worker never closes its event loop (a bug,
    see test_api.py::test_worker_closes_its_event_loop); collect it here with its
    ResourceWarning silenced so it does not fail some unrelated later test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        stats = run_empty(q, concurrency)
        for thread in threading.enumerate():
            if thread.name == "ferroq-asyncio":
                thread.join(WAIT)
        gc.collect()
        gc.collect()
    return stats


def ms(dt: datetime) -> int:
    """A stored time back to the epoch milliseconds it was stored as."""
    return round(dt.timestamp() * 1000)


def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


class QuotaExceeded(Exception):
    """A user-defined error, to check its full name is stored."""


# -- (1) ordering ----------------------------------------------------------------------------


def test_higher_priority_first_then_fifo(queue: ferroq.Queue) -> None:
    order: list[str] = []

    @queue.task
    def record(tag: str) -> None:
        order.append(tag)

    plan = [
        (0, "a"),
        (5, "b"),
        (0, "c"),
        (-3, "d"),
        (5, "e"),
        (10, "f"),
        (0, "g"),
        (ferroq.PRIORITY_MIN, "min"),
        (ferroq.PRIORITY_MAX, "max"),
        (-3, "h"),
    ]
    for priority, tag in plan:
        record.using(priority=priority).enqueue(tag)
    run_idle(queue)
    assert order == ["max", "f", "b", "e", "a", "c", "g", "d", "h", "min"]


def test_fifo_within_a_priority_for_many_tasks(queue: ferroq.Queue) -> None:
    order: list[int] = []

    @queue.task
    def record(i: int) -> None:
        order.append(i)

    for i in range(0, 100, 2):  # one at a time and in batches
        record.enqueue(i)
        queue.enqueue_many([record.call(i + 1)])
    run_idle(queue)
    assert order == list(range(100))


def test_fifo_and_increasing_ids_after_deletions(queue: ferroq.Queue) -> None:
    order: list[int] = []

    @queue.task
    def record(i: int) -> None:
        order.append(i)

    first = [record.enqueue(i).id for i in range(5)]
    run_idle(queue)
    assert queue.prune(ferroq.Retention(completed_count=0)) == 5
    assert queue.counts() == {status: 0 for status in ferroq.STATUSES}  # the table is empty

    second = [record.enqueue(i).id for i in range(5, 10)]
    assert min(second) > max(first), "ids were reused after deleting every task"
    assert second == sorted(second)

    # Delete only some (the oldest three), then enqueue again.
    run_idle(queue)
    assert queue.prune(ferroq.Retention(completed_count=2)) == 3
    third = [record.enqueue(i).id for i in range(10, 15)]
    assert min(third) > max(second)
    run_idle(queue)
    assert order == list(range(15))


# -- (2) delayed tasks -------------------------------------------------------------------------


def test_delayed_tasks_are_not_claimed_early(queue: ferroq.Queue) -> None:
    ran: list[str] = []

    @queue.task
    def job(tag: str) -> None:
        ran.append(tag)

    later = time.time() + 3600
    delayed = [
        job.using(delay=3600).enqueue("delay"),
        job.using(run_at=later).enqueue("run_at-epoch"),
        job.using(run_at=datetime.fromtimestamp(later, tz=timezone.utc)).enqueue("run_at-datetime"),
    ]
    ready = job.enqueue("now")

    stats = run_idle(queue)
    assert ran == ["now"]
    assert stats.claimed == 1
    assert ready.status() == "completed"
    for h in delayed:
        info = h.info()
        assert info.status == "pending"
        assert info.attempts == 0
        assert info.started_at is None
        assert info.run_at > datetime.now(timezone.utc) + timedelta(minutes=50)


def test_delayed_tasks_run_once_due(queue: ferroq.Queue) -> None:
    ran: dict[str, float] = {}

    @queue.task
    def job(tag: str) -> None:
        ran[tag] = time.time()

    in_past = job.using(run_at=time.time() - 60).enqueue("past")
    enqueued_at = time.time()
    handles = {
        "delay": job.using(delay=0.3).enqueue("delay"),
        "run_at": job.using(run_at=enqueued_at + 0.3).enqueue("run_at"),
        "run_at-datetime": job.using(run_at=datetime.fromtimestamp(enqueued_at + 0.3, tz=timezone.utc)).enqueue(
            "run_at-datetime"
        ),
    }
    run_empty(queue)
    assert in_past.status() == "completed"
    for tag, h in handles.items():
        info = h.info()
        assert info.status == "completed", tag
        assert ms(info.run_at) >= int((enqueued_at + 0.3) * 1000), tag
        assert info.started_at is not None and info.started_at >= info.run_at, tag
        assert ran[tag] >= info.run_at.timestamp() - 0.001, tag


# -- (6) retries ---------------------------------------------------------------------------------


def test_failing_task_retries_with_backoff_then_dead(queue: ferroq.Queue) -> None:
    attempts: list[int] = []

    @queue.task(max_attempts=3, retry=ferroq.RetryPolicy(base_delay=0.05, max_delay=10, jitter=0))
    def always_fails() -> None:
        attempts.append(ferroq.current_task().attempt)
        raise ConnectionError("upstream down")

    h = always_fails.enqueue()
    stats = run_empty(queue)
    assert attempts == [1, 2, 3]
    assert (stats.claimed, stats.retried, stats.dead, stats.completed) == (3, 2, 1, 0)

    info = h.info()
    assert info.status == "dead"
    assert info.attempts == 3
    assert info.finished_at is not None
    assert info.last_error is not None and info.last_error.type == "ConnectionError"

    history = queue.history(h.id)
    assert [(t.from_status, t.to_status) for t in history] == [
        (None, "pending"),
        ("pending", "running"),
        ("running", "pending"),
        ("pending", "running"),
        ("running", "pending"),
        ("pending", "running"),
        ("running", "dead"),
    ]
    # Each retry waited out its backoff: 50 ms after the first failure, 100 ms after the second.
    for fail_index, backoff_ms in ((2, 50), (4, 100)):
        failed_at, next_claim = history[fail_index].at, history[fail_index + 1].at
        assert ms(next_claim) - ms(failed_at) >= backoff_ms
    with pytest.raises(ferroq.TaskFailed):
        h.result(timeout=WAIT)


def test_retry_then_success(queue: ferroq.Queue) -> None:
    calls: list[int] = []

    @queue.task(max_attempts=5, retry=NO_BACKOFF)
    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OSError("transient")
        return "finally"

    h = flaky.enqueue()
    run_empty(queue)
    assert h.result(timeout=WAIT) == "finally"
    info = h.info()
    assert info.attempts == 3
    assert info.last_error is not None and info.last_error.message == "transient"  # the last failure is kept


def test_fail_goes_dead_at_once(queue: ferroq.Queue) -> None:
    calls: list[int] = []

    @queue.task(max_attempts=5, retry=NO_BACKOFF)
    def give_up() -> None:
        calls.append(1)
        raise ferroq.Fail("input is invalid, retrying will not help")

    h = give_up.enqueue()
    run_empty(queue)
    info = h.info()
    assert calls == [1]
    assert info.status == "dead" and info.attempts == 1
    assert info.last_error is not None
    assert info.last_error.type == "ferroq.errors.Fail"
    assert info.last_error.message == "input is invalid, retrying will not help"


def test_fatal_exception_goes_dead_at_once(queue: ferroq.Queue) -> None:
    @queue.task(max_attempts=5, retry=ferroq.RetryPolicy(base_delay=0, jitter=0, fatal=(QuotaExceeded,)))
    def over_quota() -> None:
        raise QuotaExceeded("quota exceeded")

    @queue.task(max_attempts=3, retry=ferroq.RetryPolicy(base_delay=0, jitter=0, fatal=(QuotaExceeded,)))
    def other_error() -> None:
        raise RuntimeError("not fatal")

    fatal_h, other_h = over_quota.enqueue(), other_error.enqueue()
    run_empty(queue)
    assert fatal_h.info().status == "dead" and fatal_h.info().attempts == 1
    assert other_h.info().status == "dead" and other_h.info().attempts == 3  # retried until out of attempts


def test_retry_on_makes_other_exceptions_fatal(queue: ferroq.Queue) -> None:
    policy = ferroq.RetryPolicy(base_delay=0, jitter=0, retry_on=(ConnectionError,))

    @queue.task(max_attempts=3, retry=policy)
    def listed() -> None:
        raise ConnectionError("retried")

    @queue.task(max_attempts=3, retry=policy)
    def unlisted() -> None:
        raise ValueError("fatal")

    listed_h, unlisted_h = listed.enqueue(), unlisted.enqueue()
    run_empty(queue)
    assert listed_h.info().attempts == 3
    assert unlisted_h.info().attempts == 1
    assert listed_h.status() == unlisted_h.status() == "dead"


def test_retry_signal_delays_the_next_run(queue: ferroq.Queue) -> None:
    failed_at: list[float] = []

    # The policy's own backoff is an hour: the Retry delay must win.
    @queue.task(max_attempts=3, retry=ferroq.RetryPolicy(base_delay=3600, max_delay=3600))
    def later() -> str:
        if not failed_at:
            failed_at.append(time.time())
            raise ferroq.Retry(delay=0.3, reason="not ready yet")
        return "ready"

    h = later.enqueue()
    run_empty(queue)
    assert h.result(timeout=WAIT) == "ready"

    info = h.info()
    assert info.attempts == 2  # a Retry still counts as an attempt
    history = queue.history(h.id)
    assert [(t.from_status, t.to_status) for t in history] == [
        (None, "pending"),
        ("pending", "running"),
        ("running", "pending"),
        ("pending", "running"),
        ("running", "completed"),
    ]
    retry = history[2]
    assert retry.error is not None
    assert retry.error.type == "ferroq.errors.Retry" and retry.error.message == "not ready yet"
    # run_at after the Retry is the failure time + 300 ms (times are stored in ms).
    assert ms(info.run_at) >= int(failed_at[0] * 1000) + 300
    assert ms(info.run_at) == ms(retry.at) + 300
    assert history[3].at >= info.run_at  # the second run did not start early
    assert info.run_at < retry.at + timedelta(seconds=60)  # not the policy's hour


def test_retry_signal_counts_against_max_attempts(queue: ferroq.Queue) -> None:
    @queue.task(max_attempts=2)
    def forever() -> None:
        raise ferroq.Retry(delay=0)

    h = forever.enqueue()
    run_empty(queue)
    assert h.info().status == "dead"
    assert h.info().attempts == 2


def test_stored_error_keeps_type_message_traceback(queue: ferroq.Queue) -> None:
    @queue.task(max_attempts=1)
    def charge(customer: str) -> None:
        try:
            {}["card"]
        except KeyError as e:
            raise QuotaExceeded(f"customer {customer} is over quota") from e

    h = charge.enqueue("c-42")
    run_empty(queue)
    err = h.info().last_error
    assert err is not None
    assert err.type == f"{QuotaExceeded.__module__}.QuotaExceeded"
    assert err.message == "customer c-42 is over quota"
    assert err.traceback is not None
    assert "Traceback (most recent call last)" in err.traceback
    assert "in charge" in err.traceback
    assert 'raise QuotaExceeded(f"customer {customer} is over quota") from e' in err.traceback
    assert "KeyError: 'card'" in err.traceback  # the cause is kept too
    assert queue.history(h.id)[-1].error == err


def test_async_processor_error_keeps_its_own_timeout_error(queue: ferroq.Queue) -> None:
    """An async processor that raises TimeoutError itself (no task timeout set) must have
    that error stored as raised, not replaced by a made-up 'exceeded its timeout' error."""

    @queue.task(max_attempts=1)
    async def call_upstream() -> None:
        await asyncio.sleep(0)
        raise TimeoutError("upstream did not answer")

    h = call_upstream.enqueue()
    run_empty_async(queue)
    err = h.info().last_error
    assert err is not None
    assert err.type == "TimeoutError"
    assert err.message == "upstream did not answer"
    assert err.traceback is not None and "call_upstream" in err.traceback


# -- (7) unique keys -----------------------------------------------------------------------------


def test_unique_key_held_by_pending_task_returns_existing_id(queue: ferroq.Queue) -> None:
    @queue.task
    def sync_account(account: str) -> str:
        return account

    first = sync_account.using(unique_key="acct-1").enqueue("first")
    again = sync_account.using(unique_key="acct-1").enqueue("second")
    other = sync_account.using(unique_key="acct-2").enqueue("other")
    assert first.created is True
    assert again.created is False and again.id == first.id
    assert other.created is True and other.id != first.id
    assert queue.counts()["pending"] == 2
    assert queue.get(first.id).args == ["first"]  # the existing task is unchanged

    ids = queue.enqueue_many(
        [
            sync_account.using(unique_key="acct-1").call("batch"),
            sync_account.using(unique_key="acct-3").call("batch"),
            sync_account.using(unique_key="acct-3").call("batch-dup"),
        ]
    )
    assert ids[0] == first.id
    assert ids[1] == ids[2]
    assert queue.counts()["pending"] == 3


def test_unique_key_held_by_running_task_returns_existing_id(queue: ferroq.Queue) -> None:
    started, release = threading.Event(), threading.Event()

    @queue.task
    def slow() -> None:
        started.set()
        release.wait(WAIT)

    first = slow.using(unique_key="k").enqueue()
    with BackgroundWorker(queue, concurrency=1):
        assert started.wait(WAIT)
        assert first.status() == "running"
        again = slow.using(unique_key="k").enqueue()
        release.set()
        first.result(timeout=WAIT)
    assert again.created is False and again.id == first.id


def test_finished_tasks_do_not_hold_their_unique_key(queue: ferroq.Queue) -> None:
    @queue.task(max_attempts=1)
    def job(fail: bool) -> str:
        if fail:
            raise RuntimeError("dead")
        return "ok"

    completed = job.using(unique_key="done").enqueue(False)
    dead = job.using(unique_key="dead").enqueue(True)
    cancelled = job.using(unique_key="cancelled").enqueue(False)
    cancelled.cancel()
    run_empty(queue)
    assert (completed.status(), dead.status()) == ("completed", "dead")

    for key, old in (("done", completed), ("dead", dead), ("cancelled", cancelled)):
        new = job.using(unique_key=key).enqueue(False)
        assert new.created is True, key
        assert new.id != old.id, key

    # A requeue that would make two unfinished tasks share a key is refused (a refused
    # action, as for a task in the wrong status: `ferroq retry` exits 1).
    with pytest.raises(ferroq.InvalidTransition):
        queue.requeue(dead.id)


# -- (8) results and retention -------------------------------------------------------------------


def test_results_are_stored(queue: ferroq.Queue) -> None:
    @queue.task
    def produce(kind: str) -> Any:
        return {"none": None, "list": [1, "two", 3.0], "str": "é", "int": 2**62}[kind]

    handles = {k: produce.enqueue(k) for k in ("none", "list", "str", "int")}
    run_empty(queue)
    assert {k: h.result(timeout=WAIT) for k, h in handles.items()} == {
        "none": None,
        "list": [1, "two", 3.0],
        "str": "é",
        "int": 2**62,
    }
    # Another Queue object on the same file reads the same results.
    other = ferroq.Queue(queue.path, durability="normal")
    assert other.get(handles["list"].id).result == [1, "two", 3.0]


def test_unstorable_result_goes_dead_with_payload_error(queue_location: Path | str) -> None:
    q = ferroq.Queue(queue_location, durability="normal", max_payload=1000)

    @q.task(max_attempts=3)
    def returns_set() -> Any:
        return {1, 2}

    @q.task(max_attempts=3)
    def returns_too_much() -> str:
        return "x" * 5000

    not_json, too_big = returns_set.enqueue(), returns_too_much.enqueue()
    run_empty(q)
    for h, fragment in ((not_json, "set"), (too_big, "1000")):
        info = h.info()
        assert info.status == "dead"
        assert info.attempts == 1  # not retried: the same result would fail again
        assert info.result is None
        assert info.last_error is not None
        assert "PayloadError" in info.last_error.type
        assert fragment in info.last_error.message


def test_retention_prunes_by_count_and_age(queue: ferroq.Queue) -> None:
    @queue.task(max_attempts=1)
    def job(i: int, fail: bool = False) -> int:
        if fail:
            raise RuntimeError("dead")
        return i

    done = [job.enqueue(i) for i in range(5)]
    dead = [job.enqueue(i, fail=True) for i in range(2)]
    run_empty(queue)
    waiting = job.using(delay=3600).enqueue(99)

    # Keep the newest 2 completed; dead ones untouched.
    assert queue.prune(ferroq.Retention(completed_count=2)) == 3
    for h in done[:3]:
        with pytest.raises(ferroq.UnknownTask):
            h.info()
        with pytest.raises(ferroq.UnknownTask):
            queue.history(h.id)  # the history goes with it
    assert [h.result(timeout=WAIT) for h in done[3:]] == [3, 4]
    assert queue.counts() == {"pending": 1, "running": 0, "completed": 2, "dead": 2, "cancelled": 0}

    # Dead tasks younger than dead_age stay; once old enough they go.
    assert queue.prune(ferroq.Retention(dead_age=3600)) == 0
    time.sleep(0.1)
    assert queue.prune(ferroq.Retention(dead_age=0.05)) == 2
    for h in dead:
        with pytest.raises(ferroq.UnknownTask):
            h.info()

    # Unfinished tasks are never pruned; a queue without retention prunes nothing by default.
    assert queue.prune(ferroq.Retention(completed_count=0, dead_count=0)) == 2
    assert queue.prune() == 0
    assert waiting.status() == "pending"
    assert queue.counts() == {"pending": 1, "running": 0, "completed": 0, "dead": 0, "cancelled": 0}


def test_worker_applies_the_queue_retention(queue_location: Path | str) -> None:
    q = ferroq.Queue(queue_location, durability="normal", retention=ferroq.Retention(completed_count=1, interval=0.05))
    ran: list[int] = []

    @q.task
    def job(i: int) -> int:
        ran.append(i)
        return i

    with BackgroundWorker(q, concurrency=1):
        handles = [job.enqueue(i) for i in range(5)]
        wait_for(lambda: len(ran) == 5 and q.counts()["completed"] == 1, "the worker to prune")
    assert ran == list(range(5))
    assert handles[-1].result(timeout=WAIT) == 4
    with pytest.raises(ferroq.UnknownTask):
        handles[0].info()


# -- timeouts --------------------------------------------------------------------------------------


def test_sync_timeout_fails_the_run_and_retries_per_policy(queue: ferroq.Queue) -> None:
    calls: list[int] = []

    @queue.task(timeout=0.2, max_attempts=2, retry=NO_BACKOFF)
    def slow() -> str:
        calls.append(1)
        time.sleep(1)
        return "too late"

    h = slow.enqueue()
    stats = run_empty(queue)
    info = h.info()
    assert len(calls) == 2
    assert info.status == "dead"  # the late return was discarded
    assert info.attempts == 2
    assert info.result is None
    assert info.last_error is not None and info.last_error.type == "TimeoutError"
    assert "timeout" in info.last_error.message
    assert [(t.from_status, t.to_status) for t in queue.history(h.id)][-3:] == [
        ("running", "pending"),
        ("pending", "running"),
        ("running", "dead"),
    ]
    assert (stats.retried, stats.dead, stats.completed) == (1, 1, 0)


def test_sync_timeout_respects_a_fatal_policy(queue: ferroq.Queue) -> None:
    """RetryPolicy(fatal=(TimeoutError,)) must make a timed-out run dead at once, as it does
    for async processors and for any exception the processor raises."""
    calls: list[int] = []

    @queue.task(timeout=0.2, max_attempts=3, retry=ferroq.RetryPolicy(base_delay=0, jitter=0, fatal=(TimeoutError,)))
    def slow() -> None:
        calls.append(1)
        time.sleep(0.6)

    h = slow.enqueue()
    run_empty(queue)
    info = h.info()
    assert info.last_error is not None and info.last_error.type == "TimeoutError"
    assert info.status == "dead"
    assert info.attempts == 1, f"a fatal timeout was retried: {len(calls)} runs"


def test_async_timeout_cancels_and_retries_per_policy(queue: ferroq.Queue) -> None:
    cancelled: list[int] = []

    @queue.task(timeout=0.2, max_attempts=2, retry=NO_BACKOFF)
    async def slow() -> str:
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            cancelled.append(ferroq.current_task().attempt)
            raise
        return "too late"

    h = slow.enqueue()
    stats = run_empty_async(queue)
    info = h.info()
    assert cancelled == [1, 2]
    assert info.status == "dead"
    assert info.attempts == 2
    assert info.last_error is not None and info.last_error.type == "TimeoutError"
    assert "cancelled" in info.last_error.message
    assert (stats.retried, stats.dead) == (1, 1)


def test_async_timeout_with_fatal_policy_goes_dead_at_once(queue: ferroq.Queue) -> None:
    @queue.task(timeout=0.2, max_attempts=3, retry=ferroq.RetryPolicy(base_delay=0, jitter=0, fatal=(TimeoutError,)))
    async def slow() -> None:
        await asyncio.sleep(1)

    h = slow.enqueue()
    run_empty_async(queue)
    assert h.info().status == "dead"
    assert h.info().attempts == 1


# -- unregistered processors ---------------------------------------------------------------------


def _producer_and_consumer(queue_location: Path | str) -> tuple[ferroq.Queue, ferroq.Queue, list[int]]:
    """A producer that knows jobs.orphan and a consumer (an older worker) that does not."""
    producer = ferroq.Queue(queue_location, durability="normal")
    consumer = ferroq.Queue(queue_location, durability="normal")

    @producer.task(name="jobs.known")
    def known_p(i: int) -> int:
        return i

    @producer.task(name="jobs.orphan", max_attempts=5)
    def orphan_p() -> None:
        raise AssertionError("never runs: the consumer does not know this task")

    ran: list[int] = []

    @consumer.task(name="jobs.known")
    def known_c(i: int) -> int:
        ran.append(i)
        return i * 10

    return producer, consumer, ran


def test_task_without_a_processor_in_the_worker_is_given_back(queue_location: Path | str) -> None:
    """A rolling deploy: newer code enqueued a task this worker cannot run. It is given back
    whole (a worker that has the processor may run it), not killed."""
    producer, consumer, ran = _producer_and_consumer(queue_location)
    before = producer.enqueue("jobs.known", 1)
    orphan = producer.enqueue("jobs.orphan")
    after = producer.enqueue("jobs.known", 2)
    stats = ferroq.Worker(consumer, concurrency=1).run(until_idle=True)

    assert ran == [1, 2]  # the worker kept going
    assert before.result(timeout=WAIT) == 10 and after.result(timeout=WAIT) == 20
    info = producer.get(orphan.id)
    assert (info.status, info.attempts, info.last_error) == ("pending", 0, None)
    assert info.run_at > datetime.now(timezone.utc)  # not claimable again at once
    last = producer.history(orphan.id)[-1]
    assert (last.from_status, last.to_status) == ("running", "pending")
    assert last.error is not None and last.error.type == "NoProcessor" and "jobs.orphan" in last.error.message
    assert stats.deferred == 1 and stats.dead == 0 and stats.completed == 2


def test_task_without_a_processor_goes_dead_with_no_grace(queue_location: Path | str) -> None:
    producer, consumer, ran = _producer_and_consumer(queue_location)
    orphan = producer.enqueue("jobs.orphan")
    known = producer.enqueue("jobs.known", 1)
    stats = ferroq.Worker(consumer, concurrency=1, unknown_task_grace=0).run(until_idle=True)

    assert known.result(timeout=WAIT) == 10
    info = producer.get(orphan.id)
    assert info.status == "dead"
    assert info.attempts == 1  # the claim's; never retried
    assert info.last_error is not None
    assert info.last_error.type == "ferroq.errors.UnknownTaskName"
    assert "jobs.orphan" in info.last_error.message
    assert "no processor is registered" in info.last_error.message
    assert stats.dead == 1 and stats.completed == 1
    with pytest.raises(ferroq.TaskFailed):
        orphan.result(timeout=WAIT)
