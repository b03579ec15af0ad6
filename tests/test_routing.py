"""Routing at enqueue (``q.route``): by task name, by an argument predicate, by observed p95
run time (every worker's, from the metrics table); the reason stored with the task."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import ferroq
import ferroq.routing
from ferroq._core import Outcomes
from ferroq.cli import main as cli

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import Procs, procs  # noqa: F401


@pytest.fixture(autouse=True)
def fresh_run_times(monkeypatch: pytest.MonkeyPatch) -> None:
    """Producers re-read run times at every enqueue (not every 5 s) in these tests."""
    monkeypatch.setattr(ferroq.routing, "REFRESH", 0.0)


def declare(q: ferroq.Queue) -> tuple[Any, Any]:
    @q.task(name="resize")
    def resize(size: int, fmt: str = "png") -> int:
        return size

    @q.task(name="report")
    def report(n: int) -> int:
        return n

    return resize, report


def test_routes_by_task_and_by_arguments_first_match_wins(queue: ferroq.Queue) -> None:
    resize, report = declare(queue)
    queue.route("reports", task="report", name="reports lane")
    queue.route("big", task=resize, when=lambda size, fmt="png": size > 1000)
    queue.route("tiff", when=lambda *a, fmt="png", **k: fmt == "tiff")
    cases = [
        (resize.enqueue(10), "default", None),
        (resize.enqueue(5000), "big", "to 'big', tasks resize, when <lambda>"),
        (resize.enqueue(5000, fmt="tiff"), "big", "to 'big', tasks resize, when <lambda>"),
        (resize.enqueue(10, fmt="tiff"), "tiff", "to 'tiff', when <lambda>"),
        (report.enqueue(1), "reports", "reports lane: to 'reports', tasks report"),
    ]
    for handle, group, reason in cases:
        info = handle.info()
        assert (info.resource_group, info.route) == (group, reason)
    assert [r.to for r in queue.routes()] == ["reports", "big", "tiff"]


def test_every_enqueue_path_is_routed(queue: ferroq.Queue) -> None:
    resize, _ = declare(queue)
    queue.route("big", task=resize, when=lambda size, fmt="png": size > 1000)
    ids = queue.enqueue_many([resize.call(5000), resize.call(1)])
    handle = asyncio.run(resize.aenqueue(5000))
    groups = [queue.get(i).resource_group for i in [*ids, handle.id]]
    assert groups == ["big", "default", "big"]
    assert resize.using(priority=3).enqueue(9999).info().resource_group == "big"


def test_slow_tasks_go_to_the_slow_lane_by_observed_p95(queue: ferroq.Queue) -> None:
    @queue.task(name="slow")
    def slow(i: int) -> int:
        ferroq.current_task().progress(0.5)  # any work; its run time is what is measured
        return i

    resize, _ = declare(queue)
    queue.route("slow-lane", slower_than=0.2, min_runs=5)
    assert slow.enqueue(0).info().resource_group == "default", "no runs observed yet"
    queue.enqueue_many(slow.call(i) for i in range(1, 6))
    queue.enqueue_many(resize.call(i) for i in range(10))
    # Run times as a worker reports them: slow's 0.5 s, resize's 1 ms (a worker measures
    # and stores them; here the run time is given so the test does not depend on timing).
    store = queue._store
    outcomes = Outcomes()
    for t in store.claim(queue.name, "w", 100, 30_000):
        outcomes.completed(t.id, t.token, b"null", 500_000 if t.name == "slow" else 1_000)
    store.finish_many(outcomes)
    store.flush_metrics()
    times = queue.run_times()
    assert times["slow"].count == 6 and times["slow"].p95 > 0.2 and times["resize"].p95 < 0.01
    routed = slow.enqueue(7).info()
    assert routed.resource_group == "slow-lane"
    assert routed.route is not None and "observed p95 0.5" in routed.route and "over 6 runs" in routed.route
    assert resize.enqueue(1).info().resource_group == "default"


def test_the_route_shows_in_inspect(db_path: Path, queue: ferroq.Queue) -> None:
    resize, _ = declare(queue)
    queue.route("big", task=resize, when=lambda size, fmt="png": size > 1000, name="large images")
    task_id = resize.enqueue(4096).id
    runner = CliRunner()
    text = runner.invoke(cli, ["--db", str(db_path), "inspect", str(task_id)])
    assert text.exit_code == 0, text.output
    assert "routed" in text.output and "large images" in text.output
    as_json = runner.invoke(cli, ["--db", str(db_path), "inspect", str(task_id), "-o", "json"])
    assert json.loads(as_json.output)["task"]["route"].startswith("large images: to 'big'")


def test_bad_routes_are_refused_and_a_failing_predicate_enqueues_nothing(queue: ferroq.Queue) -> None:
    resize, _ = declare(queue)
    bad: list[dict[str, Any]] = [
        {"to": ""},
        {"to": "a\nb"},
        {"to": "x", "when": 3},
        {"to": "x", "slower_than": -1},
        {"to": "x", "slower_than": 0},
        {"to": "x", "task": []},
        {"to": "x", "window": 0},
        {"to": "x", "min_runs": 0},
        {"to": "x", "task": 5},
    ]
    for kwargs in bad:
        with pytest.raises(ferroq.InvalidArgument):
            queue.route(**kwargs)
    assert queue.routes() == []
    queue.route("x", when=lambda size, fmt="png": 1 / 0)
    with pytest.raises(ferroq.InvalidArgument, match="predicate failed on task 'resize'"):
        resize.enqueue(1)
    assert queue.counts()["pending"] == 0


WORKER = """
db = sys.argv[1]
q = ferroq.Queue(db)

@q.task(name="slow")
def slow(i):
    time.sleep(0.3)
    return i

@q.task(name="fast")
def fast(i):
    return i

ferroq.Worker(q, concurrency=4).run(until_empty=True)  # flushes its metrics when it stops
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_run_times_observed_by_another_process_route_here(tmp_path: Path, procs: Procs) -> None:
    db = tmp_path / "q.db"
    q = ferroq.Queue(db)
    slow = q.task(name="slow")(lambda i: i)
    fast = q.task(name="fast")(lambda i: i)
    q.enqueue_many([*(slow.call(i) for i in range(5)), *(fast.call(i) for i in range(5))])
    procs.run(procs.script("worker", WORKER), db, timeout=90)
    q.route("lane", slower_than=0.2, min_runs=5)
    assert slow.enqueue(9).info().resource_group == "lane"
    assert fast.enqueue(9).info().resource_group == "default"
