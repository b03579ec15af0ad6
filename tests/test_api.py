"""The public API: enqueueing, handles, task info, results, operator actions, decorators."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import threading
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import ferroq
from workers import BackgroundWorker

pytestmark = pytest.mark.both_engines  # every test with a queue runs on SQLite and PostgreSQL

WAIT = 30.0  # generous: waits end as soon as the condition holds


def drain(q: ferroq.Queue, **kwargs: Any) -> ferroq.WorkerStats:
    """Runs everything that is ready now on one worker thread, then returns."""
    return ferroq.Worker(q, concurrency=1, **kwargs).run(until_idle=True)


def drain_async(q: ferroq.Queue, **kwargs: Any) -> ferroq.WorkerStats:
    """``drain`` for queues with async processors.

    The worker never closes the event loop it creates for async processors (see
    ``test_worker_closes_its_event_loop``), so the loop and its sockets would raise
    ResourceWarning (an error in this suite) in whichever later test collects them.
    Collect them here, with that one warning silenced.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        stats = ferroq.Worker(q, **kwargs).run(until_idle=True)
        _join_loop_threads()
        gc.collect()
        gc.collect()
    return stats


def _join_loop_threads() -> None:
    for thread in threading.enumerate():
        if thread.name == "ferroq-asyncio":
            thread.join(WAIT)


def no_retry_policy() -> ferroq.RetryPolicy:
    return ferroq.RetryPolicy(base_delay=0, jitter=0)


# -- enqueue and TaskInfo ------------------------------------------------------------------


def test_enqueue_returns_a_handle_with_an_id(queue: ferroq.Queue) -> None:
    @queue.task
    def add(a: int, b: int) -> int:
        return a + b

    h1 = add.enqueue(1, 2)
    h2 = add.enqueue(3, b=4)
    assert isinstance(h1, ferroq.TaskHandle)
    assert isinstance(h1.id, int) and isinstance(h2.id, int)
    assert h2.id > h1.id
    assert h1.created is True
    assert h1.queue is queue
    assert h1.status() == "pending"
    assert queue.handle(h1.id).info() == queue.get(h1.id)


def test_get_returns_every_field(queue: ferroq.Queue) -> None:
    @queue.task(priority=7, resource_group="images", max_attempts=4)
    def resize(path: str, width: int) -> dict[str, Any]:
        return {"path": path, "width": width}

    h = resize.enqueue("a.png", width=200)
    info = queue.get(h.id)
    assert isinstance(info, ferroq.TaskInfo)
    assert info.id == h.id
    assert info.queue == "default"
    assert info.name == resize.name
    assert info.status == "pending"
    assert info.priority == 7
    assert info.resource_group == "images"
    assert info.attempts == 0
    assert info.max_attempts == 4
    assert isinstance(info.run_at, datetime) and info.run_at.tzinfo is not None
    assert info.args == ["a.png"] and info.kwargs == {"width": 200}
    assert info.result is None
    assert info.last_error is None
    assert info.unique_key is None
    assert info.progress is None
    assert isinstance(info.created_at, datetime) and info.created_at.tzinfo is not None
    assert info.started_at is None
    assert info.finished_at is None
    assert info.run_at >= info.created_at

    drain(queue)

    done = queue.get(h.id)
    assert done.status == "completed"
    assert done.attempts == 1
    assert done.result == {"path": "a.png", "width": 200}
    assert done.last_error is None
    assert done.started_at is not None and done.finished_at is not None
    assert done.created_at <= done.started_at <= done.finished_at
    assert done.progress == 1.0


def test_using_builds_the_same_options_as_declaring_them(queue: ferroq.Queue) -> None:
    """using() checks only the options it changes: the result must still equal options
    built (and checked) from scratch, and leave the task's own options alone."""
    from dataclasses import replace

    @queue.task(priority=3, max_attempts=5, resource_group="a")
    def job(x: int) -> None: ...

    declared = job.options
    every: list[dict[str, Any]] = [
        {"unique_key": "k"},
        {"priority": -2, "delay": 1.5},
        {"resource_group": "b", "max_attempts": 1},
        {"run_at": 2_000_000_000.0},
    ]
    for changes in every:
        expected = replace(declared, **{**changes, **({"run_at": None} if "delay" in changes else {})})
        assert job.using(**changes).options == expected
        assert hash(job.using(**changes).options) == hash(expected)
    assert job.options is declared and job.options.unique_key is None


