"""Worker lifecycle hooks (on_start, on_stop) and per-run hooks (before_run, after_run), with
real worker processes in both pools: each hook writes a line (event, task id, pid, thread)
to a log file, so the tests see where and in which order each ran."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

import ferroq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import Procs, procs  # noqa: F401

# Real worker processes: seconds each (`pytest -m 'not slow'` skips them).
pytestmark = [pytest.mark.slow, pytest.mark.both_engines]

WORKER = """
import asyncio, threading
db, log_path, pool = sys.argv[1], sys.argv[2], sys.argv[3]
q = ferroq.Queue(db)

def note(*fields):
    # O_APPEND: one whole line per write, from any process.
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    line = " ".join(str(f) for f in (*fields, os.getpid(), threading.current_thread().name))
    os.write(fd, (line + "\\n").encode())
    os.close(fd)

def on_start():
    note("on_start", 0)

def on_stop():
    note("on_stop", 0)

def before_run(ctx):
    assert ferroq.current_task().id == ctx.id  # the run's context is current in the hook
    note("before", ctx.id)
    if ctx.name == "before_fails" or (ctx.name == "batch" and os.path.exists(f"{log_path}.refuse{ctx.id}")):
        raise RuntimeError("before_run refused")

def after_run(ctx, outcome):
    note("after", ctx.id, outcome.ok, repr(outcome.result), type(outcome.error).__name__)
    if ctx.name == "after_fails":
        raise RuntimeError("after_run broke")

@q.task(name="ok", max_attempts=1)
def ok(n):
    note("run", ferroq.current_task().id)
    return n * 2

@q.task(name="boom", max_attempts=1)
def boom(n):
    note("run", ferroq.current_task().id)
    raise ValueError("boom")

@q.task(name="aok", max_attempts=1)
async def aok(n):
    note("run", ferroq.current_task().id)
    await asyncio.sleep(0)
    return n + 1

@q.task(name="before_fails", max_attempts=1)
def before_fails(n):
    note("run", ferroq.current_task().id)

@q.task(name="after_fails", max_attempts=1)
def after_fails(n):
    note("run", ferroq.current_task().id)
    return "kept"

@q.batch_task(name="batch", max_size=10, max_wait=0.2, max_attempts=1)
def batch(items):
    note("batch", 0, *items)
    return [ValueError("odd item") if item == 3 else item * 10 for item in items]

if __name__ == "__main__":  # pool="process" children import this script
    emit(os.getpid())
    stats = ferroq.Worker(q, concurrency=2, pool=pool, handle_signals=False, poll_interval=0.05,
                          on_start=on_start, on_stop=on_stop, before_run=before_run,
                          after_run=after_run).run(until_empty=True)
    emit(stats.__dict__)
"""


def _stub(n: int) -> None:
    pass


def _lines(log: Path) -> list[list[str]]:
    return [line.split(" ") for line in log.read_text().splitlines()]


def _drain(
    tmp_path: Path, db: Path | str, procs: Procs, pool: str, enqueue: Any
) -> tuple[ferroq.Queue, int, list[list[str]], str]:
    log = tmp_path / "hooks.log"
    q = ferroq.Queue(db)
    for name in ("ok", "boom", "aok", "before_fails", "after_fails"):  # to enqueue by name here
        q.task(name=name, max_attempts=1)(_stub)
    enqueue(q)
    worker = procs.run(procs.script("worker.py", WORKER), db, log, pool, timeout=120)
    worker_pid = worker.records()[0]
    return q, worker_pid, _lines(log), worker.stderr()


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_each_run_of_a_batch_task_gets_its_hooks(
    tmp_path: Path, queue_location: Path | str, procs: Procs, pool: str
) -> None:
    """before_run for each run before the batch function, after_run for each after it with
    its own item's outcome; a run whose before_run raises is left out of the batch and fails
    with the hook's error, the others run."""
    ids: dict[int, int] = {}

    def enqueue(q: ferroq.Queue) -> None:
        q.batch_task(name="batch", max_attempts=1)(lambda items: items)
        for item in (1, 2, 3, 4):
            ids[item] = q.enqueue("batch", item).id
        (tmp_path / f"hooks.log.refuse{ids[2]}").touch()

    q, _, lines, _ = _drain(tmp_path, queue_location, procs, pool, enqueue)
    batched = sorted(int(item) for line in lines if line[0] == "batch" for item in line[2:-2])
    assert batched == [1, 3, 4]  # item 2's before_run refused it
    after = {1: ["True", "10", "NoneType"], 3: ["False", "None", "ValueError"], 4: ["True", "40", "NoneType"]}
    for item, task_id in ids.items():
        seen = _by_task(lines, task_id)
        assert [line[0] for line in seen] == (["before"] if item == 2 else ["before", "after"]), (item, seen)
        if item != 2:
            assert seen[1][2:5] == after[item], (item, seen)
            ran = next(i for i, line in enumerate(lines) if line[0] == "batch" and str(item) in line[2:-2])
            assert lines.index(seen[0]) < ran < lines.index(seen[1]), (item, lines)
    assert [q.get(ids[i]).status for i in (1, 2, 3, 4)] == ["completed", "dead", "dead", "completed"]
    refused = q.get(ids[2]).last_error
    assert refused is not None and (refused.type, refused.message) == ("RuntimeError", "before_run refused")
    assert q.handle(ids[4]).result(timeout=0) == 40


