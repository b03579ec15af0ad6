"""Batch processors: @q.batch_task hands the function lists of items."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import ferroq

pytestmark = pytest.mark.both_engines  # every test with a queue runs on SQLite and PostgreSQL


def test_items_are_processed_in_batches_up_to_max_size(queue_location: Path | str) -> None:
    q = ferroq.Queue(queue_location, durability="normal")
    sizes: list[int] = []

    @q.batch_task(name="double", max_size=10, max_wait=0.05)
    def double(items: list[int]) -> list[int]:
        sizes.append(len(items))
        return [i * 2 for i in items]

    handles = [double.enqueue(i) for i in range(95)]
    ferroq.Worker(q, concurrency=2, handle_signals=False).run(until_empty=True)
    assert [h.result(timeout=5) for h in handles] == [i * 2 for i in range(95)]
    assert sum(sizes) == 95 and max(sizes) <= 10
    assert len(sizes) < 95  # batched, not one call per item
    assert double([1, 2]) == [2, 4]  # inline call runs the function


def test_an_exception_in_the_results_fails_only_its_item(queue_location: Path | str) -> None:
    q = ferroq.Queue(queue_location, durability="normal")

    @q.batch_task(name="check", max_size=50, max_wait=0.01, max_attempts=1)
    def check(items: list[int]) -> list[Any]:
        return [ValueError(f"bad item {i}") if i % 3 == 0 else i for i in items]

    handles = [check.enqueue(i) for i in range(9)]
    ferroq.Worker(q, concurrency=1, handle_signals=False).run(until_empty=True)
    for i, h in enumerate(handles):
        if i % 3 == 0:
            with pytest.raises(ferroq.TaskFailed) as failed:
                h.result(timeout=5)
            assert failed.value.error.type == "ValueError"
            assert failed.value.error.message == f"bad item {i}"
        else:
            assert h.result(timeout=5) == i


def test_a_raising_batch_fails_every_item_and_retries_them(queue_location: Path | str) -> None:
    q = ferroq.Queue(queue_location, durability="normal")
    calls: list[list[str]] = []

    @q.batch_task(
        name="flaky", max_size=5, max_wait=0.01, max_attempts=2, retry=ferroq.RetryPolicy(base_delay=0, jitter=0)
    )
    def flaky(items: list[str]) -> list[str]:
        calls.append(items)
        if len(calls) == 1:
            raise ConnectionError("upstream down")
        return [s.upper() for s in items]

    handles = [flaky.enqueue(s) for s in "abc"]
    ferroq.Worker(q, concurrency=1, handle_signals=False).run(until_empty=True)
    assert [h.result(timeout=5) for h in handles] == ["A", "B", "C"]
    assert all(h.info().attempts == 2 for h in handles)


def test_wrong_result_count_is_a_clear_failure(queue_location: Path | str) -> None:
    q = ferroq.Queue(queue_location, durability="normal")

    @q.batch_task(name="short", max_size=4, max_wait=0.01, max_attempts=1)
    def short(items: list[int]) -> list[int]:
        return items[:-1]

    handles = [short.enqueue(i) for i in range(4)]
    ferroq.Worker(q, concurrency=1, handle_signals=False).run(until_empty=True)
    with pytest.raises(ferroq.TaskFailed) as failed:
        handles[0].result(timeout=5)
    assert "must return a list of 4 results" in failed.value.error.message


def test_batches_do_not_mix_resource_groups(queue_location: Path | str) -> None:
    q = ferroq.Queue(queue_location, durability="normal")
    seen: list[set[str]] = []

    @q.batch_task(name="grouped", max_size=50, max_wait=0.02)
    def grouped(items: list[str]) -> list[str]:
        seen.append({i.split(":")[0] for i in items})
        return items

    for g in ("a", "b"):
        for i in range(5):
            grouped.using(resource_group=g).enqueue(f"{g}:{i}")
    ferroq.Worker(q, concurrency=1, handle_signals=False).run(until_empty=True)
    assert all(len(groups) == 1 for groups in seen)
    assert q.counts()["completed"] == 10


def test_bad_batch_options_are_refused(queue_location: Path | str) -> None:
    q = ferroq.Queue(queue_location, durability="normal")
    with pytest.raises(ferroq.InvalidArgument):
        q.batch_task(max_size=0)
    with pytest.raises(ferroq.InvalidArgument):
        q.batch_task(max_wait=-1)

    @q.batch_task(name="one")
    def one(items: list[int]) -> list[int]:
        return items

    with pytest.raises(ferroq.InvalidArgument):
        one.enqueue(1, 2)  # type: ignore[call-arg]
    assert q.counts()["pending"] == 0