def test_large_arguments_reach_the_processor_whole(queue: ferroq.Queue) -> None:
    """Payloads over a few hundred bytes are stored apart from the task row: every way of
    enqueueing and reading gives them back unchanged, next to small ones."""
    seen: list[str] = []

    @queue.task()
    def echo(text: str) -> int:
        seen.append(text)
        return len(text)

    texts = ["s", "m" * 300, "é" * 40_000] * 10
    single = [echo.enqueue(t) for t in texts[:3]]
    unique = echo.using(unique_key="big").enqueue("u" * 5_000)
    many = queue.enqueue_many(echo.call(t) for t in texts)
    for h, text in zip(single, texts):
        assert queue.get(h.id).args == [text]
    assert [t.args for t in queue.list(limit=1000)][-len(texts) :] == [[t] for t in texts]
    drain(queue)
    assert sorted(seen) == sorted(texts[:3] + ["u" * 5_000] + texts)
    assert [queue.get(i).result for i in many] == [len(t) for t in texts]
    assert unique.result(timeout=WAIT) == 5_000


def test_a_queue_on_an_injected_clock_keeps_to_it(queue_location: Path | str) -> None:
    """Every engine takes its times from the clock the queue was given (PostgreSQL's used to
    open on the system clock)."""
    from ferroq.testing import ManualClock

    start = 1_700_000_000_000
    clock = ManualClock(start)
    with ferroq.Queue(queue_location, clock=clock) as q:
        first = q.task(name="t")(lambda: None).enqueue()
        clock.advance(60_000)
        second = q.tasks["t"].enqueue()
        created = [q.get(h.id).created_at.timestamp() * 1000 for h in (first, second)]
    assert created == [start, start + 60_000]


def test_get_unknown_id_raises_unknown_task(queue: ferroq.Queue) -> None:
    with pytest.raises(ferroq.UnknownTask):
        queue.get(12345)
    with pytest.raises(KeyError):  # UnknownTask is also a KeyError
        queue.get(12345)
    with pytest.raises(ferroq.InvalidArgument):
        queue.get("1")  # type: ignore[arg-type]


def test_using_overrides_options_for_one_enqueue(queue: ferroq.Queue) -> None:
    @queue.task(priority=1)
    def job() -> None:
        pass

    h = job.using(priority=-5, resource_group="slow", max_attempts=9, unique_key="k").enqueue()
    info = queue.get(h.id)
    assert (info.priority, info.resource_group, info.max_attempts, info.unique_key) == (-5, "slow", 9, "k")
    assert queue.get(job.enqueue().id).priority == 1  # the task's own options are unchanged


def test_enqueue_many_stores_all_calls_in_order(queue: ferroq.Queue) -> None:
    @queue.task
    def square(x: int) -> int:
        return x * x

    ids = queue.enqueue_many(square.call(i) for i in range(5))
    assert len(ids) == 5 and ids == sorted(ids)
    assert queue.enqueue_many([]) == []
    drain(queue)
    assert [queue.handle(i).result(timeout=WAIT) for i in ids] == [0, 1, 4, 9, 16]


