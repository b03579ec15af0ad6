"""Crashes and hostile process events: SIGKILL mid-task, a worker frozen past its lease,
enqueuers killed at random points, fork(), pragmas as other processes see them, a full disk.

Real processes throughout. The test process never opens a queue file with Python's
sqlite3 (``sqlite3_probe`` does that in a subprocess).
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import pytest

import ferroq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import Procs, procs, sqlite3_probe, wait_until  # noqa: F401

# Real worker processes: seconds each (`pytest -m 'not slow'` skips them).
pytestmark = pytest.mark.slow


def pairs(q: ferroq.Queue, task_id: int) -> list[tuple[str | None, str]]:
    return [(t.from_status, t.to_status) for t in q.history(task_id)]


# -- SIGKILL mid-task ---------------------------------------------------------------------

SLOW_WORKER = """
db, markers, mode, name = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
q = ferroq.Queue(db)

@q.task(name="slow")
def slow(n):
    ctx = ferroq.current_task()
    touch(os.path.join(markers, f"started-{ctx.id}-{ctx.attempt}-{os.getpid()}"))
    if mode == "hang":
        time.sleep(600)
    return {"n": n, "pid": os.getpid(), "attempt": ctx.attempt}

until = {"forever": {}, "empty": {"until_empty": True}}[sys.argv[5]]
stats = ferroq.Worker(q, concurrency=1, lease=2.0, rescue_interval=0.2, poll_interval=0.1,
                      name=name).run(**until)
emit(stats.__dict__)
"""


def started_markers(markers: Path, task_id: int) -> list[str]:
    return sorted(p.name for p in markers.glob(f"started-{task_id}-*"))


def enqueue_slow(db: Path, max_attempts: int) -> tuple[ferroq.Queue, int]:
    q = ferroq.Queue(db)

    @q.task(name="slow", max_attempts=max_attempts)
    def slow(n: int) -> Any:
        raise AssertionError("runs in the workers")

    return q, slow.enqueue(7).id


def start_and_kill(procs: Procs, tmp_path: Path, db: Path, task_id: int) -> float:
    """Starts a worker that hangs in the task, SIGKILLs it once the task started; returns when."""
    markers = tmp_path / "markers"
    markers.mkdir(exist_ok=True)
    script = procs.script("slow_worker", SLOW_WORKER)
    victim = procs.start(script, db, markers, "hang", "victim", "forever", label="victim")
    wait_until(lambda: started_markers(markers, task_id), 30, "the task to start", children=[victim])
    victim.send(signal.SIGKILL)
    killed_at = time.monotonic()
    assert victim.wait(10) == -signal.SIGKILL
    return killed_at


@pytest.mark.timeout(90)
def test_sigkilled_worker_task_is_rescued_and_completed_once(tmp_path: Path, procs: Procs) -> None:
    db = tmp_path / "q.db"
    markers = tmp_path / "markers"
    q, task_id = enqueue_slow(db, max_attempts=3)
    killed_at = start_and_kill(procs, tmp_path, db, task_id)
    assert q.get(task_id).status == "running"  # the dead worker still holds the lease

    rescuer = procs.start(tmp_path / "slow_worker.py", db, markers, "quick", "rescuer", "empty", label="rescuer")
    # The rescuer's own rescue loop frees the task once the lease (2 s) runs out.
    wait_until(
        lambda: q.get(task_id).status == "completed",
        2.0 + 5.0 + 1.0,
        "the rescued task to complete within lease + 5 s",
        interval=0.05,
        children=[rescuer],
    )
    assert time.monotonic() - killed_at <= 2.0 + 5.0 + 1.0
    rescuer.check(timeout=30)

    info = q.get(task_id)
    assert info.status == "completed"
    assert info.attempts == 2
    assert info.result == {"n": 7, "pid": rescuer.pid, "attempt": 2}
    assert pairs(q, task_id) == [
        (None, "pending"),
        ("pending", "running"),
        ("running", "pending"),
        ("pending", "running"),
        ("running", "completed"),
    ]
    hist = q.history(task_id)
    assert hist[1].worker == "victim" and hist[2].worker == "victim"
    assert hist[2].error is not None and hist[2].error.type == "LeaseExpired", hist[2]
    assert hist[3].worker == "rescuer" and hist[4].worker == "rescuer"
    assert [t.to_status for t in hist].count("completed") == 1
    assert len(started_markers(markers, task_id)) == 2  # one run per worker
    stats = rescuer.last()
    assert (stats["rescued"], stats["completed"], stats["claimed"]) == (1, 1, 1), stats


@pytest.mark.timeout(60)
def test_sigkilled_worker_with_one_attempt_goes_dead(tmp_path: Path, procs: Procs) -> None:
    db = tmp_path / "q.db"
    markers = tmp_path / "markers"
    q, task_id = enqueue_slow(db, max_attempts=1)
    killed_at = start_and_kill(procs, tmp_path, db, task_id)

    # The rescuer here is a worker in the test process (its processor must never run).
    worker = ferroq.Worker(
        q, concurrency=1, lease=2.0, rescue_interval=0.2, poll_interval=0.1, handle_signals=False, name="local"
    )
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(stats=worker.run(until_empty=True)), daemon=True)
    thread.start()
    try:
        thread.join(timeout=2.0 + 5.0 + 5.0)
    finally:
        if thread.is_alive():
            worker.stop()
            thread.join(timeout=10)
    assert "stats" in result, "the in-process worker did not return"
    assert time.monotonic() - killed_at <= 2.0 + 5.0 + 5.0

    info = q.get(task_id)
    assert info.status == "dead", info
    assert info.attempts == 1
    assert info.last_error is not None and info.last_error.type == "LeaseExpired"
    assert info.result is None
    assert pairs(q, task_id) == [(None, "pending"), ("pending", "running"), ("running", "dead")]
    assert q.history(task_id)[2].error.type == "LeaseExpired"  # type: ignore[union-attr]
    assert len(started_markers(markers, task_id)) == 1  # never run again
    stats = result["stats"]
    assert (stats.rescued, stats.claimed, stats.completed) == (1, 0, 0), stats
    with pytest.raises(ferroq.TaskFailed) as failed:
        q.handle(task_id).result(timeout=1)
    assert failed.value.error.type == "LeaseExpired"


# -- a frozen worker's late result ----------------------------------------------------------

FROZEN_WORKER = """
db, markers, name = sys.argv[1], sys.argv[2], sys.argv[3]
q = ferroq.Queue(db)

