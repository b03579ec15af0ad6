"""The result cache (``@q.task(cache=ferroq.Cache(...))``): a completed run answers identical
enqueues without running; identical enqueues while it is pending or running attach to it;
shared by processes through the file; counted in metrics; cleared by ``cache_clear``."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import ferroq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import Procs, procs, wait_until  # noqa: F401


def drain(q: ferroq.Queue) -> ferroq.WorkerStats:
    return ferroq.Worker(q, concurrency=1).run(until_idle=True)


def declare(q: ferroq.Queue, runs: list[Any], **cache: Any) -> Any:
    @q.task(name="square", cache=ferroq.Cache(**cache))
    def square(x: int, power: int = 2) -> int:
        runs.append(x)
        return int(x**power)

    return square


def test_a_cached_result_answers_without_running(queue: ferroq.Queue) -> None:
    runs: list[int] = []
    square = declare(queue, runs, ttl=3600)
    first = square.enqueue(3)
    assert first.created
    drain(queue)
    # Positional, keyword and with the default spelled out: one call, one run.
    for again in (square.enqueue(3), square.enqueue(x=3), square.enqueue(3, power=2)):
        assert (again.id, again.created, again.status()) == (first.id, False, "completed")
        assert again.result(timeout=0) == 9
    assert runs == [3]
    assert queue.counts()["pending"] == 0
    other = square.enqueue(4)
    assert other.created and other.id != first.id


def test_identical_enqueues_while_one_is_pending_attach_to_it(queue: ferroq.Queue) -> None:
    runs: list[int] = []
    square = declare(queue, runs)
    handles = [square.enqueue(5) for _ in range(3)]
    handles += [queue._enqueue_one(call) for call in [square.call(5)]]
    ids = queue.enqueue_many(square.call(5) for _ in range(3))
    assert {h.id for h in handles} | set(ids) == {handles[0].id}
    drain(queue)
    assert runs == [5]
    assert all(h.result(timeout=0) == 25 for h in handles)


def test_an_entry_expires_after_its_ttl(queue: ferroq.Queue) -> None:
    runs: list[int] = []
    square = declare(queue, runs, ttl=0.05)
    square.enqueue(2)
    drain(queue)
    time.sleep(0.1)  # past the ttl: the entry has ended
    assert square.enqueue(2).created
    drain(queue)
    assert runs == [2, 2]


def test_a_custom_key_decides_what_is_identical(queue: ferroq.Queue) -> None:
    runs: list[str] = []

    @queue.task(name="fetch", cache=ferroq.Cache(key=lambda url, **_: url.lower()))
    def fetch(url: str, trace_id: int = 0) -> str:
        runs.append(url)
        return url

    first = fetch.enqueue("HTTP://A", trace_id=1)
    drain(queue)
    assert fetch.enqueue("http://a", trace_id=2).id == first.id
    assert runs == ["HTTP://A"]


def test_cache_clear_ends_one_entry_or_all(queue: ferroq.Queue) -> None:
    runs: list[int] = []
    square = declare(queue, runs)
    for x in (1, 2, 3):
        square.enqueue(x)
    drain(queue)
    assert square.cache_clear(1) == 1
    assert square.cache_clear(1) == 0
    assert square.enqueue(1).created
    assert not square.enqueue(2).created
    drain(queue)
    assert square.cache_clear() == 3  # 1 (run again), 2 and 3
    assert square.enqueue(2).created and square.enqueue(3).created
    drain(queue)
    assert sorted(runs) == [1, 1, 2, 2, 3, 3]
    assert queue.counts()["completed"] == 6, "clearing keeps the runs"


def test_a_failed_run_is_not_cached(queue: ferroq.Queue) -> None:
    runs: list[int] = []

    @queue.task(name="flaky", max_attempts=1, cache=ferroq.Cache())
    def flaky(x: int) -> int:
        runs.append(x)
        if len(runs) == 1:
            raise ValueError("first run fails")
        return x

    failed = flaky.enqueue(1)
    drain(queue)
    assert failed.status() == "dead"
    again = flaky.enqueue(1)
    assert again.created
    drain(queue)
    assert again.result(timeout=0) == 1


def test_hits_and_misses_are_in_the_metrics(queue: ferroq.Queue) -> None:
    square = declare(queue, [])
    square.enqueue(1)  # miss
    square.enqueue(1)  # attached: a hit
    drain(queue)  # flushes metrics when it stops
    square.enqueue(1)  # hit
    square.enqueue(2)  # miss
    queue._store.flush_metrics()
    m = queue.metrics()["default"]
    assert (m.cache_hits, m.cache_misses, m.enqueued) == (2, 2, 2)


def test_bad_cache_settings_are_refused(queue: ferroq.Queue) -> None:
    for bad in ({"ttl": 0}, {"ttl": -1}, {"ttl": float("nan")}, {"ttl": "1h"}, {"key": 5}):
        with pytest.raises(ferroq.InvalidArgument):
            ferroq.Cache(**bad)
    with pytest.raises(ferroq.InvalidArgument, match="ferroq.Cache"):
        queue.task(name="t", cache=3600)(lambda: None)  # type: ignore[arg-type]

    @queue.task(name="keyed", cache=ferroq.Cache(key=lambda x: x))
    def keyed(x: Any) -> Any:
        return x

    with pytest.raises(ferroq.InvalidArgument, match="must return a str"):
        keyed.enqueue(5)
    with pytest.raises(ferroq.InvalidArgument, match="cache key"):
        keyed.using(unique_key="mine")
    with pytest.raises(ferroq.InvalidArgument, match="bad arguments"):
        declare(queue, []).cache_clear(1, 2, 3)

    with pytest.raises(ferroq.InvalidArgument, match="is cached"):
        queue.schedule(keyed, cron="* * * * *", args=("x",))

    @queue.task(name="plain")
    def plain() -> None:
        pass

    with pytest.raises(ferroq.InvalidArgument, match="no cache"):
        plain.cache_clear()
    assert queue.counts()["pending"] == 0


# -- across processes ------------------------------------------------------------------

ENQUEUER = """
db, go = sys.argv[1], sys.argv[2]
q = ferroq.Queue(db)