def test_enqueue_many_mixes_tasks_and_options_in_one_call(queue: ferroq.Queue) -> None:
    @queue.task(max_attempts=2)
    def a(x: int) -> int:
        return x

    @queue.task(name="other.b", priority=1, resource_group="slow")
    def b(x: int, tag: str = "") -> int:
        return x

    urgent, later, grouped = b.using(priority=9), a.using(delay=600), a.using(resource_group="g")
    calls = [a.call(i) for i in range(130)]  # one task's calls first, then a mix
    calls += [b.call(1000 + i, tag="t") if i % 2 else a.call(1000 + i) for i in range(130)]
    calls += [urgent.call(1), later.call(2), grouped.call(3), b.call(4), a.call(5)]
    before = time.time()
    ids = queue.enqueue_many(iter(calls))
    assert len(ids) == len(calls) and ids == sorted(set(ids))
    for call, task_id in zip(calls, ids):
        info = queue.get(task_id)
        assert (info.name, info.status, info.unique_key) == (call.name, "pending", None)
        assert (info.priority, info.resource_group) == (call.options.priority, call.options.resource_group)
        assert info.max_attempts == call.options.max_attempts
        assert call.payload == ferroq.JsonSerializer().dumps({"args": info.args, "kwargs": info.kwargs})
    assert queue.get(ids[-4]).run_at.timestamp() >= before + 599
    assert queue.get(ids[-1]).run_at.timestamp() <= time.time()


def test_enqueue_many_counts_a_delay_from_the_end_of_the_iterable(queue: ferroq.Queue) -> None:
    @queue.task
    def later(x: int) -> int:
        return x

    done_at = []

    def calls() -> Any:
        yield later.using(delay=60).call(1)
        time.sleep(0.05)  # a slow source: the delay must not start before it ends
        done_at.append(time.time())

    (task_id,) = queue.enqueue_many(calls())
    assert queue.get(task_id).run_at.timestamp() >= done_at[0] + 60 - 0.001


def test_enqueue_many_runs_in_fifo_order_within_a_priority(queue: ferroq.Queue) -> None:
    seen: list[int] = []

    @queue.task
    def record(i: int) -> None:
        seen.append(i)

    ids = queue.enqueue_many(record.call(i) for i in range(300))
    ids += queue.enqueue_many(record.call(i) for i in range(300, 310))
    assert ids == sorted(ids) and len(set(ids)) == 310
    drain(queue)
    assert seen == list(range(310))


def test_enqueue_many_deduplicates_unique_keys_within_the_batch(queue: ferroq.Queue) -> None:
    @queue.task
    def sync(account: str) -> None:
        return None

    keyed = sync.using(unique_key="acct")
    ids = queue.enqueue_many(
        [sync.call("a"), keyed.call("b"), sync.call("c"), keyed.call("d")] + [sync.call(str(i)) for i in range(200)]
    )
    assert ids[1] == ids[3] and len(set(ids)) == 203
    assert queue.get(ids[1]).args == ["b"]  # the first call with the key holds it
    assert queue.enqueue_many([keyed.call("e")]) == [ids[1]]
    assert queue.counts()["pending"] == 203


# -- results ---------------------------------------------------------------------------------


def test_result_returns_the_stored_result(queue: ferroq.Queue) -> None:
    @queue.task
    def echo(value: Any) -> Any:
        return value

    value = {"a": [1, 2.5, "x", None, True], "b": {"nested": "ü"}}
    h = echo.enqueue(value)
    drain(queue)
    assert h.result(timeout=WAIT) == value


def test_result_waits_for_a_worker_in_the_background(queue: ferroq.Queue) -> None:
    @queue.task
    def add(a: int, b: int) -> int:
        return a + b

    with BackgroundWorker(queue):
        assert add.enqueue(20, 22).result(timeout=WAIT) == 42


def test_result_raises_task_failed_with_the_stored_error(queue: ferroq.Queue) -> None:
    @queue.task(max_attempts=1)
    def explode(x: int) -> None:
        raise ValueError(f"bad value {x}")

    h = explode.enqueue(7)
    drain(queue)
    with pytest.raises(ferroq.TaskFailed) as caught:
        h.result(timeout=WAIT)
    err = caught.value.error
    assert caught.value.task_id == h.id
    assert isinstance(err, ferroq.TaskError)
    assert err.type == "ValueError"
    assert err.message == "bad value 7"
    assert err.traceback is not None
    assert "Traceback" in err.traceback and "explode" in err.traceback
    assert 'raise ValueError(f"bad value {x}")' in err.traceback
    assert "ValueError: bad value 7" in str(caught.value)
    assert queue.get(h.id).last_error == err


