"""ferroq.testing: eager mode, drain, and the ferroq_queue pytest fixture (issue 16)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ferroq
from ferroq.testing import DrainTimeout, drain, eager

pytestmark = pytest.mark.both_engines  # every test with a queue runs on SQLite and PostgreSQL

HOUR = 3600.0  # a backoff no test waits out: a retry that runs shows it was skipped


def test_eager_runs_the_task_before_enqueue_returns(queue: ferroq.Queue) -> None:
    @queue.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    with eager(queue):
        handle = add.enqueue(2, 3)
        assert handle.status() == "completed"
    assert handle.result(timeout=0) == 5


def test_eager_args_and_results_go_through_the_serializer(queue: ferroq.Queue) -> None:
    seen = []

    @queue.task(name="echo")
    def echo(value: object) -> object:
        seen.append(value)
        return (value, "done")

    with eager(queue):
        handle = echo.enqueue((1, 2))
    # JSON has no tuples: the processor got a list, as in a worker, and so does the reader.
    assert seen == [[1, 2]]
    assert handle.result(timeout=0) == [[1, 2], "done"]


def test_eager_result_the_serializer_refuses_is_dead_as_in_a_worker(queue: ferroq.Queue) -> None:
    @queue.task(name="unstorable", max_attempts=3)
    def unstorable() -> object:
        return object()

    with eager(queue):
        handle = unstorable.enqueue()
    with pytest.raises(ferroq.TaskFailed, match="cannot be stored"):
        handle.result(timeout=0)
    assert handle.info().attempts == 1  # fatal: no retry


def test_eager_retries_per_policy_without_waiting_the_backoff(queue: ferroq.Queue) -> None:
    runs = []

    @queue.task(name="flaky", max_attempts=3, retry=ferroq.RetryPolicy(base_delay=HOUR, max_delay=HOUR))
    def flaky() -> str:
        runs.append(ferroq.current_task().attempt)  # type: ignore[union-attr]
        if len(runs) < 3:
            raise ConnectionError("down")
        return "up"

    with eager(queue):
        handle = flaky.enqueue()
    # Without the skipped backoff the retry would wait an hour and stay pending here.
    assert handle.result(timeout=0) == "up"
    assert runs == [1, 2, 3]
    assert [t.to_status for t in queue.history(handle.id)].count("pending") == 3  # enqueued, retried twice


def test_eager_retry_signal_runs_again_at_once(queue: ferroq.Queue) -> None:
    runs = []

    @queue.task(name="later")
    def later() -> int:
        runs.append(1)
        if len(runs) == 1:
            raise ferroq.Retry(delay=HOUR)
        return len(runs)

    with eager(queue):
        assert later.enqueue().result(timeout=0) == 2


def test_eager_exhausted_attempts_and_fail_go_dead(queue: ferroq.Queue) -> None:
    @queue.task(name="broken", max_attempts=2, retry=ferroq.RetryPolicy(base_delay=HOUR))
    def broken() -> None:
        raise ConnectionError("still down")

    @queue.task(name="refused", max_attempts=5)
    def refused() -> None:
        raise ferroq.Fail("bad input")

    @queue.task(name="fatal", max_attempts=5, retry=ferroq.RetryPolicy(fatal=(KeyError,)))
    def fatal() -> None:
        raise KeyError("missing")

    with eager(queue):
        handles = [broken.enqueue(), refused.enqueue(), fatal.enqueue()]
    for handle, attempts, error in zip(handles, (2, 1, 1), ("ConnectionError", "ferroq.errors.Fail", "KeyError")):
        with pytest.raises(ferroq.TaskFailed) as failed:
            handle.result(timeout=0)
        assert failed.value.error.type == error
        assert handle.info().attempts == attempts


def test_eager_runs_what_processors_enqueue_and_enqueue_many(queue: ferroq.Queue) -> None:
    @queue.task(name="child")
    def child(x: int) -> int:
        return x * 2

    @queue.task(name="parent")
    def parent(x: int) -> int:
        return child.enqueue(x).id

    with eager(queue):
        child_id = parent.enqueue(21).result(timeout=0)
        ids = queue.enqueue_many([child.call(i) for i in range(5)])
    assert queue.handle(child_id).result(timeout=0) == 42
    assert [queue.handle(i).result(timeout=0) for i in ids] == [0, 2, 4, 6, 8]


def test_eager_leaves_delayed_tasks_pending_and_ends_with_the_block(queue: ferroq.Queue) -> None:
    @queue.task(name="noop")
    def noop() -> None:
        pass

    with eager(queue) as q:
        assert q is queue
        delayed = noop.using(delay=HOUR).enqueue()
        assert delayed.status() == "pending"
    after = noop.enqueue()  # outside the block: stored, not run
    assert after.status() == "pending"
    with pytest.raises(ferroq.InvalidArgument, match="already in an eager block"):
        with eager(queue):
            with eager(queue):
                pass
    assert "_enqueue_one" not in vars(queue)  # the outer block was undone too


def test_drain_runs_until_the_queue_is_empty(queue: ferroq.Queue) -> None:
    @queue.task(name="square")
    def square(x: int) -> int:
        return x * x

    handles = [square.enqueue(i) for i in range(10)]
    soon = square.using(delay=0.2).enqueue(10)
    stats = drain(queue, timeout=60)
    assert stats.completed == 11
    assert [h.result(timeout=0) for h in handles] == [i * i for i in range(10)]
    assert soon.result(timeout=0) == 100  # drain waited for the delayed task
    assert queue.counts()["pending"] == 0


def test_drain_skip_backoff(queue: ferroq.Queue) -> None:
    runs = []

    @queue.task(name="flaky", retry=ferroq.RetryPolicy(base_delay=HOUR, max_delay=HOUR))
    def flaky() -> int:
        runs.append(1)
        if len(runs) < 2:
            raise ConnectionError("down")
        return len(runs)

    handle = flaky.enqueue()
    stats = drain(queue, timeout=60, skip_backoff=True)
    assert handle.result(timeout=0) == 2
    assert (stats.retried, stats.completed) == (1, 1)


def test_drain_times_out_with_a_typed_error(queue: ferroq.Queue) -> None:
    @queue.task(name="noop")
    def noop() -> None:
        pass

    handle = noop.using(delay=HOUR).enqueue()
    with pytest.raises(DrainTimeout, match="1 pending") as timed_out:
        drain(queue, timeout=0.2)
    assert isinstance(timed_out.value, ferroq.FerroqError)
    assert isinstance(timed_out.value, TimeoutError)
    assert handle.status() == "pending"
    with pytest.raises(ferroq.InvalidArgument):
        drain("not a queue", timeout=1)  # type: ignore[arg-type]


def _pytest(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    """Runs pytest on ``source`` in a fresh process, as a user's project would: the plugin
    comes from ferroq's entry point, not from this suite's conftest."""
    test_file = tmp_path / "test_user.py"
    test_file.write_text(source)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", str(test_file)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_pytest_plugin_gives_a_fresh_queue_per_test_and_closes_it(tmp_path: Path) -> None:
    done = _pytest(
        tmp_path,
        textwrap.dedent("""
        import os
        import ferroq
        from ferroq.testing import eager

        paths = []

        def open_files(path):
            fds = "/proc/self/fd"
            return [fd for fd in os.listdir(fds) if os.path.realpath(os.path.join(fds, fd)).startswith(path)]

        def test_first(ferroq_queue):
            assert isinstance(ferroq_queue, ferroq.Queue)

            @ferroq_queue.task(name="add")
            def add(a, b):
                return a + b

            with eager(ferroq_queue):
                assert add.enqueue(1, 2).result(timeout=0) == 3
            paths.append(os.path.realpath(ferroq_queue.path))
            assert open_files(paths[0])

        def test_second(ferroq_queue):
            assert os.path.realpath(ferroq_queue.path) != paths[0]
            assert ferroq_queue.counts()["completed"] == 0
            assert not open_files(paths[0]), "the first test's queue was not closed"
    """),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


def test_readme_testing_example_passes_under_pytest(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Testing your tasks", 1)[1].split("\n## ", 1)[0]
    (example,) = re.findall(r"```python\n(.*?)```", section, re.S)
    done = _pytest(tmp_path, example)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\b[2-9] passed", done.stdout), done.stdout


def test_eager_runs_async_processors(queue: ferroq.Queue) -> None:
    @queue.task(name="double")
    async def double(x: int) -> int:
        return x * 2

    with eager(queue):
        assert double.enqueue(4).result(timeout=0) == 8
