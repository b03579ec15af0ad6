"""Worker(pool="process"): hard timeouts kill the child, a crashing child costs one attempt
and never the worker, SIGTERM lets running tasks finish and leaves no process behind.

Real worker processes throughout (tests/procs.py). Every run of a processor appends a
line to an execution log ("start|end <task id> <attempt> <pid>"), so the tests can count
executions: nothing lost, nothing completed twice, and every child pid gone at the end.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import ferroq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import Child, Procs, procs, wait_until  # noqa: F401

# Real worker processes: seconds each (`pytest -m 'not slow'` skips them).
pytestmark = pytest.mark.slow

WORKER = """
import asyncio, multiprocessing
db, log_path, mode = sys.argv[1], sys.argv[2], sys.argv[3]
options = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
q = ferroq.Queue(db, durability="normal")
FAST = ferroq.RetryPolicy(base_delay=0.01, max_delay=0.05, jitter=0)


def record(event):
    ctx = ferroq.current_task()
    with open(log_path, "a") as f:  # one short append per line: lines never interleave
        f.write(f"{event} {ctx.id} {ctx.attempt} {os.getpid()}\\n")


class Declined(Exception):
    pass


@q.task(name="ok", retry=FAST)
def ok(n):
    record("start")
    record("end")
    return {"n": n, "pid": os.getpid()}


@q.task(name="hang", timeout=0.5, max_attempts=2, retry=FAST)
def hang():
    record("start")
    time.sleep(60)
    record("end")


@q.task(name="exit_first", max_attempts=3, retry=FAST)
def exit_first(code):
    record("start")
    if ferroq.current_task().attempt == 1:
        os._exit(code)
    record("end")
    return "survived"


@q.task(name="segv", max_attempts=2, retry=FAST)
def segv():
    import ctypes
    record("start")
    ctypes.string_at(0)


@q.task(name="slow", retry=FAST)
def slow(seconds):
    record("start")
    time.sleep(seconds)
    record("end")
    return seconds


@q.task(name="late", timeout=0.3, max_attempts=2, retry=FAST)
def late(seconds):
    record("start")
    if ferroq.current_task().attempt == 1:
        time.sleep(seconds)
    record("end")
    return "on time"


@q.task(name="aio", retry=FAST)
async def aio(x, barrier):
    ctx = ferroq.current_task()
    record("start")
    ctx.progress(0.5)
    try:
        ctx.progress(7)
    except ferroq.InvalidArgument as e:  # refused by the parent's store, raised here
        refused = str(e)
    while not os.path.exists(barrier):  # the test reads the progress meanwhile
        await asyncio.sleep(0.01)
    record("end")
    return {"x": x * 2, "id": ctx.id, "name": ctx.name, "attempt": ctx.attempt,
            "max_attempts": ctx.max_attempts, "pid": os.getpid(), "cancelled": ctx.cancelled(),
            "refused": refused}


@q.task(name="aio_hang", timeout=0.3, max_attempts=1)
async def aio_hang():
    record("start")
    await asyncio.sleep(60)


@q.task(name="picky", retry=ferroq.RetryPolicy(base_delay=0.01, fatal=(LookupError, Declined)))
def picky(kind):
    record("start")
    if kind == "key":
        raise KeyError("no such key")          # a LookupError: fatal by the policy
    if kind == "declined":
        raise Declined("card declined")        # a class of this script: fatal by the policy
    if ferroq.current_task().attempt == 1:
        raise ferroq.Retry(delay=0.01, reason="later")
    record("end")
    return "second time"


@q.batch_task(name="lengths", max_size=10, max_wait=0.05, retry=FAST)
def lengths(items):
    return [ValueError("empty") if not s else len(s) for s in items]


if __name__ == "__main__":
    @q.task(name="guarded")  # under the guard: the child re-imports the script without it
    def guarded():
        return 1

    options.setdefault("pool", "process")
    worker = ferroq.Worker(q, lease=5.0, rescue_interval=0.2, poll_interval=0.1, **options)
    stats = worker.run(**({"until_empty": True} if mode == "empty" else {}))
    emit({"stats": stats.__dict__, "children": [p.pid for p in multiprocessing.active_children()],
          "pid": os.getpid()})