def test_result_raises_result_timeout_when_not_done(queue: ferroq.Queue) -> None:
    @queue.task
    def never_run() -> None:
        pass

    h = never_run.enqueue()
    with pytest.raises(ferroq.ResultTimeout):
        h.result(timeout=0.2)
    with pytest.raises(TimeoutError):  # ResultTimeout is also a TimeoutError
        h.result(timeout=0)
    assert h.status() == "pending"


# -- cancel / requeue ------------------------------------------------------------------------


def test_cancel_pending_task(queue: ferroq.Queue) -> None:
    ran = []

    @queue.task
    def job() -> None:
        ran.append(1)

    h = job.enqueue()
    h.cancel()
    info = queue.get(h.id)
    assert info.status == "cancelled"
    assert info.finished_at is not None
    with pytest.raises(ferroq.TaskCancelled):
        h.result(timeout=WAIT)
    drain(queue)
    assert ran == []
    assert queue.get(h.id).status == "cancelled"


def test_cancel_completed_task_is_an_invalid_transition(queue: ferroq.Queue) -> None:
    @queue.task
    def job() -> int:
        return 1

    h = job.enqueue()
    drain(queue)
    with pytest.raises(ferroq.InvalidTransition) as caught:
        queue.cancel(h.id)
    assert isinstance(caught.value, ValueError)
    assert "completed" in str(caught.value)
    assert queue.get(h.id).status == "completed"
    assert h.result(timeout=WAIT) == 1
    with pytest.raises(ferroq.InvalidTransition):
        queue.cancel(h.id)  # twice: still refused, still completed
    with pytest.raises(ferroq.UnknownTask):
        queue.cancel(h.id + 1000)


def test_cancel_running_task_is_an_invalid_transition(queue: ferroq.Queue) -> None:
    started, release = threading.Event(), threading.Event()

    @queue.task
    def block() -> str:
        started.set()
        release.wait(WAIT)
        return "done"

    h = block.enqueue()
    with BackgroundWorker(queue):
        assert started.wait(WAIT)
        assert h.status() == "running"
        with pytest.raises(ferroq.InvalidTransition):
            h.cancel()
        release.set()
        assert h.result(timeout=WAIT) == "done"


def test_requeue_dead_task_runs_it_again(queue: ferroq.Queue) -> None:
    calls = []

    @queue.task(max_attempts=1)
    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first run fails")
        return "second run ok"

    h = flaky.enqueue()
    drain(queue)
    assert queue.get(h.id).status == "dead"

    queue.requeue(h.id)
    info = queue.get(h.id)
    assert info.status == "pending"
    assert info.attempts == 0
    assert info.finished_at is None

    drain(queue)
    assert h.result(timeout=WAIT) == "second run ok"
    assert len(calls) == 2
    assert queue.get(h.id).attempts == 1

    with pytest.raises(ferroq.InvalidTransition):
        queue.requeue(h.id)  # completed tasks are not requeued


def test_requeue_cancelled_task(queue: ferroq.Queue) -> None:
    @queue.task
    def job() -> str:
        return "ran"

    h = job.enqueue()
    h.cancel()
    queue.requeue(h.id)
    assert h.status() == "pending"
    drain(queue)
    assert h.result(timeout=WAIT) == "ran"


# -- history and counts ----------------------------------------------------------------------


def test_history_lists_every_transition(queue: ferroq.Queue) -> None:
    calls = []

    @queue.task(max_attempts=3, retry=no_retry_policy())
    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("missing")
        return "ok"

    h = flaky.enqueue()
    stats = drain(queue, name="worker-1")
    assert (stats.claimed, stats.retried, stats.completed) == (2, 1, 1)

    history = queue.history(h.id)
    assert all(isinstance(t, ferroq.Transition) for t in history)
    assert [(t.from_status, t.to_status) for t in history] == [
        (None, "pending"),
        ("pending", "running"),
        ("running", "pending"),
        ("pending", "running"),
        ("running", "completed"),
    ]
    assert [t.worker for t in history] == [None, "worker-1", "worker-1", "worker-1", "worker-1"]
    assert all(isinstance(t.at, datetime) and t.at.tzinfo is not None for t in history)
    assert [t.at for t in history] == sorted(t.at for t in history)

    errors = [t.error for t in history]
    assert errors[0] is None and errors[1] is None and errors[3] is None and errors[4] is None
    retry_error = errors[2]
    assert retry_error is not None
    assert retry_error.type == "KeyError"
    assert "missing" in retry_error.message
    assert retry_error.traceback is not None and "flaky" in retry_error.traceback

    with pytest.raises(ferroq.UnknownTask):
        queue.history(h.id + 1000)


