"""The PostgreSQL engine through the unchanged Python facade and CLI: a queue on a server,
drained by ``ferroq worker --until-empty`` in another process, every task completed once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ferroq
from ferroq.errors import InvalidArgument

from procs import child_env

pytestmark = pytest.mark.slow

APP = """
import ferroq

queue = ferroq.Queue({url!r})

@queue.task(name="double")
def double(n: int) -> int:
    return n * 2
"""


def test_a_worker_drains_a_postgres_queue_completing_each_task_once(tmp_path: Path, pg_url: str) -> None:
    url = pg_url
    (tmp_path / "app.py").write_text(textwrap.dedent(APP.format(url=url)))
    with ferroq.Queue(url) as q:
        double = q.task(name="double")(lambda n: n * 2)
        ids = q.enqueue_many([double.call(i) for i in range(1000)])
        assert q.counts()["pending"] == 1000
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "ferroq.cli",
                "worker",
                "app:queue",
                "--until-empty",
                "--concurrency",
                "8",
                "--db",
                url,
            ],
            cwd=tmp_path,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        counts = q.counts()
        assert counts["completed"] == 1000, counts
        assert sum(counts.values()) == 1000
        assert [q.get(i).result for i in ids[:5]] == [0, 2, 4, 6, 8]
        # Each ran once: one attempt, and a history of enqueue, claim, completion.
        for i in ids[::97]:
            assert q.get(i).attempts == 1
            assert [s.to_status for s in q.history(i)] == ["pending", "running", "completed"]


def test_the_cli_reads_a_postgres_queue(tmp_path: Path, pg_url: str) -> None:
    url = pg_url
    with ferroq.Queue(url) as q:
        q.task(name="noop")(lambda: None).enqueue()
    shown = subprocess.run(
        [sys.executable, "-m", "ferroq.cli", "--db", url, "status"],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert "Traceback" not in shown.stderr


def test_a_bad_url_is_a_typed_error_without_the_password() -> None:
    with pytest.raises(InvalidArgument) as e:
        ferroq.Queue("postgresql://u:hunter2@localhost/db?sslmode=sometimes")
    assert "hunter2" not in str(e.value)
