"""``ferroq migrate SRC DST`` in real processes: SQLite -> PostgreSQL -> SQLite keeps every
unfinished task with its options, a worker then runs each exactly once, and a migration killed
halfway and run again copies nothing twice."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import ferroq
from ferroq.migrate import MARKER

from procs import child_env

pytestmark = pytest.mark.slow

N = 3000

APP = """
import os
import ferroq

queue = ferroq.Queue(os.environ["APP_DB"])

@queue.task(name="job", resource_group="cpu")
def job(n: int) -> int:
    with open(os.environ["RUNS_LOG"], "a") as f:  # one line per run: a double run shows
        f.write(f"{n}\\n")
    return n
"""


def cli(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferroq.cli", *args],
        cwd=cwd,
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def fill(db: Path) -> dict[int, tuple[int, str, int, str | None]]:
    """N mixed tasks (priorities, delays, unique keys, groups, max_attempts), a few of them
    running (claimed by a worker that is gone); (priority, group, max_attempts left, key) per n."""
    want = {}
    with ferroq.Queue(db, durability="normal") as q:
        job = q.task(name="job", resource_group="cpu")(lambda n: n)
        calls = []
        for n in range(N):
            prio, group = n % 3, "cpu" if n % 4 else "io"
            key = f"key-{n}" if n % 10 == 0 else None
            delay = 1.5 if n % 7 == 0 else None
            calls.append(
                job.using(
                    priority=prio, resource_group=group, unique_key=key, delay=delay, max_attempts=2 + n % 3
                ).call(n)
            )
            want[n] = (prio, group, 2 + n % 3, key)
        q.enqueue_many(calls)
        for t in q._store.claim("default", "gone-worker", 5, 60_000):  # attempts 1: one run fewer
            n = q.get(t.id).args[0]
            want[n] = (want[n][0], want[n][1], max(1, want[n][2] - 1), want[n][3])
        q.group("io").pause()
    return want


def unfinished(location: str | Path) -> dict[int, ferroq.TaskInfo]:
    with ferroq.Queue(location) as q:
        tasks = [t for t in q.iter_tasks(status=["pending", "running"]) if t.name != MARKER]
    by_n = {t.args[0]: t for t in tasks}
    assert len(by_n) == len(tasks), "a task was copied twice"
    return by_n


def assert_same_tasks(location: str | Path, want: dict[int, tuple[int, str, int, str | None]]) -> None:
    got = unfinished(location)
    assert set(got) == set(want)
    assert {
        n: (t.priority, t.resource_group, t.max_attempts - t.attempts, t.unique_key) for n, t in got.items()
    } == want
    assert all(t.status == "pending" for t in got.values())
    # FIFO within a priority survives: the new ids are in the old order.
    for prio in range(3):
        ns = [n for n, t in sorted(got.items(), key=lambda kv: kv[1].id) if t.priority == prio]
        assert ns == sorted(ns)


def drain(cwd: Path, location: str | Path) -> collections.Counter[int]:
    (cwd / "app.py").write_text(textwrap.dedent(APP))
    log = cwd / "runs.log"
    log.unlink(missing_ok=True)
    with ferroq.Queue(location) as q:
        q.resume()
        q.group("io").resume()
    done = cli(
        cwd,
        "worker",
        "app:queue",
        "--until-empty",
        "--concurrency",
        "4",
        "--log-level",
        "warning",
        env={"APP_DB": str(location), "RUNS_LOG": str(log)},
    )
    assert done.returncode == 0, done.stderr
    return collections.Counter(int(line) for line in log.read_text().split())


def test_sqlite_to_postgres_to_sqlite_keeps_every_task_and_runs_each_once(tmp_path: Path, pg_url: str) -> None:
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    want = fill(a)
    started = time.time()
    to_pg = cli(tmp_path, "migrate", str(a), pg_url, "--batch", "700")
    assert to_pg.returncode == 0, to_pg.stderr
    assert f"copied {N} task(s)" in to_pg.stdout
    assert_same_tasks(pg_url, want)
    with ferroq.Queue(pg_url) as pg:
        assert pg._store.group_info("default", "io")["paused"]  # a group's pause moves too
        job = pg.task(name="job", resource_group="cpu")(lambda n: n)
        assert not job.using(unique_key="key-0").enqueue(0).created  # a unique key still dedupes
    with ferroq.Queue(a) as src:  # moved: nothing left to run on SRC
        assert src.paused
        assert src.counts()["pending"] == 0

    back = cli(tmp_path, "migrate", pg_url, str(b))
    assert back.returncode == 0, back.stderr
    assert_same_tasks(b, want)
    with ferroq.Queue(b) as q:  # a delay keeps its moment, not restarted by the moves
        delayed = [t for t in q.iter_tasks(status="pending") if t.name != MARKER and t.args[0] % 7 == 0]
        assert all(t.run_at.timestamp() < started + 1.5 for t in delayed)

    runs = drain(tmp_path, b)
    assert set(runs) == set(range(N)) and set(runs.values()) == {1}


def test_a_migration_killed_halfway_then_run_again_copies_nothing_twice(tmp_path: Path, pg_url: str) -> None:
    a = tmp_path / "a.db"
    want = fill(a)
    # A real crash: the process dies (no cleanup) after the second batch is committed on DST.
    crash = (
        f"import os; from ferroq.migrate import migrate; migrate({str(a)!r}, {pg_url!r}, batch=500, "
        f"progress=lambda r: os._exit(9) if r.copied >= 1000 else None)"
    )
    died = subprocess.run([sys.executable, "-c", crash], env=child_env(), capture_output=True, text=True, timeout=300)
    assert died.returncode == 9, died.stderr
    assert len(unfinished(pg_url)) == 1000

    again = cli(tmp_path, "migrate", str(a), pg_url, "--batch", "500")
    assert again.returncode == 0, again.stderr
    assert "resumed after" in again.stdout
    assert_same_tasks(pg_url, want)
    once_more = cli(tmp_path, "migrate", str(a), pg_url)  # after a finished migration: a no-op
    assert once_more.returncode == 0 and "copied 0 task(s)" in once_more.stdout, once_more.stderr
    assert_same_tasks(pg_url, want)

    runs = drain(tmp_path, pg_url)
    assert set(runs) == set(range(N)) and set(runs.values()) == {1}


def test_refused_while_a_worker_is_alive_on_src(tmp_path: Path) -> None:
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    fill(a)
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))
    worker = subprocess.Popen(
        [sys.executable, "-m", "ferroq.cli", "worker", "app:queue", "--log-level", "warning"],
        cwd=tmp_path,
        env=child_env({"APP_DB": str(a), "RUNS_LOG": os.devnull}),
    )
    try:
        with ferroq.Queue(a) as q:
            deadline = time.monotonic() + 60
            while not any(w.alive for w in q.workers()):
                assert time.monotonic() < deadline, "the worker never registered"
                time.sleep(0.05)
            q.pause()  # it would drain the queue meanwhile
        refused = cli(tmp_path, "migrate", str(a), str(b))
        assert refused.returncode != 0
        assert "workers are alive" in refused.stderr and "Traceback" not in refused.stderr
        assert not b.exists() or not unfinished(b)
    finally:
        worker.terminate()
        worker.wait(60)


def test_a_missing_src_is_refused_and_not_created(tmp_path: Path) -> None:
    missing, b = tmp_path / "typo.db", tmp_path / "b.db"
    refused = cli(tmp_path, "migrate", str(missing), str(b))
    assert refused.returncode != 0 and "no database at" in refused.stderr and "Traceback" not in refused.stderr
    assert not missing.exists() and not b.exists()


def test_queue_moves_that_queue_only(tmp_path: Path) -> None:
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    for name in ("one", "two"):
        with ferroq.Queue(a, name=name) as q:
            q.task(name="job")(lambda n: n).enqueue(1)
    moved = cli(tmp_path, "--queue", "one", "migrate", str(a), str(b))
    assert moved.returncode == 0, moved.stderr
    assert set(unfinished_names(b)) == {"one"}


def unfinished_names(location: Path) -> list[str]:
    """The queues holding tasks other than a migration's checkpoints."""
    with ferroq.Queue(location) as probe:
        names = probe.queue_names()
    found = []
    for name in names:
        with ferroq.Queue(location, name=name) as q:
            if any(t.name != MARKER for t in q.list()):
                found.append(name)
    return found


def test_dry_run_counts_and_changes_nothing(tmp_path: Path) -> None:
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    fill(a)
    dry = cli(tmp_path, "migrate", str(a), str(b), "--dry-run")
    assert dry.returncode == 0 and f"would copy {N} task(s)" in dry.stdout, dry.stderr
    with ferroq.Queue(a) as q:
        assert not q.paused and q.counts()["cancelled"] == 0
    assert not unfinished_names(b)