"""

# Retry limits as the worker declares them (max_attempts is stored at enqueue).
ATTEMPTS = {
    "ok": 3,
    "hang": 2,
    "exit_first": 3,
    "segv": 2,
    "slow": 3,
    "late": 2,
    "aio": 3,
    "aio_hang": 1,
    "picky": 3,
    "guarded": 3,
}


def _never(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("runs in the worker process")


def client(db: Path) -> ferroq.Queue:
    """The queue as the test enqueues into it: same names and attempts as the worker's."""
    q = ferroq.Queue(db, durability="normal")
    for name, attempts in ATTEMPTS.items():
        q.task(name=name, max_attempts=attempts)(_never)
    q.batch_task(name="lengths", max_size=10)(_never)
    return q


def events(log: Path) -> list[tuple[str, int, int, int]]:
    """(event, task id, attempt, pid) per line of the execution log."""
    if not log.exists():
        return []
    return [(e, int(i), int(a), int(p)) for e, i, a, p in (line.split() for line in log.read_text().splitlines())]


def runs_of(log: Path, task_id: int, event: str = "start") -> list[tuple[int, int]]:
    """(attempt, pid) of each logged ``event`` of one task."""
    return [(a, p) for e, i, a, p in events(log) if i == task_id and e == event]


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def statuses(q: ferroq.Queue, task_id: int) -> list[str]:
    return [t.to_status for t in q.history(task_id)]


def start(procs: Procs, db: Path, log: Path, mode: str, **options: Any) -> Child:
    script = procs.script("pool_worker", WORKER)
    return procs.start(script, db, log, mode, json.dumps(options))


def finish(worker: Child, log: Path, timeout: float = 60) -> dict[str, Any]:
    """Waits for a clean exit; checks that no child process is left, in the worker (its own
    view) nor among the pids that ran tasks."""
    worker.check(timeout)
    out = worker.last()
    assert out["children"] == [], out
    pids = {p for *_, p in events(log)}
    assert worker.pid not in pids, "a processor ran in the worker process itself"
    wait_until(lambda: not any(running(p) for p in pids), 10, "every child process to be gone")
    return out["stats"]  # type: ignore[no-any-return]


def assert_each_completed_once(q: ferroq.Queue, log: Path, ids: list[int]) -> None:
    for task_id in ids:
        info = q.get(task_id)
        assert info.status == "completed", info
        assert len(runs_of(log, task_id, "end")) == 1, events(log)
        assert statuses(q, task_id).count("completed") == 1


# -- the four tests of the issue ---------------------------------------------------------


@pytest.mark.timeout(120)
def test_timed_out_task_is_killed_retried_then_dead(tmp_path: Path, procs: Procs) -> None:
    db, log = tmp_path / "q.db", tmp_path / "runs.log"
    q = client(db)
    hang = q.enqueue("hang").id
    oks = [q.enqueue("ok", i).id for i in range(3)]
    stats = finish(start(procs, db, log, "empty", concurrency=2), log)

    info = q.get(hang)
    assert (info.status, info.attempts) == ("dead", 2)
    assert info.last_error is not None and info.last_error.type == "TimeoutError"
    assert "exceeded its timeout of 0.5s" in info.last_error.message and "killed" in info.last_error.message
    assert statuses(q, hang) == ["pending", "running", "pending", "running", "dead"]
    attempts = runs_of(log, hang)
    assert [a for a, _ in attempts] == [1, 2]
    assert attempts[0][1] != attempts[1][1], "the killed child was replaced by a fresh one"
    assert runs_of(log, hang, "end") == []  # killed, never finished
    assert_each_completed_once(q, log, oks)
    assert (stats["timed_out"], stats["dead"], stats["completed"], stats["retried"]) == (2, 1, 3, 1), stats


@pytest.mark.timeout(120)
def test_child_calling_os_exit_costs_one_attempt_and_the_worker_lives_on(tmp_path: Path, procs: Procs) -> None:
    db, log = tmp_path / "q.db", tmp_path / "runs.log"
    q = client(db)
    crash = q.enqueue("exit_first", 7).id
    oks = [q.enqueue("ok", i).id for i in range(5)]
    # One child: the same slot must replace it and go on with the other tasks.
    stats = finish(start(procs, db, log, "empty", concurrency=1), log)

    info = q.get(crash)
    assert (info.status, info.attempts, info.result) == ("completed", 2, "survived")
    failed = q.history(crash)[2]
    assert (failed.from_status, failed.to_status) == ("running", "pending")
    assert failed.error is not None and failed.error.type == "ferroq.errors.ProcessCrashed"
    assert "exited with code 7" in failed.error.message, failed.error
    assert [a for a, _ in runs_of(log, crash)] == [1, 2]
    assert_each_completed_once(q, log, oks)
    assert (stats["crashed"], stats["respawned"], stats["completed"]) == (1, 1, 6), stats