@q.task(name="job")
def job():
    ctx = ferroq.current_task()
    touch(os.path.join(markers, f"{name}-started"))
    if name == "A":
        # Frozen (SIGSTOP) in here by the test; finishes only after it is let go.
        wait_for_file(os.path.join(markers, "release-A"))
        return f"from-{name}"
    return f"from-{name}"

lease = float(sys.argv[4])
# A stops once its one task is done; B waits for A's task to be rescued, then runs it.
until = {"until_idle": True} if name == "A" else {"until_empty": True}
stats = ferroq.Worker(q, concurrency=1, lease=lease, rescue_interval=0.2, poll_interval=0.1,
                      name=name).run(**until)
emit(stats.__dict__)
"""


def write_lock_free(db: Path) -> bool:
    """Whether a write can get the lock within 0.5 s (a process frozen inside a write
    transaction would hold it forever)."""
    try:
        # Opening can wait for the lock as well, so it is inside the try.
        with ferroq.Queue(db, name="probe", busy_timeout=0.5) as probe:
            probe.task(name="noop")(lambda: None).enqueue()
        return True
    except ferroq.StorageError:
        return False


@pytest.mark.timeout(90)
def test_late_result_after_lease_loss_is_discarded(tmp_path: Path, procs: Procs) -> None:
    db = tmp_path / "q.db"
    markers = tmp_path / "markers"
    markers.mkdir()
    q = ferroq.Queue(db)

    @q.task(name="job")
    def job() -> str:
        raise AssertionError("runs in the workers")

    task_id = job.enqueue().id
    script = procs.script("frozen_worker", FROZEN_WORKER)
    a = procs.start(script, db, markers, "A", 1.0, label="worker-A")
    wait_until(lambda: (markers / "A-started").exists(), 30, "A to start the task", children=[a])

    # Freeze A, so it stops heartbeating. If it froze inside a write transaction (a
    # heartbeat, for a millisecond), let it run a moment and freeze it again.
    for _ in range(20):
        a.send(signal.SIGSTOP)
        if write_lock_free(db):
            break
        a.send(signal.SIGCONT)
        time.sleep(0.05)
    else:
        pytest.fail("worker A kept holding the write lock")

    try:
        b = procs.start(script, db, markers, "B", 30.0, label="worker-B")
        b.check(timeout=30)  # rescues A's expired lease, runs the task, completes it
        info = q.get(task_id)
        assert (info.status, info.result, info.attempts) == ("completed", "from-B", 2), info
    finally:
        (markers / "release-A").touch()
        a.send(signal.SIGCONT)
    a.check(timeout=30)

    stats_a, stats_b = a.last(), b.last()
    assert (stats_a["claimed"], stats_a["completed"], stats_a["lost"]) == (1, 0, 1), stats_a
    assert (stats_b["claimed"], stats_b["completed"], stats_b["rescued"]) == (1, 1, 1), stats_b
    assert "lease was lost" in a.stderr(), a.describe()

    info = q.get(task_id)
    assert (info.status, info.result, info.attempts) == ("completed", "from-B", 2), info
    hist = q.history(task_id)
    assert pairs(q, task_id) == [
        (None, "pending"),
        ("pending", "running"),
        ("running", "pending"),
        ("pending", "running"),
        ("running", "completed"),
    ]
    assert [t.worker for t in hist[1:]] == ["A", "A", "B", "B"]
    assert hist[2].error is not None and hist[2].error.type == "LeaseExpired"
    assert q.counts() == {"pending": 0, "running": 0, "completed": 1, "dead": 0, "cancelled": 0}


# -- enqueue durability under SIGKILL --------------------------------------------------------

ENQUEUE_FOREVER = """
db, durability, round_ = sys.argv[1], sys.argv[2], int(sys.argv[3])
q = ferroq.Queue(db, durability=durability)