def test_history_of_cancel_and_requeue(queue: ferroq.Queue) -> None:
    @queue.task
    def job() -> None:
        pass

    h = job.enqueue()
    h.cancel()
    queue.requeue(h.id)
    assert [(t.from_status, t.to_status) for t in queue.history(h.id)] == [
        (None, "pending"),
        ("pending", "cancelled"),
        ("cancelled", "pending"),
    ]


def test_counts_lists_every_status(queue: ferroq.Queue) -> None:
    assert queue.counts() == {status: 0 for status in ferroq.STATUSES}
    assert set(ferroq.STATUSES) == {"pending", "running", "completed", "dead", "cancelled"}

    started, release = threading.Event(), threading.Event()

    @queue.task
    def ok() -> None:
        pass

    @queue.task(max_attempts=1)
    def bad() -> None:
        raise RuntimeError("no")

    @queue.task
    def block() -> None:
        started.set()
        release.wait(WAIT)

    ok.enqueue()
    ok.enqueue()
    bad.enqueue()
    ok.enqueue().cancel()
    drain(queue)
    ok.using(delay=3600).enqueue()  # pending, not due

    block.enqueue()
    with BackgroundWorker(queue):
        assert started.wait(WAIT)
        counts = queue.counts()
        release.set()
    assert counts == {"pending": 1, "running": 1, "completed": 2, "dead": 1, "cancelled": 1}
    assert list(counts) == list(ferroq.STATUSES)
    assert queue.counts() == {"pending": 1, "running": 0, "completed": 3, "dead": 1, "cancelled": 1}


def test_queues_dropped_without_close_lose_nothing(queue_location: Path | str) -> None:
    """A queue left to the garbage collector is closed on a thread of its own, while new
    queues keep opening the same file: every enqueue stays, the file stays intact."""
    for round_ in range(20):
        q = ferroq.Queue(queue_location, durability="normal")
        t = q.task(name="t")(lambda i: None)
        q.enqueue_many(t.call(i) for i in range(500))
        t.enqueue(round_)
        del q, t
        gc.collect()  # a queue and its tasks refer to each other: only the collector frees them
    with ferroq.Queue(queue_location) as q:
        assert q.counts()["pending"] == 20 * 501
        assert q.check() == ["ok"]


def test_a_script_that_never_closes_its_queue_leaves_one_file(tmp_path: Path) -> None:
    """SQLite-only: about the -wal/-shm files beside the queue file.
    A queue still open at exit is closed before the interpreter tears down, not left to
    the closing thread of a dropped store (which the exit can cut short, leaving -wal and
    -shm files behind). The script's own exit hook, registered first, runs last: by then
    the file must stand alone."""
    path = tmp_path / "queue.db"
    script = f"""
import atexit, os
atexit.register(lambda: print(sorted(os.listdir({str(tmp_path)!r}))))
import ferroq
q = ferroq.Queue({str(path)!r}, durability="normal")
job = q.task(name="job")(lambda x: x)
q.enqueue_many(job.call("x" * 500) for _ in range(2_000))
"""
    out = subprocess.run([sys.executable, "-c", script], check=True, timeout=60, capture_output=True, text=True)
    assert out.stdout.strip() == "['queue.db']"
    assert sorted(os.listdir(tmp_path)) == ["queue.db"]
    with ferroq.Queue(path) as q:
        assert q.counts()["pending"] == 2_000


