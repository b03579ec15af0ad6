"""pytest-benchmark suite: `make bench` runs it for figures; `make test` runs each once
(--benchmark-disable) so the benchmarks themselves never rot. Nothing here asserts speed."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

import ferroq
from ferroq._core import Outcomes


def make_queue(path: Path, durability: str) -> tuple[ferroq.Queue, Any]:
    q = ferroq.Queue(path / f"bench-{durability}.db", durability=durability)

    @q.task(name="noop")
    def noop(i: int) -> None:
        return None

    return q, noop


@pytest.mark.parametrize("durability", ["full", "normal"])
def test_single_enqueue(benchmark: Any, tmp_path: Path, durability: str) -> None:
    benchmark.group = "enqueue"
    _, noop = make_queue(tmp_path, durability)
    benchmark(noop.enqueue, 1)


def test_enqueue_many_1000(benchmark: Any, tmp_path: Path) -> None:
    benchmark.group = "enqueue"
    benchmark.extra_info["tasks_per_round"] = 1000
    q, noop = make_queue(tmp_path, "normal")
    benchmark(lambda: q.enqueue_many(noop.call(i) for i in range(1000)))


def test_enqueue_16_threads(benchmark: Any, tmp_path: Path) -> None:
    benchmark.group = "enqueue"
    benchmark.extra_info["tasks_per_round"] = 16 * 50
    _, noop = make_queue(tmp_path, "full")

    def round_() -> None:
        threads = [threading.Thread(target=lambda: [noop.enqueue(i) for i in range(50)]) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    benchmark(round_)


@pytest.mark.parametrize("batch", [1, 100])
def test_claim_and_ack(benchmark: Any, tmp_path: Path, batch: int) -> None:
    benchmark.group = "claim+ack"
    benchmark.extra_info["tasks_per_round"] = batch
    q, noop = make_queue(tmp_path, "normal")
    q.enqueue_many(noop.call(i) for i in range(100_000))
    store = q._store

    def round_() -> None:
        rows = store.claim(q.name, "bench", batch, 30_000)
        outcomes = Outcomes()
        for r in rows:
            outcomes.completed(r.id, r.token, b"null")
        store.finish_many(outcomes)

    benchmark(round_)


@pytest.mark.parametrize("durability", ["full", "normal"])
def test_drain_10k_noop(benchmark: Any, tmp_path: Path, durability: str) -> None:
    benchmark.group = "drain"
    benchmark.extra_info["tasks_per_round"] = 10_000
    q, noop = make_queue(tmp_path, durability)

    def setup() -> None:
        q.enqueue_many(noop.call(i) for i in range(10_000))

    def drain() -> None:
        ferroq.Worker(q, concurrency=4, handle_signals=False).run(until_idle=True)

    benchmark.pedantic(drain, setup=setup, rounds=3)


def test_latency_under_steady_load(benchmark: Any, tmp_path: Path) -> None:
    """Enqueue -> processor start of one task while another thread enqueues 1,000 tasks a
    second and a worker (4 threads) runs them: each round is one such round trip."""
    benchmark.group = "latency"
    q = ferroq.Queue(tmp_path / "latency.db", durability="normal")
    waiting: dict[int, threading.Event] = {}

    @q.task(name="ping")
    def ping(key: int) -> None:
        started = waiting.get(key)
        if started is not None:
            started.set()

    stop = threading.Event()

    def steady_load() -> None:
        while not stop.wait(0.001):
            ping.enqueue(-1)

    worker = ferroq.Worker(q, concurrency=4, handle_signals=False)
    threads = [threading.Thread(target=worker.run), threading.Thread(target=steady_load)]
    for t in threads:
        t.start()
    keys = iter(range(1_000_000))

    def round_trip() -> None:
        key = next(keys)
        started = waiting[key] = threading.Event()
        ping.enqueue(key)
        assert started.wait(30), "the task never started"
        del waiting[key]

    try:
        benchmark.pedantic(round_trip, rounds=200, warmup_rounds=20)
    finally:
        stop.set()
        worker.stop()
        for t in threads:
            t.join(30)
        q.close()


def test_store_and_worker_costs_script_runs() -> None:
    """benches/store_costs.py (the per-task cost breakdown) on a small count, so it never rots:
    every figure is a positive number of microseconds."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("store_costs", Path(__file__).with_name("store_costs.py"))
    assert spec is not None and spec.loader is not None
    costs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(costs)
    claim_us, finish_us = costs.store_costs(2_000, 500)
    assert min(costs.store_costs(600, 500, payload=5_000)) > 0
    assert min(costs.cycle_costs(600, 62)) > 0
    python = costs.python_costs(tasks=200, repeats=2)
    assert claim_us > 0 and finish_us > 0
    assert set(python) == {"start", "run", "record"} and all(v > 0 for v in python.values())


def test_claim_cost_scenarios_of_the_big_run_run() -> None:
    """`ferroq bench --big`'s claim-cost scenarios on small counts, so they never rot."""
    from ferroq.bench import bench_claim_behind_delayed, bench_claim_behind_held_group, bench_claim_with_history

    for figure in (
        bench_claim_with_history(2_000),
        bench_claim_behind_delayed(2_000),
        bench_claim_behind_held_group(2_000),
    ):
        assert figure.value > 0 and figure.ceiling is not None and figure.ceiling > 0, figure


def test_group_commit_ceiling_script_runs() -> None:
    """benches/group_commit_ceiling.py on a short run: every caller's request is answered
    (the figure is positive) and answers are grouped when many threads wait at once."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ceiling", Path(__file__).with_name("group_commit_ceiling.py"))
    assert spec is not None and spec.loader is not None
    ceiling = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ceiling)
    one = ceiling.measure(threads=1, seconds=0.3, size=4096)
    assert one.commits_per_s > 0 and one.callers_per_fsync == 1.0
    many = ceiling.measure(threads=8, seconds=0.5, size=4096)
    assert many.commits_per_s > 0 and many.callers_per_fsync > 1.0


def test_async_enqueue_script_runs(tmp_path: Path) -> None:
    """benches/async_enqueue.py on a short run, so it never rots: both rates are positive
    and the loop-lag probe enqueues every task."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("async_enqueue", Path(__file__).with_name("async_enqueue.py"))
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rates = bench.measure(workers=4, seconds=0.3, directory=str(tmp_path))
    assert rates.threads_per_s > 0 and rates.coroutines_per_s > 0
    lag = bench.measure_lag(tasks=500, coroutines=20, directory=str(tmp_path))
    assert lag.tasks == 500 and lag.max_gap_ms >= 0


def test_pg_drain_script_runs() -> None:
    """benches/pg_drain.py on a short run against the PostgreSQL test server, so it never
    rots: every figure is positive (the drains check every task completed)."""
    import importlib.util
    import os

    url = os.environ.get("FERROQ_TEST_PG_URL")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("FERROQ_TEST_PG_URL is not set: CI must run the PostgreSQL suite")
        pytest.skip("PostgreSQL suite SKIPPED: FERROQ_TEST_PG_URL is not set (run under tests/pg_cluster.py)")
    spec = importlib.util.spec_from_file_location("pg_drain", Path(__file__).with_name("pg_drain.py"))
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    figures = bench.measure(url, tasks=500)
    assert all(v > 0 for v in figures)