@q.task(name="slow_square", cache=ferroq.Cache(ttl=3600))
def slow_square(x):
    raise AssertionError("runs in the worker")

wait_for_file(go)
handles = [slow_square.enqueue(7) for _ in range(20)]
emit({"ids": sorted({h.id for h in handles}), "results": sorted({h.result(timeout=60) for h in handles})})
"""

WORKER = """
db, log = sys.argv[1], sys.argv[2]
q = ferroq.Queue(db)

@q.task(name="slow_square", cache=ferroq.Cache(ttl=3600))
def slow_square(x):
    with open(log, "a") as f:
        f.write(f"{x}\\n")
    time.sleep(0.3)  # long enough that the other enqueuer comes while it runs
    return x * x

ferroq.Worker(q, concurrency=2).run()  # until SIGTERM
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_processes_enqueueing_identical_calls_share_one_run(tmp_path: Path, procs: Procs) -> None:
    db, go, log = tmp_path / "q.db", tmp_path / "go", tmp_path / "runs.log"
    ferroq.Queue(db).close()
    enqueuer = procs.script("enqueuer", ENQUEUER)
    enqueuers = [procs.start(enqueuer, db, go, label=f"enqueuer-{i}") for i in range(2)]
    go.touch()
    wait_until(lambda: db.exists(), 30, "the file")
    worker = procs.start(procs.script("worker", WORKER), db, log, label="worker")
    outs = [e.check(90).last() for e in enqueuers]
    assert outs[0] == outs[1] and len(outs[0]["ids"]) == 1 and outs[0]["results"] == [49]
    # A third process after the run: answered from the cache, nothing runs.
    late = procs.start(enqueuer, db, go, label="late")
    assert late.check(60).last() == outs[0]
    worker.send(signal.SIGTERM)
    worker.check(60)
    assert log.read_text().split() == ["7"]
