"""``ferroq stats``, ``health``, ``events``, ``status`` rates and ``worker --metrics-port``
against real databases and real worker processes."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import ferroq
from ferroq.cli import main
from pg_cluster import with_database
from procs import child_env
from test_cli_worker import make_app

pytestmark = pytest.mark.both_engines  # every test with a database runs on SQLite and PostgreSQL


@pytest.fixture
def db(queue_location: Path | str) -> Path | str:
    """The database the CLI is pointed at (--db): the file or URL of the test's queue."""
    return queue_location


def run(db: Path | str, *args: str) -> Result:
    return CliRunner().invoke(main, ["--db", str(db), *args])


def worked_queue(db: Path | str) -> ferroq.Queue:
    """10 completed tasks that slept 20 ms, 2 dead ones, in group "api"."""
    q = ferroq.Queue(db, durability="normal")

    @q.task(name="nap", resource_group="api")
    def nap() -> None:
        time.sleep(0.02)

    @q.task(name="bad", resource_group="api", max_attempts=1)
    def bad() -> None:
        raise RuntimeError("boom")

    q.enqueue_many([nap.call() for _ in range(10)] + [bad.call(), bad.call()])
    ferroq.Worker(q, handle_signals=False, concurrency=4).run(until_idle=True)
    return q


def test_stats_reports_counts_rates_and_percentiles(db: Path | str) -> None:
    worked_queue(db)
    result = run(db, "stats", "--window", "5m", "-o", "json")
    assert result.exit_code == 0, result.output
    api = json.loads(result.output)["groups"]["api"]
    assert (api["completed"], api["dead"], api["failed"]) == (10, 2, 2)
    assert abs(api["error_rate"] - 2 / 12) < 1e-9
    assert abs(api["rates"]["completed"] - 10 / 300) < 1e-9
    assert 0.019 <= api["run"]["p50"] <= 0.025, api["run"]
    table = run(db, "stats", "--window", "1h")
    assert table.exit_code == 0 and "api" in table.output and "done/s" in table.output
    assert run(db, "stats", "--window", "soon").exit_code == 2


def test_status_shows_the_last_minute_per_group(db: Path | str) -> None:
    worked_queue(db)
    data = json.loads(run(db, "status", "-o", "json").output)
    (entry,) = data["queues"]
    assert entry["metrics"]["api"]["completed"] == 10
    assert [g["name"] for g in entry["groups"]] == ["api"]
    table = run(db, "status").output
    assert re.search(r"api .* active .* 0 .* 0\.2 .* 0\.0", table), table  # 10 done / 60 s


def test_health_exit_codes(db: Path | str) -> None:
    worked_queue(db)
    unhealthy = run(db, "health")
    assert unhealthy.exit_code == 1 and "FAIL workers" in unhealthy.output
    healthy = run(db, "health", "--no-require-workers")
    assert healthy.exit_code == 0 and "healthy" in healthy.output
    too_many_dead = run(db, "health", "--no-require-workers", "--max-dead", "1", "-o", "json")
    assert too_many_dead.exit_code == 1
    report = json.loads(too_many_dead.output)
    assert report["ok"] is False and report["recent_dead"] == 2
    missing = run(db.parent / "nope.db" if isinstance(db, Path) else with_database(db, "ferroq_nope"), "health")
    assert missing.exit_code == 3 and "Traceback" not in missing.output


def test_events_lists_and_filters(db: Path | str) -> None:
    worked_queue(db)
    result = run(db, "events", "-o", "json", "--kind", "dead")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [e["kind"] for e in lines] == ["dead", "dead"]
    assert all(e["group"] == "api" and e["task_id"] for e in lines)
    everything = run(db, "events", "--after", "0", "-o", "json")
    kinds = [json.loads(line)["kind"] for line in everything.output.splitlines()]
    assert kinds == ["failed", "dead", "failed", "dead"]


def test_worker_serves_prometheus_metrics(tmp_path: Path, queue_location: Path | str) -> None:
    db, q = make_app(tmp_path, queue_location)
    double = q.task(name="double", resource_group="cpu")(lambda n: n)  # runs in app.py's worker
    q.enqueue_many([double.call(1) for _ in range(5)])
    with subprocess.Popen(
        [sys.executable, "-m", "ferroq.cli", "worker", "app:queue", "--metrics-port", "0"],
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            port = None
            deadline = time.monotonic() + 60
            assert proc.stderr is not None
            while port is None and time.monotonic() < deadline:
                line = proc.stderr.readline()
                found = re.search(r"metrics on http://[^:]+:(\d+)/metrics", line)
                port = int(found.group(1)) if found else None
            assert port, "the worker never said where it serves metrics"
            deadline = time.monotonic() + 60
            while q.counts()["completed"] < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                body = response.read().decode()
            assert 'ferroq_tasks_total{group="cpu",queue="default",status="completed"} 5.0' in body
            assert 'ferroq_queue_depth{queue="default",status="completed"} 5.0' in body
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)
    assert proc.returncode == 0