def test_queues_sharing_a_file_are_separate(queue_location: Path | str) -> None:
    a = ferroq.Queue(queue_location, name="a", durability="normal")
    b = ferroq.Queue(queue_location, name="b", durability="normal")

    @a.task(name="job")
    def job_a() -> str:
        return "a"

    h = job_a.enqueue()
    assert b.counts()["pending"] == 0
    with pytest.raises(ferroq.UnknownTask):
        b.get(h.id)
    drain(b)
    assert a.get(h.id).status == "pending"
    drain(a)
    assert h.result(timeout=WAIT) == "a"


# -- the decorated function ------------------------------------------------------------------


def test_calling_the_task_runs_inline(queue: ferroq.Queue) -> None:
    @queue.task
    def add(a: int, b: int = 1) -> int:
        return a + b

    assert add(2, 3) == 5
    assert add(2) == 3
    assert queue.counts() == {status: 0 for status in ferroq.STATUSES}


def test_decorated_function_keeps_name_and_doc(queue: ferroq.Queue) -> None:
    def resize(path: str) -> str:
        """Resizes an image."""
        return path

    task = queue.task(resize)
    assert isinstance(task, ferroq.Task)
    assert task.__name__ == "resize"
    assert task.__qualname__ == resize.__qualname__
    assert task.__doc__ == "Resizes an image."
    assert task.__module__ == resize.__module__
    assert task.__wrapped__ is resize
    assert task.name == f"{resize.__module__}.{resize.__qualname__}"
    assert queue.tasks[task.name] is task

    named = queue.task(name="images.resize")(resize)
    assert named.name == "images.resize"
    assert named.__name__ == "resize"


def test_registering_a_different_function_under_a_taken_name_is_refused(queue: ferroq.Queue) -> None:
    @queue.task(name="job")
    def one() -> None:
        pass

    with pytest.raises(ferroq.InvalidArgument):

        @queue.task(name="job")
        def two() -> None:
            pass


def test_huge_errors_are_stored_clipped(queue: ferroq.Queue) -> None:
    """An exception carrying megabytes is stored (task, history, event) and logged clipped,
    saying how much was cut; the other tasks of its batch complete as usual."""
    from ferroq.info import MESSAGE_MAX, TRACEBACK_MAX

    @queue.task(name="boom", max_attempts=1)
    def boom(i: int) -> int:
        if i == 0:
            raise ValueError("x" * 3_000_000)
        return i

    handles = [boom.enqueue(i) for i in range(20)]
    stats = drain(queue)
    assert (stats.completed, stats.dead) == (19, 1)
    assert [h.result(timeout=WAIT) for h in handles[1:]] == list(range(1, 20))
    error = queue.get(handles[0].id).last_error
    assert error is not None and error.type == "ValueError"
    assert error.message.startswith("x" * MESSAGE_MAX)
    assert error.message.endswith(f"... [{3_000_000 - MESSAGE_MAX:,} more characters not stored]")
    assert error.traceback is not None and len(error.traceback) < TRACEBACK_MAX + 100
    assert "characters not stored" in error.traceback
    assert error.traceback.rstrip().endswith("x")  # the end (the exception line) is kept
    failed = [e for e in queue.events() if e.kind == "failed"]
    assert len(failed) == 1 and len(str(failed[0].detail)) < MESSAGE_MAX + TRACEBACK_MAX + 1_000
    history = queue.history(handles[0].id)
    assert history[-1].error is not None and history[-1].error.message == error.message


def test_errors_within_the_limits_are_stored_whole() -> None:
    from ferroq.info import MESSAGE_MAX, TRACEBACK_MAX, TaskError, clip_traceback

    whole = TaskError("E", "m" * MESSAGE_MAX, "t" * TRACEBACK_MAX)
    assert TaskError.parse(whole.to_json()) == whole
    long = "".join(f"frame {i}\n" for i in range(20_000))
    clipped = clip_traceback(long)
    assert clipped.startswith("frame 0\n") and clipped.endswith("frame 19999\n")
    assert len(clipped) < TRACEBACK_MAX + 100


