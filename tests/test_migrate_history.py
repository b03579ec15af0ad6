"""``ferroq migrate --history``: finished tasks (completed, dead, cancelled) move with their
results, errors and histories, SQLite -> PostgreSQL -> SQLite, and a migration killed in the
middle of them and run again copies none twice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import ferroq
from ferroq.migrate import MARKER
from ferroq.testing import drain

from procs import child_env

pytestmark = pytest.mark.slow

N = 1200  # finished tasks of each kind: completed, dead, cancelled (a third each)


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferroq.cli", *args],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def fill(db: Path) -> None:
    """N finished tasks (every third completed after a retry with progress, dead with a
    traceback, or cancelled), large payloads and results among them, and 50 pending ones."""
    with ferroq.Queue(db, durability="normal") as q:

        @q.task(name="job", retry=ferroq.RetryPolicy(base_delay=0.0, max_delay=0.0, jitter=0.0))
        def job(n: int, blob: str) -> dict[str, Any]:
            ctx = ferroq.current_task()
            if n % 3 == 1:
                raise ferroq.Fail(f"task {n} gave up")
            if n % 6 == 0 and ctx.attempt == 1:
                raise RuntimeError(f"task {n} failed once")
            ctx.progress(0.5, f"half of {n}")
            return {"n": n, "blob": blob}

        calls = [job.call(n, "x" * (n % 700)) for n in range(N)]
        ids = q.enqueue_many(calls)
        for task_id in ids[2::3]:
            q.cancel(task_id)
        drain(q, skip_backoff=True)
        q.enqueue_many([job.call(n, "pending") for n in range(N, N + 50)])


def finished(location: str | Path) -> list[tuple[Any, ...]]:
    """What a user reads of each finished task, in id order, ids left out."""
    out = []
    with ferroq.Queue(location) as q:
        for t in q.iter_tasks(status=["completed", "dead", "cancelled"]):
            if t.name == MARKER:
                continue
            steps = [(h.from_status, h.to_status, h.at, h.worker, h.error) for h in q.history(t.id)]
            result = q.handle(t.id).result(timeout=0) if t.status == "completed" else None
            out.append(
                (
                    t.name,
                    t.status,
                    t.args,
                    t.attempts,
                    t.max_attempts,
                    t.last_error,
                    t.progress,
                    t.progress_message,
                    t.created_at,
                    t.started_at,
                    t.finished_at,
                    result,
                    steps,
                )
            )
    return out


def test_history_moves_sqlite_to_postgres_to_sqlite(tmp_path: Path, pg_url: str) -> None:
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    fill(a)
    want = finished(a)
    assert len(want) == N and {s[1] for s in want} == {"completed", "dead", "cancelled"}
    assert any(len(s[-1]) > 3 for s in want), "a retried task's history has its failed run"

    to_pg = cli(tmp_path, "migrate", str(a), pg_url, "--history", "--batch", "500")
    assert to_pg.returncode == 0, to_pg.stderr
    assert f"copied 50 task(s) and {N} finished" in to_pg.stdout
    assert finished(pg_url) == want
    # SRC keeps its history (and now the 50 it moved, cancelled there).
    assert finished(a)[:N] == want and len(finished(a)) == N + 50

    back = cli(tmp_path, "migrate", pg_url, str(b), "--history")
    assert back.returncode == 0, back.stderr
    assert finished(b) == want
    with ferroq.Queue(b) as q:
        assert q.counts()["pending"] == 50


def test_killed_in_the_history_then_run_again_copies_nothing_twice(tmp_path: Path, pg_url: str) -> None:
    a = tmp_path / "a.db"
    fill(a)
    want = finished(a)
    crash = (
        f"import os; from ferroq.migrate import migrate; migrate({str(a)!r}, {pg_url!r}, batch=300, "
        f"history=True, progress=lambda r: os._exit(9) if r.history >= 600 else None)"
    )
    died = subprocess.run([sys.executable, "-c", crash], env=child_env(), capture_output=True, text=True, timeout=300)
    assert died.returncode == 9, died.stderr
    assert finished(pg_url) == want[:600]

    again = cli(tmp_path, "migrate", str(a), pg_url, "--history", "--batch", "300")
    assert again.returncode == 0, again.stderr
    assert "history resumed after SRC id" in again.stdout
    assert finished(pg_url) == want
    once_more = cli(tmp_path, "migrate", str(a), pg_url, "--history")  # finished: a no-op
    assert once_more.returncode == 0, once_more.stderr
    assert "copied 0 task(s) and 0 finished" in once_more.stdout
    assert finished(pg_url) == want
    with ferroq.Queue(pg_url) as q:
        assert q.counts()["pending"] == 50


def test_history_after_a_migration_without_it_is_refused(tmp_path: Path) -> None:
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    fill(a)
    assert cli(tmp_path, "migrate", str(a), str(b)).returncode == 0
    late = cli(tmp_path, "migrate", str(a), str(b), "--history")
    assert late.returncode != 0 and "migrated without --history" in late.stderr, late.stderr
    assert "Traceback" not in late.stderr
    assert finished(b) == []


def test_dry_run_counts_the_history_and_changes_nothing(tmp_path: Path) -> None:
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    fill(a)
    dry = cli(tmp_path, "migrate", str(a), str(b), "--history", "--dry-run")
    assert dry.returncode == 0 and f"would copy 50 task(s) and {N} finished" in dry.stdout, dry.stderr
    assert finished(b) == []
