"""Several real processes sharing one queue file: draining, enqueueing, opening a new file.

Every child is a separate interpreter started from a script written into tmp_path; the
test process only enqueues and reads through ferroq (never through Python's sqlite3).
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import ferroq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import Procs, procs, sqlite3_probe, wait_until  # noqa: F401

# Real worker processes: seconds each (`pytest -m 'not slow'` skips them).
pytestmark = pytest.mark.slow

# -- 4 workers drain 5,000 tasks ------------------------------------------------------

DRAIN_WORKER = """
db, log_path, name = sys.argv[1], sys.argv[2], sys.argv[3]
q = ferroq.Queue(db, durability="normal")
fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

@q.task(name="record")
def record(n):
    # One line per execution, appended atomically.
    os.write(fd, f"{ferroq.current_task().id} {n}\\n".encode())
    return n * 2

wait_for_file(sys.argv[4])
stats = ferroq.Worker(q, concurrency=4, lease=30.0, name=name).run(until_empty=True)
emit(stats.__dict__)
"""


@pytest.mark.timeout(120)
def test_four_workers_drain_5000_tasks_exactly_once(tmp_path: Path, procs: Procs) -> None:
    db = tmp_path / "q.db"
    q = ferroq.Queue(db, durability="normal")

    @q.task(name="record")
    def record(n: int) -> int:  # the processor runs in the workers
        raise AssertionError("not run here")

    total, chunk = 5000, 250
    ids: list[int] = []
    for start in range(0, total, chunk):
        ids += q.enqueue_many(record.call(n) for n in range(start, start + chunk))
    assert len(ids) == len(set(ids)) == total
    arg_of = dict(zip(ids, range(total)))
    assert q.counts()["pending"] == total

    script = procs.script("drain_worker", DRAIN_WORKER)
    go = tmp_path / "go"
    workers = [procs.start(script, db, tmp_path / f"log-{i}.txt", f"w{i}", go, label=f"worker-{i}") for i in range(4)]
    go.touch()
    for w in workers:
        w.check(timeout=100)

    # Every task completed, none lost, results are the right ones.
    counts = q.counts()
    assert counts == {"pending": 0, "running": 0, "completed": total, "dead": 0, "cancelled": 0}, counts
    stats = [w.last() for w in workers]
    assert sum(s["completed"] for s in stats) == total, stats
    assert sum(s["claimed"] for s in stats) == total, stats
    assert all(s["lost"] == s["dead"] == s["retried"] == s["rescued"] == 0 for s in stats), stats

    # Each task executed exactly once, across all processes' logs.
    executed: Counter[int] = Counter()
    for i in range(4):
        for line in (tmp_path / f"log-{i}.txt").read_text().splitlines():
            task_id, n = map(int, line.split())
            assert arg_of[task_id] == n
            executed[task_id] += 1
    assert set(executed) == set(ids), f"never executed: {sorted(set(ids) - set(executed))[:20]}"
    twice = {t: c for t, c in executed.items() if c != 1}
    assert not twice, f"executed more than once: {list(twice.items())[:20]}"
    assert sum(executed.values()) == total

    # Each completion recorded exactly once, by the worker that claimed it.
    for task_id in ids:
        info = q.get(task_id)
        assert info.status == "completed" and info.attempts == 1, info
        assert info.result == arg_of[task_id] * 2
        hist = q.history(task_id)
        assert [(t.from_status, t.to_status) for t in hist] == [
            (None, "pending"),
            ("pending", "running"),
            ("running", "completed"),
        ], hist
        assert hist[1].worker == hist[2].worker and hist[2].worker in {"w0", "w1", "w2", "w3"}
    assert q.check() == ["ok"]


# -- concurrent enqueuers while workers drain -----------------------------------------

ENQUEUER = """
db, who, n, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
q = ferroq.Queue(db, durability="normal")

@q.task(name="echo")
def echo(who, seq):
    return [who, seq]

wait_for_file(go)
seq = 0
while seq < n:
    if seq % 3 == 0:  # mix single enqueues and batches
        ids = q.enqueue_many(echo.call(who, s) for s in range(seq, min(seq + 7, n)))
        for i, s in zip(ids, range(seq, seq + 7)):
            emit([i, who, s])
        seq += len(ids)
    else:
        emit([echo.enqueue(who, seq).id, who, seq])
        seq += 1
"""

ECHO_WORKER = """
db, name, go = sys.argv[1], sys.argv[2], sys.argv[3]
q = ferroq.Queue(db, durability="normal")

@q.task(name="echo")
def echo(who, seq):
    return [who, seq]