def test_async_processor_runs(queue: ferroq.Queue) -> None:
    @queue.task
    async def fetch(x: int) -> dict[str, int]:
        await asyncio.sleep(0.01)
        return {"x": x, "double": 2 * x}

    @queue.task(max_attempts=1)
    async def broken() -> None:
        await asyncio.sleep(0)
        raise LookupError("async failure")

    h = fetch.enqueue(21)
    h_bad = broken.enqueue()
    drain_async(queue, concurrency=1)
    assert h.result(timeout=WAIT) == {"x": 21, "double": 42}
    with pytest.raises(ferroq.TaskFailed) as caught:
        h_bad.result(timeout=WAIT)
    assert caught.value.error.type == "LookupError"
    assert caught.value.error.message == "async failure"


def test_async_and_sync_processors_in_one_worker(queue: ferroq.Queue) -> None:
    @queue.task
    async def a(x: int) -> int:
        await asyncio.sleep(0.005)
        return x + 1

    @queue.task
    def s(x: int) -> int:
        return x - 1

    handles = [a.enqueue(i) if i % 2 else s.enqueue(i) for i in range(10)]
    drain_async(queue, concurrency=4)
    assert [h.result(timeout=WAIT) for h in handles] == [i + 1 if i % 2 else i - 1 for i in range(10)]