@pytest.mark.timeout(120)
def test_sigterm_during_long_tasks_lets_them_finish_and_leaves_nothing_running(tmp_path: Path, procs: Procs) -> None:
    db, log = tmp_path / "q.db", tmp_path / "runs.log"
    q = client(db)
    ids = [q.enqueue("slow", 1.5).id for _ in range(5)]  # 2 run, the rest wait in the buffer
    worker = start(procs, db, log, "forever", concurrency=2, shutdown_grace=30.0)
    started = wait_until(lambda: len(events(log)) >= 2 and events(log), 60, "two tasks to start", children=[worker])
    # systemd and a terminal's Ctrl-C signal the whole process group: children ignore it.
    for _, _, _, pid in started:
        os.kill(pid, signal.SIGTERM)
    worker.send(signal.SIGTERM)
    stats = finish(worker, log)

    ran = sorted({i for _, i, _, _ in events(log)})
    assert len(ran) == 2, events(log)
    assert_each_completed_once(q, log, ran)
    for task_id in set(ids) - set(ran):
        info = q.get(task_id)
        # Given back untouched: pending, attempt returned, never started.
        assert (info.status, info.attempts) == ("pending", 0), info
    assert q.counts() == {"pending": 3, "running": 0, "completed": 2, "dead": 0, "cancelled": 0}
    assert (stats["completed"], stats["crashed"]) == (2, 0), stats


