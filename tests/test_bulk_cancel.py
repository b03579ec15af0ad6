"""``Queue.cancel_pending``: every pending task of a group and/or task name, in batches of one
transaction each, as a single ``cancel`` would; what the dashboard's bulk cancel and ``ferroq
cancel --all-pending`` run."""

from __future__ import annotations

import threading

import pytest

import ferroq

pytestmark = pytest.mark.both_engines


def test_cancels_ready_and_delayed_tasks_in_batches_with_progress(queue: ferroq.Queue) -> None:
    mail = queue.task(name="mail", resource_group="smtp")(lambda n: None)
    other = queue.task(name="other")(lambda n: None)
    queue.enqueue_many(mail.call(n) for n in range(1, 8))
    delayed = mail.using(delay=3600).enqueue(0).id
    kept = other.enqueue(0).id
    assert queue.count_pending(group="smtp") == 8
    assert queue.count_pending(name="mail") == 8 and queue.count_pending() == 9

    seen: list[int] = []
    assert queue.cancel_pending(group="smtp", batch_size=3, progress=seen.append) == 8
    assert seen == [3, 6, 8]  # after each batch
    assert queue.get(delayed).status == "cancelled"
    assert queue.get(kept).status == "pending"
    assert queue.counts()["cancelled"] == 8
    last = queue.history(delayed)[-1]
    assert (last.from_status, last.to_status) == ("pending", "cancelled")
    assert queue.cancel_pending(group="smtp") == 0
    with pytest.raises(ferroq.InvalidArgument, match="batch_size"):
        queue.cancel_pending(batch_size=0)


def test_a_running_task_finishes_its_run_and_counts_once(queue: ferroq.Queue) -> None:
    started, release = threading.Event(), threading.Event()

    @queue.task(name="slow")
    def slow() -> str:
        started.set()
        release.wait(30)
        return "done"

    first = slow.enqueue().id
    rest = [slow.enqueue().id for _ in range(5)]
    worker = ferroq.Worker(queue, concurrency=1, prefetch=0, handle_signals=False)
    runner = threading.Thread(target=worker.run, kwargs={"until_idle": True})
    runner.start()
    assert started.wait(30)
    assert queue.cancel_pending() == 5
    release.set()
    runner.join(30)
    assert queue.get(first).status == "completed" and queue.get(first).result == "done"
    assert {queue.get(i).status for i in rest} == {"cancelled"}
    assert worker.stats.completed == 1