def _by_task(lines: list[list[str]], task_id: int) -> list[list[str]]:
    return [line for line in lines if line[1] == str(task_id)]


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_hooks_run_around_each_run_where_it_runs(
    tmp_path: Path, queue_location: Path | str, procs: Procs, pool: str
) -> None:
    """on_start first and on_stop last, once each, in the worker process; before_run, the
    processor and after_run in that order, in one thread of the process that runs the task
    (the worker's own under pool="thread", a child under pool="process"); after_run sees
    the result or the exception."""
    ids: dict[str, int] = {}

    def enqueue(q: ferroq.Queue) -> None:
        for name, arg in (("ok", 5), ("boom", 1), ("aok", 9)):
            ids[name] = q.enqueue(name, arg).id

    q, worker_pid, lines, _ = _drain(tmp_path, queue_location, procs, pool, enqueue)
    assert lines[0][:3] == ["on_start", "0", str(worker_pid)]
    assert lines[-1][:3] == ["on_stop", "0", str(worker_pid)]
    assert [line[0] for line in lines].count("on_start") == 1
    assert [line[0] for line in lines].count("on_stop") == 1
    after = {
        "ok": ["True", "10", "NoneType"],
        "boom": ["False", "None", "ValueError"],
        "aok": ["True", "10", "NoneType"],
    }
    for name, task_id in ids.items():
        seen = _by_task(lines, task_id)
        assert [line[0] for line in seen] == ["before", "run", "after"], (name, seen)
        assert seen[2][2:5] == after[name], (name, seen)
        assert len({(line[-2], line[-1]) for line in seen}) == 1, f"{name}: not one thread: {seen}"
        pid = int(seen[0][-2])
        assert (pid == worker_pid) == (pool == "thread"), (name, pid, worker_pid)
    assert q.get(ids["ok"]).status == "completed" and q.handle(ids["ok"]).result(timeout=0) == 10
    assert q.get(ids["boom"]).status == "dead"


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_a_failing_before_run_fails_the_run_and_a_failing_after_run_changes_nothing(
    tmp_path: Path, queue_location: Path | str, procs: Procs, pool: str
) -> None:
    ids: dict[str, int] = {}

    def enqueue(q: ferroq.Queue) -> None:
        ids["before"] = q.enqueue("before_fails", 1).id
        ids["after"] = q.enqueue("after_fails", 2).id

    q, _, lines, stderr = _drain(tmp_path, queue_location, procs, pool, enqueue)
    # before_run raised: the processor never ran, the run failed with the hook's error.
    assert [line[0] for line in _by_task(lines, ids["before"])] == ["before"]
    refused = q.get(ids["before"])
    assert refused.status == "dead"
    assert refused.last_error is not None and refused.last_error.type == "RuntimeError"
    assert refused.last_error.message == "before_run refused"
    # after_run raised: logged, the run's outcome stands.
    assert [line[0] for line in _by_task(lines, ids["after"])] == ["before", "run", "after"]
    assert q.get(ids["after"]).status == "completed"
    assert q.handle(ids["after"]).result(timeout=0) == "kept"
    assert "after_run hook" in stderr and "after_run broke" in stderr


def _module_hook(ctx: Any) -> None:
    pass


def test_hooks_are_checked_when_the_worker_is_made(queue_location: Path | str) -> None:
    q = ferroq.Queue(queue_location)
    for name in ("on_start", "on_stop", "before_run", "after_run"):
        with pytest.raises(ferroq.InvalidArgument, match=name):
            ferroq.Worker(q, **{name: "not callable"})  # type: ignore[arg-type]
    # pool="process": per-run hooks run in the children, which import them by reference.
    with pytest.raises(ferroq.InvalidArgument, match="before_run.*importable"):
        ferroq.Worker(q, pool="process", before_run=lambda ctx: None)

    def nested(ctx: Any, outcome: Any) -> None:
        pass

    with pytest.raises(ferroq.InvalidArgument, match="after_run.*importable"):
        ferroq.Worker(q, pool="process", after_run=nested)
    ferroq.Worker(q, pool="process", before_run=_module_hook, on_start=lambda: None)  # on_start: this process
    ferroq.Worker(q, before_run=lambda ctx: None)  # threads: anything callable


def test_an_on_start_that_raises_stops_run_before_anything_is_claimed(queue_location: Path | str) -> None:
    q = ferroq.Queue(queue_location)
    ran: list[int] = []
    q.task(name="t")(lambda: ran.append(1))
    handle = q.enqueue("t")

    def on_start() -> None:
        raise OSError("no database")

    worker = ferroq.Worker(q, on_start=on_start, handle_signals=False)
    with pytest.raises(OSError, match="no database"):
        worker.run(until_empty=True)
    assert q.get(handle.id).status == "pending" and ran == []
    worker._on_start = None  # the worker is usable again
    worker.run(until_empty=True)
    assert ran == [1]


def test_on_stop_follows_on_start_when_the_process_pool_cannot_start(queue_location: Path | str) -> None:
    q = ferroq.Queue(queue_location)
    q.task(name="t")(lambda: None)  # no child could import it: run() refuses before claiming
    calls: list[str] = []
    worker = ferroq.Worker(
        q,
        pool="process",
        on_start=lambda: calls.append("start"),
        on_stop=lambda: calls.append("stop"),
        handle_signals=False,
    )
    with pytest.raises(ferroq.TaskNotImportable):
        worker.run(until_empty=True)
    assert calls == ["start", "stop"]