@q.task(name="item")
def item(round_, n):
    return n

n = 0
while True:
    if n % 4 == 3:
        ids = q.enqueue_many(item.call(round_, n + k) for k in range(5))
        for k, task_id in enumerate(ids):
            emit([task_id, n + k])
        n += 5
    else:
        emit([item.enqueue(round_, n).id, n])
        n += 1
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("durability", ["full", "normal"])
def test_every_acknowledged_enqueue_survives_sigkill(tmp_path: Path, procs: Procs, durability: str) -> None:
    db = tmp_path / "q.db"
    script = procs.script("enqueue_forever", ENQUEUE_FOREVER)
    rng = random.Random()
    acknowledged: list[tuple[int, int, int]] = []
    for round_ in range(4):
        child = procs.start(script, db, durability, round_, label=f"enqueuer-{round_}")
        wait_until(lambda child=child: len(child.lines()) >= 5, 30, "the first enqueues", children=[child])
        time.sleep(rng.uniform(0.05, 0.6))  # a random point in the enqueue loop
        child.send(signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
        acknowledged += [(task_id, round_, n) for task_id, n in child.records()]

    ids = [task_id for task_id, _, _ in acknowledged]
    assert len(ids) == len(set(ids))
    q = ferroq.Queue(db, durability=durability)
    assert q.check() == ["ok"]
    for task_id, round_, n in acknowledged:
        info = q.get(task_id)  # UnknownTask here would be a lost acknowledged enqueue
        assert (info.status, info.args) == ("pending", [round_, n]), info
        assert pairs(q, task_id) == [(None, "pending")]
    assert q.counts()["pending"] >= len(acknowledged)


# -- fork ------------------------------------------------------------------------------------


def _use_queue_in_child(q: ferroq.Queue, tag: str, out: Path) -> None:
    """Runs in a forked child: enqueue, read, and work the queue the parent opened."""
    echo = q.tasks["echo"]
    handle = echo.enqueue(tag)
    assert q.get(handle.id).args == [tag]
    # Several children may share the work: the handle, not the stats, says it was done.
    ferroq.Worker(q, concurrency=2, lease=5.0, handle_signals=False).run(until_idle=True)
    assert handle.result(timeout=5) == f"echo:{tag}"
    out.write_text(f"{handle.id} {os.getpid()}")


def _fork_target(q: ferroq.Queue, tag: str, out: Path) -> None:
    _use_queue_in_child(q, tag, out)


def _queue_with_echo(db: Path) -> ferroq.Queue:
    q = ferroq.Queue(db)

    @q.task(name="echo")
    def echo(x: str) -> str:
        return f"echo:{x}"

    return q


@pytest.mark.timeout(120)
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_fork_while_dropped_queues_close_on_their_threads(tmp_path: Path) -> None:
    """Queues dropped without close() close on threads of their own, inside SQLite; a
    child forked meanwhile inherited SQLite's global locks held by a thread it does not
    have, and hung at its first open (15 children of 60 without the guard). Forks now wait
    for those closes."""
    for round_ in range(20):
        for k in range(4):
            q = ferroq.Queue(tmp_path / f"dropped-{round_}-{k}.db", durability="normal")
            t = q.task(name="t")(lambda i: None)
            q.enqueue_many(t.call("x" * 50) for _ in range(2_000))
            del q, t
        gc.collect()  # queue and task refer to each other: the collector drops them, closing starts
        pid = os.fork()
        if pid == 0:  # child: never return into pytest
            code = 1
            try:
                child = ferroq.Queue(tmp_path / "child.db", durability="normal")
                child.task(name="t")(lambda i: None).enqueue(round_)
                code = 0
            finally:
                os._exit(code)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.005)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"round {round_}: the forked child hung")
        assert os.waitstatus_to_exitcode(status) == 0, round_
    with ferroq.Queue(tmp_path / "child.db") as q:
        assert q.counts()["pending"] == 20