wait_for_file(go)
stats = ferroq.Worker(q, concurrency=2, lease=30.0, name=name, poll_interval=0.05).run()
emit(stats.__dict__)
"""


@pytest.mark.timeout(120)
def test_concurrent_enqueuers_and_workers(tmp_path: Path, procs: Procs) -> None:
    db = tmp_path / "q.db"
    q = ferroq.Queue(db, durability="normal")
    go = tmp_path / "go"
    per_enqueuer, n_enqueuers = 1000, 3

    workers = [
        procs.start(procs.script("echo_worker", ECHO_WORKER), db, f"w{i}", go, label=f"worker-{i}") for i in range(2)
    ]
    enqueuers = [
        procs.start(procs.script("enqueuer", ENQUEUER), db, who, per_enqueuer, go, label=f"enqueuer-{who}")
        for who in range(n_enqueuers)
    ]
    go.touch()
    for e in enqueuers:
        e.check(timeout=90)

    for e in enqueuers:
        assert len(e.records()) == per_enqueuer, e.describe()
    enqueued = [rec for e in enqueuers for rec in e.records()]
    total = per_enqueuer * n_enqueuers
    ids = [rec[0] for rec in enqueued]
    assert len(set(ids)) == total, "two enqueues got the same id"
    assert sorted((who, seq) for _, who, seq in enqueued) == [
        (who, seq) for who in range(n_enqueuers) for seq in range(per_enqueuer)
    ]

    wait_until(lambda: q.counts()["completed"] == total, 90, f"{total} completions", interval=0.1, children=workers)
    # One worker may drain everything while the other still starts (CI saw it killed by the
    # SIGTERM below before its handler was installed): both must be running first. A worker
    # registers from its own thread just as its handlers go in.
    wait_until(
        lambda: {w.id for w in q.workers() if w.alive} >= {"w0", "w1"},
        60,
        "both workers to run",
        interval=0.05,
        children=workers,
    )
    time.sleep(0.2)
    for w in workers:
        w.send(15)  # SIGTERM: graceful stop
    for w in workers:
        w.check(timeout=30)

    assert q.counts() == {"pending": 0, "running": 0, "completed": total, "dead": 0, "cancelled": 0}
    stats = [w.last() for w in workers]
    assert sum(s["completed"] for s in stats) == total, stats
    for task_id, who, seq in enqueued:
        info = q.get(task_id)
        assert (info.args, info.result, info.attempts) == ([who, seq], [who, seq], 1), info
    for child in enqueuers + workers:
        err = child.stderr().lower()
        assert "locked" not in err and "busy" not in err and "error" not in err, child.describe()
    assert q.check() == ["ok"]


# -- 8 processes create one new file at once ------------------------------------------

OPENER = """
db, who, go, done, leave = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
os.umask(0)  # the file modes must not depend on the umask
wait_for_file(go)
q = ferroq.Queue(db)

@q.task(name="hello")
def hello(who):
    return who

task = hello.enqueue(who)
info = q.get(task.id)
assert info.args == [who] and info.status == "pending", info
emit({"id": task.id, "versions": q._store.schema_versions(), "pragmas": q.pragmas(),
      "check": q.check(), "counts": q.counts()})
touch(done)
wait_for_file(leave)  # keep the connections open while the test looks at the files
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("round_", range(3))
def test_eight_processes_create_the_same_new_file(tmp_path: Path, procs: Procs, round_: int) -> None:
    db = tmp_path / "new.db"
    go, leave = tmp_path / "go", tmp_path / "leave"
    script = procs.script("opener", OPENER)
    openers = [
        procs.start(script, db, who, go, tmp_path / f"done-{who}", leave, label=f"opener-{who}") for who in range(8)
    ]
    # Let every interpreter start and reach the barrier before releasing them together.
    wait_until(lambda: all(c.alive() for c in openers), 10, "openers to start", children=openers)
    time.sleep(0.5)
    assert not db.exists()
    go.touch()
    wait_until(
        lambda: all((tmp_path / f"done-{w}").exists() for w in range(8)), 60, "all openers to enqueue", children=openers
    )

    # While all 8 hold the file open: the database, its WAL and shared-memory file are 0600.
    modes = {}
    for suffix in ("", "-wal", "-shm"):
        path = Path(f"{db}{suffix}")
        assert path.exists(), f"{path.name} missing while 8 connections are open"
        modes[path.name] = oct(stat.S_IMODE(os.stat(path).st_mode))
    assert set(modes.values()) == {"0o600"}, modes

    leave.touch()
    for c in openers:
        c.check(timeout=30)
    reports = [c.last() for c in openers]
    ids = [r["id"] for r in reports]
    assert len(set(ids)) == 8
    for r in reports:
        assert r["versions"] == list(range(1, ferroq._core.SCHEMA_VERSION + 1)), r
        assert r["pragmas"]["journal_mode"] == "wal" and r["pragmas"]["synchronous"] == "2", r
        assert r["check"] == ["ok"]
        assert r["counts"]["pending"] >= 1

    # Migrations ran exactly once: one row per version, one copy of every table.
    probe = sqlite3_probe(
        tmp_path,
        db,
        {
            "migrations": "SELECT version, count(*) FROM schema_migrations GROUP BY version",
            "tables": "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
            "journal": "PRAGMA journal_mode",
            "tasks": "SELECT count(*) FROM tasks",
            "history": "SELECT count(*) FROM task_history",
        },
    )
    versions = list(range(1, ferroq._core.SCHEMA_VERSION + 1))
    assert probe["migrations"] == [[v, 1] for v in versions]
    assert probe["journal"] == [["wal"]]
    # Enqueues store no history row (history() derives them from created_at).
    assert probe["tasks"] == [[8]] and probe["history"] == [[0]]
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600

    q = ferroq.Queue(db)
    assert q.counts()["pending"] == 8
    assert sorted(q.get(i).args[0] for i in ids) == list(range(8))
    assert q._store.schema_versions() == versions