@pytest.mark.timeout(120)
def test_mixed_soak_keeps_memory_and_descriptors_flat(tmp_path: Path) -> None:
    """The short soak (a few seconds); ``benches/soak_process_pool.py`` runs the long one."""
    import subprocess

    from procs import child_env

    bench = Path(__file__).resolve().parent.parent / "benches" / "soak_process_pool.py"
    done = subprocess.run(
        [sys.executable, str(bench), "--seconds", "6", "--json", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=110,
        env=child_env(),
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["lost"] == 0 and report["completed_twice"] == 0, report
    assert report["crashed"] > 0 and report["timed_out"] > 0 and report["completed"] > 500, report
    assert report["children_left"] == [], report
    samples = report["samples"]
    warm, end = samples[len(samples) // 3], samples[-1]  # after warm-up, at the end
    assert end["fds"] <= warm["fds"] + 4, samples  # a leaked pipe per child would show
    assert end["rss_kib"] - warm["rss_kib"] < 16 * 1024, samples


# -- more crashes, timeouts and shutdowns ------------------------------------------------


@pytest.mark.timeout(120)
def test_segfaulting_child_is_a_typed_failure_and_the_worker_lives_on(tmp_path: Path, procs: Procs) -> None:
    db, log = tmp_path / "q.db", tmp_path / "runs.log"
    q = client(db)
    segv = q.enqueue("segv").id
    oks = [q.enqueue("ok", i).id for i in range(3)]
    stats = finish(start(procs, db, log, "empty", concurrency=1), log)

    info = q.get(segv)
    assert (info.status, info.attempts) == ("dead", 2)
    assert info.last_error is not None and info.last_error.type == "ferroq.errors.ProcessCrashed"
    assert "signal 11 (SIGSEGV)" in info.last_error.message, info.last_error
    assert len({pid for _, pid in runs_of(log, segv)}) == 2
    assert_each_completed_once(q, log, oks)
    assert (stats["crashed"], stats["dead"], stats["completed"]) == (2, 1, 3), stats


@pytest.mark.timeout(120)
def test_grace_expiry_kills_the_child_and_gives_the_task_back(tmp_path: Path, procs: Procs) -> None:
    db, log = tmp_path / "q.db", tmp_path / "runs.log"
    q = client(db)
    task_id = q.enqueue("slow", 60).id
    worker = start(procs, db, log, "forever", concurrency=1, shutdown_grace=0.5)
    wait_until(lambda: events(log), 60, "the task to start", children=[worker])
    worker.send(signal.SIGTERM)
    stats = finish(worker, log, timeout=30)

    info = q.get(task_id)
    assert (info.status, info.attempts) == ("pending", 0)
    assert statuses(q, task_id) == ["pending", "running", "pending"]
    assert runs_of(log, task_id, "end") == []
    assert (stats["released"], stats["completed"]) == (1, 0), stats


@pytest.mark.timeout(120)
def test_second_signal_stops_at_once_and_kills_the_child(tmp_path: Path, procs: Procs) -> None:
    db, log = tmp_path / "q.db", tmp_path / "runs.log"
    q = client(db)
    task_id = q.enqueue("slow", 60).id
    worker = start(procs, db, log, "forever", concurrency=1, shutdown_grace=60.0)
    wait_until(lambda: events(log), 60, "the task to start", children=[worker])
    worker.send(signal.SIGTERM)
    wait_until(lambda: "SIGTERM: finishing" in worker.stderr(), 10, "the first signal to be handled")
    worker.send(signal.SIGTERM)
    stats = finish(worker, log, timeout=30)
    assert (q.get(task_id).status, q.get(task_id).attempts) == ("pending", 0)
    assert stats["released"] == 1, stats


@pytest.mark.timeout(120)
def test_children_die_with_a_sigkilled_worker(tmp_path: Path, procs: Procs) -> None:
    db, log = tmp_path / "q.db", tmp_path / "runs.log"
    q = client(db)
    q.enqueue("slow", 60)
    worker = start(procs, db, log, "forever", concurrency=2)
    ((_, _, _, child),) = wait_until(lambda: events(log), 60, "the task to start", children=[worker])
    assert running(child)
    worker.send(signal.SIGKILL)
    assert worker.wait(10) == -signal.SIGKILL
    wait_until(lambda: not running(child), 10, "the orphaned child to die")


@pytest.mark.timeout(120)
def test_thread_mode_timeout_fails_the_run_and_discards_the_late_result(tmp_path: Path, procs: Procs) -> None:
    db, log = tmp_path / "q.db", tmp_path / "runs.log"
    q = client(db)
    task_id = q.enqueue("late", 1.0).id
    q.enqueue("slow", 1.5)  # keeps the worker up until the late run has returned
    worker = start(procs, db, log, "empty", concurrency=3, pool="thread")
    worker.check(60)
    info = q.get(task_id)
    assert (info.status, info.attempts, info.result) == ("completed", 2, "on time")
    failed = q.history(task_id)[2]
    assert failed.error is not None and failed.error.type == "TimeoutError"
    assert "thread keeps running" in failed.error.message
    # Thread mode cannot kill: attempt 1 ran to its end, in the worker process itself.
    assert sorted(runs_of(log, task_id, "end")) == [(1, worker.pid), (2, worker.pid)]
    assert statuses(q, task_id).count("completed") == 1


@pytest.mark.timeout(120)
def test_async_processors_run_in_the_child_with_their_context(tmp_path: Path, procs: Procs) -> None:
    db, log = tmp_path / "q.db", tmp_path / "runs.log"
    q = client(db)
    barrier = tmp_path / "barrier"
    good = q.enqueue("aio", 21, str(barrier)).id
    stuck = q.enqueue("aio_hang").id
    worker = start(procs, db, log, "empty", concurrency=2)
    # progress() in the child is stored by the parent, which holds the lease.
    wait_until(lambda: q.get(good).progress == 0.5, 60, "the progress to be stored", children=[worker])
    barrier.touch()
    stats = finish(worker, log)

    info = q.get(good)
    assert info.status == "completed"
    result = info.result
    assert result["pid"] != worker.pid
    assert {k: result[k] for k in ("x", "id", "name", "attempt", "max_attempts", "cancelled")} == {
        "x": 42,
        "id": good,
        "name": "aio",
        "attempt": 1,
        "max_attempts": 3,
        "cancelled": False,
    }
    assert result["refused"].startswith("progress must be between 0.0 and 1.0")
    dead = q.get(stuck)
    assert dead.status == "dead" and dead.last_error is not None
    assert dead.last_error.type == "TimeoutError" and "killed" in dead.last_error.message
    assert stats["timed_out"] == 1, stats


@pytest.mark.timeout(120)
def test_errors_are_classified_by_the_policy_across_the_process_boundary(tmp_path: Path, procs: Procs) -> None:
    db, log = tmp_path / "q.db", tmp_path / "runs.log"
    q = client(db)
    key, declined, retried = (q.enqueue("picky", kind).id for kind in ("key", "declined", "retry"))
    finish(start(procs, db, log, "empty", concurrency=2), log)

    for task_id, error_type in ((key, "KeyError"), (declined, "__main__.Declined")):
        info = q.get(task_id)
        assert (info.status, info.attempts) == ("dead", 1), info  # fatal: no second attempt
        assert info.last_error is not None and info.last_error.type == error_type
        assert info.last_error.traceback and "picky" in info.last_error.traceback
    info = q.get(retried)
    assert (info.status, info.attempts, info.result) == ("completed", 2, "second time")
    first = q.history(retried)[2].error
    assert first is not None and (first.type, first.message) == ("ferroq.errors.Retry", "later")


@pytest.mark.timeout(120)
def test_batch_tasks_run_in_the_child(tmp_path: Path, procs: Procs) -> None:
    db, log = tmp_path / "q.db", tmp_path / "runs.log"
    q = client(db)
    handles = [q.enqueue("lengths", s) for s in ("a cat", "", "the big dog")]
    finish(start(procs, db, log, "empty", concurrency=1), log)
    assert handles[0].result(timeout=5) == 5 and handles[2].result(timeout=5) == 11
    info = handles[1].info()
    assert info.last_error is not None and (info.last_error.type, info.last_error.message) == ("ValueError", "empty")


# -- processors a child cannot find ---------------------------------------------------------


@pytest.mark.timeout(120)
def test_task_defined_under_the_main_guard_goes_dead_with_a_clear_error(tmp_path: Path, procs: Procs) -> None:
    db, log = tmp_path / "q.db", tmp_path / "runs.log"
    q = client(db)
    task_id = q.enqueue("guarded").id
    ok = q.enqueue("ok", 1).id
    finish(start(procs, db, log, "empty", concurrency=1), log)
    info = q.get(task_id)
    assert (info.status, info.attempts) == ("dead", 1)  # no attempt could go differently
    assert info.last_error is not None and info.last_error.type == "ferroq.errors.TaskNotImportable"
    assert "__main__.guarded" in info.last_error.message and "__main__" in info.last_error.message
    assert q.get(ok).status == "completed"


def test_lambda_or_nested_task_is_refused_before_anything_is_claimed(queue: ferroq.Queue) -> None:
    lam = queue.task(name="lam")(lambda: 1)

    def nested() -> int:
        return 1

    h = lam.enqueue()
    with pytest.raises(ferroq.TaskNotImportable, match="'lam'.*top level of a module"):
        ferroq.Worker(queue, pool="process", handle_signals=False).run(until_idle=True)
    with pytest.raises(ferroq.TaskNotImportable, match="nested"):
        pickle.dumps(queue.task(name="nested")(nested))
    assert (h.info().status, h.info().attempts) == ("pending", 0)
    assert issubclass(ferroq.TaskNotImportable, ferroq.FerroqError)


def test_tasks_pickle_by_reference(queue: ferroq.Queue) -> None:
    module = types.ModuleType("ferroq_pickled_tasks")

    def double(x: int) -> int:
        return 2 * x

    double.__module__, double.__qualname__ = module.__name__, "double"
    module.double = queue.task(double)  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    try:
        data = pickle.dumps(module.double)  # type: ignore[attr-defined]
        assert len(data) < 200  # the reference, not the function or its queue
        assert pickle.loads(data) is module.double  # type: ignore[attr-defined]
    finally:
        del sys.modules[module.__name__]


def test_bad_pool_arguments_are_typed_errors(queue: ferroq.Queue) -> None:
    for bad in ("bogus", "Process", 1, None):
        with pytest.raises(ferroq.InvalidArgument, match="pool must be"):
            ferroq.Worker(queue, pool=bad)  # type: ignore[arg-type]

    class Local:
        def dumps(self, value: Any) -> bytes:
            return b""

        def loads(self, data: bytes) -> Any:
            return None

    q = ferroq.Queue(Path(queue.path).parent / "other.db", serializer=Local())
    with pytest.raises(ferroq.InvalidArgument, match="serializer.*cannot be pickled"):
        ferroq.Worker(q, pool="process")