@pytest.mark.parametrize("seconds", [0.0, 0.02])
def test_async_processors_run_at_most_concurrency_at_once(queue: ferroq.Queue, seconds: float) -> None:
    """``concurrency`` bounds async runs as it bounds threads: the claim buffer (adaptive
    prefetch: thousands of fast tasks) waits its turn instead of starting all at once."""
    running = peak = 0

    @queue.task(name="io")
    async def io(i: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(seconds)
        running -= 1
        return i

    handles = queue.enqueue_many(io.call(i) for i in range(2_000 if seconds == 0 else 60))
    stats = drain_async(queue, concurrency=3)
    assert peak == 3
    assert stats.completed == len(handles)


def test_async_runs_waiting_for_a_slot_are_given_back_at_stop(queue: ferroq.Queue) -> None:
    """Claimed async runs that never got a slot return to pending with their attempt when
    the worker stops; a later worker runs every task exactly once."""
    started: list[int] = []

    @queue.task(name="slow", max_attempts=1)
    async def slow(i: int) -> None:
        started.append(i)
        await asyncio.sleep(0.05)

    queue.enqueue_many(slow.call(i) for i in range(40))
    with BackgroundWorker(queue, concurrency=2, prefetch=40, shutdown_grace=5.0) as worker:
        deadline = time.monotonic() + WAIT
        while len(started) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    first = worker.stats
    assert first.released > 0, first
    assert first.completed + first.released == first.claimed
    assert queue.counts()["pending"] == first.released
    drain_async(queue, concurrency=8)
    assert sorted(started) == list(range(40)), "every task ran exactly once"
    assert queue.counts()["completed"] == 40 and queue.counts()["dead"] == 0


def test_worker_closes_its_event_loop(queue: ferroq.Queue) -> None:
    """A worker that ran async processors must close its event loop when ``run`` returns.

    Today ``Worker._stop_loop`` only stops the loop: it is never closed, so every
    ``run`` leaks an event loop and its self-pipe socket pair (ResourceWarning)."""

    @queue.task
    async def job() -> int:
        return 1

    h = job.enqueue()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ferroq.Worker(queue).run(until_idle=True)
        _join_loop_threads()
        gc.collect()
        gc.collect()
    assert h.result(timeout=WAIT) == 1
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == [], f"the worker leaked its event loop: {leaks}"


# -- current_task() --------------------------------------------------------------------------


def test_current_task_gives_id_attempt_and_stores_progress(queue: ferroq.Queue) -> None:
    seen: list[dict[str, Any]] = []

    @queue.task(max_attempts=2, retry=no_retry_policy(), resource_group="grp")
    def step() -> str:
        ctx = ferroq.current_task()
        ctx.progress(0.5)
        seen.append(
            {
                "id": ctx.id,
                "attempt": ctx.attempt,
                "max_attempts": ctx.max_attempts,
                "name": ctx.name,
                "group": ctx.resource_group,
                "stored_progress": queue.get(ctx.id).progress,
                "cancelled": ctx.cancelled(),
            }
        )
        if ctx.attempt == 1:
            raise RuntimeError("try again")
        return "ok"

    h = step.enqueue()
    drain(queue)
    assert h.result(timeout=WAIT) == "ok"
    assert [s["attempt"] for s in seen] == [1, 2]
    for s in seen:
        assert s["id"] == h.id
        assert s["max_attempts"] == 2
        assert s["name"] == step.name
        assert s["group"] == "grp"
        assert s["stored_progress"] == 0.5
        assert s["cancelled"] is False
    assert queue.get(h.id).progress == 1.0  # completion fills it


def test_progress_out_of_range_is_refused(queue: ferroq.Queue) -> None:
    errors: list[BaseException] = []

    @queue.task
    def step() -> None:
        ctx = ferroq.current_task()
        for bad in (1.5, -0.1, "half", True):
            try:
                ctx.progress(bad)  # type: ignore[arg-type]
            except ferroq.InvalidArgument as e:
                errors.append(e)

    h = step.enqueue()
    drain(queue)
    h.result(timeout=WAIT)
    assert len(errors) == 4


def test_current_task_in_async_processor(queue: ferroq.Queue) -> None:
    @queue.task
    async def step() -> list[int]:
        ctx = ferroq.current_task()
        ctx.progress(0.25)
        await asyncio.sleep(0)
        return [ctx.id, ctx.attempt, int(queue.get(ctx.id).progress * 100)]

    h = step.enqueue()
    drain_async(queue)
    assert h.result(timeout=WAIT) == [h.id, 1, 25]


def test_current_task_outside_a_task_raises() -> None:
    with pytest.raises(ferroq.FerroqError):
        ferroq.current_task()


# -- enqueue by name ---------------------------------------------------------------------------


def test_enqueue_by_name(queue: ferroq.Queue) -> None:
    @queue.task(name="math.add")
    def add(a: int, b: int) -> int:
        return a + b

    h = queue.enqueue("math.add", 1, b=2)
    assert queue.get(h.id).name == "math.add"
    drain(queue)
    assert h.result(timeout=WAIT) == 3


def test_enqueue_by_unregistered_name_raises(queue: ferroq.Queue) -> None:
    with pytest.raises(ferroq.UnknownTaskName) as caught:
        queue.enqueue("nope.missing", 1)
    assert isinstance(caught.value, ferroq.UnknownTask)
    assert "nope.missing" in str(caught.value)
    assert queue.counts() == {status: 0 for status in ferroq.STATUSES}


def test_error_tree() -> None:
    leaves = [
        ferroq.InvalidArgument,
        ferroq.PayloadError,
        ferroq.PayloadTooLarge,
        ferroq.UnknownTask,
        ferroq.UnknownTaskName,
        ferroq.InvalidTransition,
        ferroq.LeaseLost,
        ferroq.TaskFailed,
        ferroq.TaskCancelled,
        ferroq.ResultTimeout,
        ferroq.StorageError,
        ferroq.DatabasePathError,
        ferroq.CorruptDatabase,
        ferroq.DiskFull,
        ferroq.SchemaTooNew,
    ]
    for cls in leaves:
        assert issubclass(cls, ferroq.FerroqError), cls
    assert issubclass(ferroq.PayloadTooLarge, ferroq.PayloadError)
    assert issubclass(ferroq.PayloadError, ferroq.InvalidArgument)
    assert issubclass(ferroq.InvalidArgument, ValueError)
    assert issubclass(ferroq.UnknownTaskName, ferroq.UnknownTask)
    assert issubclass(ferroq.UnknownTask, KeyError)
    assert issubclass(ferroq.ResultTimeout, TimeoutError)
    for cls in (ferroq.DatabasePathError, ferroq.CorruptDatabase, ferroq.DiskFull, ferroq.SchemaTooNew):
        assert issubclass(cls, ferroq.StorageError)
    # Signals a processor raises are not errors of ferroq itself.
    assert not issubclass(ferroq.Retry, ferroq.FerroqError)
    assert not issubclass(ferroq.Fail, ferroq.FerroqError)