@pytest.mark.timeout(60)
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_queue_used_in_child_after_os_fork(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    q = _queue_with_echo(db)
    before = q.tasks["echo"].enqueue("parent-before")
    assert q.get(before.id).status == "pending"  # the parent's reader and writer are open
    out = tmp_path / "child.out"

    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            _use_queue_in_child(q, "child", out)
            code = 0
        except BaseException:  # noqa: BLE001 - the child reports whatever went wrong, then exits
            (tmp_path / "child.err").write_text(traceback.format_exc())
        finally:
            os._exit(code)
    try:
        _, status = os.waitpid(pid, 0)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        raise
    err = (tmp_path / "child.err").read_text() if (tmp_path / "child.err").exists() else ""
    assert os.waitstatus_to_exitcode(status) == 0, err

    # The parent keeps working on its own connections.
    child_task = int(out.read_text().split()[0])
    assert q.get(child_task).result == "echo:child"
    assert q.get(before.id).status == "completed"  # the child's worker ran it
    after = q.tasks["echo"].enqueue("parent-after")
    stats = ferroq.Worker(q, concurrency=2, lease=5.0, handle_signals=False).run(until_idle=True)
    assert stats.completed == 1
    assert after.result(timeout=5) == "echo:parent-after"
    assert q.counts()["completed"] == 3
    assert q.check() == ["ok"]


@pytest.mark.timeout(60)
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_queue_used_in_multiprocessing_fork_child(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    q = _queue_with_echo(db)
    q.tasks["echo"].enqueue("parent-before")
    assert q.counts()["pending"] == 1
    ctx = multiprocessing.get_context("fork")
    children = [ctx.Process(target=_fork_target, args=(q, f"mp{i}", tmp_path / f"mp{i}.out")) for i in range(3)]
    try:
        for p in children:
            p.start()
        for p in children:
            p.join(timeout=40)
            assert p.exitcode == 0, f"multiprocessing child exited with {p.exitcode}"
    finally:
        for p in children:
            if p.is_alive():
                p.kill()
                p.join(timeout=5)

    for i in range(3):
        task_id = int((tmp_path / f"mp{i}.out").read_text().split()[0])
        assert q.get(task_id).result == f"echo:mp{i}"
    after = q.tasks["echo"].enqueue("parent-after")
    ferroq.Worker(q, concurrency=1, lease=5.0, handle_signals=False).run(until_idle=True)
    assert after.result(timeout=5) == "echo:parent-after"
    assert q.counts() == {"pending": 0, "running": 0, "completed": 5, "dead": 0, "cancelled": 0}
    assert q.check() == ["ok"]


FORK_SCRIPT = """
db = sys.argv[1]
q = ferroq.Queue(db)

@q.task(name="echo")
def echo(x):
    return f"echo:{x}"

first = echo.enqueue("parent")
pid = os.fork()
if pid == 0:
    # The child exits through normal interpreter shutdown, so the Queue it inherited is
    # dropped here: that must not close (and unlock) the parent's connections.
    ids = [echo.enqueue(f"child{i}").id for i in range(20)]
    ferroq.Worker(q, concurrency=2, lease=5.0, handle_signals=False).run(until_idle=True)
    emit({"child": ids})
    del q, echo
    sys.exit(0)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0
ids = [echo.enqueue(f"parent{i}").id for i in range(20)]
ferroq.Worker(q, concurrency=2, lease=5.0, handle_signals=False).run(until_idle=True)
counts = q.counts()
emit({"parent": ids, "counts": counts, "check": q.check()})
"""


@pytest.mark.timeout(60)
def test_forked_child_exiting_normally_leaves_parent_working(tmp_path: Path, procs: Procs) -> None:
    db = tmp_path / "q.db"
    child = procs.run(procs.script("fork_script", FORK_SCRIPT), db, timeout=40)
    records = child.records()
    assert len(records) == 2, child.describe()
    child_ids, parent = records[0]["child"], records[1]
    assert parent["counts"] == {"pending": 0, "running": 0, "completed": 41, "dead": 0, "cancelled": 0}
    assert parent["check"] == ["ok"]
    q = _queue_with_echo(db)
    for i, task_id in enumerate(child_ids):
        assert q.get(task_id).result == f"echo:child{i}"
    for i, task_id in enumerate(parent["parent"]):
        assert q.get(task_id).result == f"echo:parent{i}"


FORK_THEN_PARENT_LEAVES = """
db, ids_path, done_path, how = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
q = ferroq.Queue(db)

@q.task(name="echo")
def echo(x):
    return f"echo:{x}"

echo.enqueue("parent")
q.counts()  # the parent's writer and reader connections are both open
pid = os.fork()
if pid == 0:
    with open(ids_path, "w") as out:
        try:
            for i in range(100):
                task_id = echo.enqueue(f"child{i}").id  # durable once it returns
                out.write(f"{task_id}\\n")
                out.flush()
                time.sleep(0.01)
        except BaseException as e:
            out.write(f"ERR {type(e).__name__}: {e}\\n")
            out.flush()
    touch(done_path)
    os._exit(0)
emit({"child": pid})
if how == "parent-exits":
    os._exit(0)  # e.g. a launcher that forks a worker and leaves
time.sleep(0.2)
del q, echo  # the parent is done with its queue; the child is not
import gc
gc.collect()
os.waitpid(pid, 0)
"""

THIRD_PARTY = """
q = ferroq.Queue(sys.argv[1])

@q.task(name="echo")
def echo(x):
    return f"echo:{x}"

emit(echo.enqueue("third").id)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["parent-drops-queue", "parent-exits"])
def test_forked_child_enqueues_survive_the_parent_letting_go(tmp_path: Path, procs: Procs, how: str) -> None:
    """A child forked after the parent used the queue keeps enqueueing after the parent
    closes its connections (or exits) and another process opens and closes the file.
    Every enqueue the child saw return must be in the file."""
    db, ids_path, done = tmp_path / "q.db", tmp_path / "child-ids.txt", tmp_path / "child-done"
    parent = procs.start(
        procs.script("fork_parent", FORK_THEN_PARENT_LEAVES), db, ids_path, done, how, label="fork-parent"
    )
    child_pid = None
    try:
        child_pid = wait_until(lambda: parent.lines() and parent.last()["child"], 30, "the fork", children=[parent])
        if how == "parent-exits":
            parent.check(timeout=10)
            time.sleep(0.2)
            procs.run(procs.script("third_party", THIRD_PARTY), db, timeout=30)
        wait_until(done.exists, 30, "the forked child to finish its enqueues (did it crash?)")
        parent.check(timeout=30)
    finally:
        if child_pid:
            try:
                os.kill(child_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    lines = ids_path.read_text().splitlines()
    errors = [line for line in lines if line.startswith("ERR")]
    assert not errors, errors
    acknowledged = [int(line) for line in lines]
    assert len(acknowledged) == 100

    q = _queue_with_echo(db)
    lost = []
    for task_id in acknowledged:
        try:
            q.get(task_id)
        except ferroq.UnknownTask:
            lost.append(task_id)
    assert not lost, (
        f"{len(lost)} of {len(acknowledged)} enqueues the forked child saw return are not "
        f"in the file (first: {lost[:5]}); counts now {q.counts()}"
    )
    assert q.check() == ["ok"]


# -- pragmas as read back -------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("durability, synchronous", [("full", "2"), ("normal", "1")])
def test_pragmas_read_back_in_process_and_from_another_process(
    tmp_path: Path, durability: str, synchronous: str
) -> None:
    db = tmp_path / "q.db"
    q = ferroq.Queue(db, durability=durability)
    pragmas = q.pragmas()
    assert pragmas["journal_mode"] == "wal"
    assert pragmas["synchronous"] == synchronous
    assert "busy_timeout" not in pragmas  # ferroq waits for locks with its own handler (busy.rs)

    @q.task(name="t")
    def t() -> None: ...

    t.enqueue()
    queries = {
        "journal_mode": "PRAGMA journal_mode",
        "synchronous": "PRAGMA synchronous",
        "tasks": "SELECT count(*) FROM tasks",
    }
    # Another process with Python's own sqlite3, while ferroq has the file open...
    seen = sqlite3_probe(tmp_path, db, queries)
    assert seen["journal_mode"] == [["wal"]]
    assert (seen["header_write_version"], seen["header_read_version"]) == (2, 2)  # WAL, in the file
    assert seen["tasks"] == [[1]]
    # ...and after every ferroq connection is gone: WAL is persistent in the file.
    del q, t
    gc.collect()
    seen = sqlite3_probe(tmp_path, db, queries)
    assert seen["journal_mode"] == [["wal"]]
    assert (seen["header_write_version"], seen["header_read_version"]) == (2, 2)
    # synchronous is per connection: whatever sqlite3 defaults to, ferroq sets its own again.
    q = ferroq.Queue(db, durability=durability)
    assert q.pragmas()["synchronous"] == synchronous
    assert q.pragmas()["journal_mode"] == "wal"


# -- full disk -------------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Any:
    """A 1 MiB tmpfs mounted inside tmp_path (needs root / CAP_SYS_ADMIN)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs for the full-disk test: {done.stderr.strip() or done.returncode}")
    try:
        yield mnt
    finally:
        gc.collect()  # close the connections first, or the unmount is refused
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("durability", ["full", "normal"])
def test_full_disk_is_a_typed_error_and_loses_nothing(tiny_disk: Path, durability: str) -> None:
    filler = tiny_disk / "filler"
    filler.write_bytes(b"\0" * 200_000)  # freed later to make room again
    db = tiny_disk / "q.db"
    q = ferroq.Queue(db, durability=durability)

    @q.task(name="big")
    def big(n: int, blob: str) -> int:
        return n

    blob = "x" * 40_000
    stored: list[int] = []
    error: BaseException | None = None
    for n in range(200):  # 8 MB of payloads: far more than the disk holds
        try:
            stored.append(big.enqueue(n, blob).id)
        except Exception as e:  # noqa: BLE001 - inspected below
            error = e
            break
    assert error is not None, "1 MiB disk never filled up"
    assert isinstance(error, ferroq.StorageError), f"untyped error: {type(error).__mro__} {error}"
    assert isinstance(error, ferroq.DiskFull), f"expected DiskFull, got {type(error).__name__}: {error}"
    assert stored, "not even one enqueue fit"

    # Every enqueue that returned is still there, intact.
    for n, task_id in enumerate(stored):
        info = q.get(task_id)
        assert (info.status, info.args) == ("pending", [n, blob])
    assert q.counts()["pending"] == len(stored)
    with pytest.raises(ferroq.StorageError):  # still full
        big.enqueue(-1, blob)

    filler.unlink()
    more = big.enqueue(len(stored), "small").id
    assert q.get(more).args == [len(stored), "small"]
    assert q.counts()["pending"] == len(stored) + 1
    assert q.check() == ["ok"]

    # The file reopens cleanly and everything is still readable.
    del q, big
    gc.collect()
    q = ferroq.Queue(db, durability=durability)
    assert q.check() == ["ok"]
    assert q.counts()["pending"] == len(stored) + 1
    for n, task_id in enumerate(stored):
        assert q.get(task_id).args == [n, blob]
    del q


def test_fork_while_other_threads_use_the_queue(tmp_path: Path) -> None:
    """Forking while other threads enqueue (group commit leaders, connections mid-call):
    the child can use the queue at once, and nothing the parent acknowledged is lost."""
    import signal
    import threading
    import warnings

    q = ferroq.Queue(tmp_path / "q.db", durability="normal")
    job = q.task(name="job")(lambda n: n)
    stop = threading.Event()
    acknowledged: list[int] = []

    def spam() -> None:
        while not stop.is_set():
            acknowledged.append(job.enqueue(0).id)

    threads = [threading.Thread(target=spam) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(20):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
                pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    signal.signal(signal.SIGALRM, signal.SIG_DFL)  # not pytest-timeout's handler
                    signal.alarm(20)  # a deadlock would kill the child, failing the test
                    code = 0 if job.enqueue(1).info().status == "pending" else 2
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    finally:
        stop.set()
        for t in threads:
            t.join()
    counts = q.counts()
    assert counts["pending"] == len(acknowledged) + 20
    assert all(q.get(i).status == "pending" for i in acknowledged[-50:])
