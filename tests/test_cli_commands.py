"""The ``ferroq`` CLI against real database files: each command's output (table and
``-o json``) and its effect on the file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import ferroq
from ferroq.cli import main
from pg_cluster import with_database
from procs import child_env


pytestmark = pytest.mark.both_engines  # every test with a database runs on SQLite and PostgreSQL


@pytest.fixture
def db(queue_location: Path | str) -> Path | str:
    """The database the CLI is pointed at (--db): the file or URL of the test's queue."""
    return queue_location


class Fail(Exception):
    pass


@pytest.fixture
def shop(queue_location: Path | str) -> ferroq.Queue:
    """A queue with 3 completed tasks, 2 dead (group "api"), 1 dead in "smtp", 2 pending."""
    q = ferroq.Queue(queue_location, durability="normal")
    q.group("api", throttle=ferroq.Throttle(max_concurrency=2))

    @q.task(name="ok")
    def ok(n: int) -> int:
        return n * 10

    @q.task(name="charge", resource_group="api", max_attempts=1)
    def charge(n: int) -> None:
        raise Fail(f"card {n} declined")

    @q.task(name="mail", resource_group="smtp", max_attempts=1)
    def mail(n: int) -> None:
        raise Fail("smtp down")

    for n in range(3):
        ok.enqueue(n)
    charge.enqueue(1)
    charge.enqueue(2)
    mail.enqueue(1)
    ferroq.Worker(q, handle_signals=False).run(until_idle=True)
    ok.enqueue(100)
    ok.using(delay=3600).enqueue(101)
    return q


def run(db: Path | str, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, ["--db", str(db), *args], input=input)


def ok_json(db: Path | str, *args: str) -> Any:
    result = run(db, *args, "-o", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def ids(q: ferroq.Queue, status: str) -> list[int]:
    return [t.id for t in q.list(status=status, limit=1000)]


def test_status_shows_depths_groups_and_pauses(shop: ferroq.Queue, db: Path | str) -> None:
    shop.group("smtp").pause()
    data = ok_json(db, "status")
    (entry,) = data["queues"]
    assert entry["name"] == "default" and entry["paused"] is False
    assert entry["counts"] == {"pending": 2, "running": 0, "completed": 3, "dead": 3, "cancelled": 0}
    groups = {g["name"]: g for g in entry["groups"]}
    assert groups["api"]["max_concurrency"] == 2 and groups["api"]["circuit"] == "closed"
    assert groups["smtp"]["paused"] is True
    table = run(db, "status").output
    assert "default" in table and "paused" in table and "0/2" in table
    # Another queue in the file shows up; --queue narrows to one.
    ferroq.Queue(db, name="other").pause()
    assert [e["name"] for e in ok_json(db, "status")["queues"]] == ["default", "other"]
    assert [e["name"] for e in ok_json(db, "--queue", "other", "status")["queues"]] == ["other"]


def test_list_filters_and_pages_by_id(shop: ferroq.Queue, db: Path | str) -> None:
    dead = ok_json(db, "list", "--status", "dead")
    assert [t["status"] for t in dead] == ["dead"] * 3
    assert [t["id"] for t in dead] == sorted((t["id"] for t in dead), reverse=True)
    assert dead[0]["last_error"]["message"] == "smtp down"
    api = ok_json(db, "list", "--status", "dead", "--group", "api", "--oldest-first")
    assert [t["args"] for t in api] == [[1], [2]]
    both = ok_json(db, "list", "--status", "dead,pending", "--name", "ok")
    assert {t["status"] for t in both} == {"pending"}
    first = ok_json(db, "list", "--limit", "3")
    rest = ok_json(db, "list", "--limit", "100", "--after", str(first[-1]["id"]))
    assert [t["id"] for t in first + rest] == list(range(8, 0, -1))
    table = run(db, "list", "--limit", "3")
    assert table.exit_code == 0
    assert "more: --after 6" in table.output and "pending" in table.output
    assert "card 2 declined" in run(db, "list", "--status", "dead").output


def test_inspect_shows_the_task_its_history_and_traceback(shop: ferroq.Queue, db: Path | str) -> None:
    dead = ids(shop, "dead")[0]
    data = ok_json(db, "inspect", str(dead))
    assert data["task"]["status"] == "dead" and data["task"]["args"] == [1]
    assert "Traceback" in data["task"]["last_error"]["traceback"]
    assert [(h["from_status"], h["to_status"]) for h in data["history"]] == [
        (None, "pending"),
        ("pending", "running"),
        ("running", "dead"),
    ]
    text = run(db, "inspect", str(dead)).output
    assert "card 1 declined" in text and "Traceback (most recent call last)" in text and "history" in text
    missing = run(db, "inspect", "999")
    assert missing.exit_code == 4 and "no task with id 999" in missing.output


def test_retry_requeues_ids_and_all_dead(shop: ferroq.Queue, db: Path | str) -> None:
    api_dead = [t.id for t in shop.list(status="dead", group="api")]
    result = run(db, "retry", str(api_dead[0]))
    assert result.exit_code == 0 and f"requeued task {api_dead[0]}" in result.output
    info = shop.get(api_dead[0])
    assert info.status == "pending" and info.attempts == 0
    refused = run(db, "retry", str(ids(shop, "completed")[0]))
    assert refused.exit_code == 1 and "cannot requeue" in refused.output
    assert run(db, "retry", "12345").exit_code == 4
    assert run(db, "retry").exit_code == 2
    data = ok_json(db, "retry", "--all-dead", "--group", "smtp")
    assert data == {"requeued": 1, "skipped": [], "failed": {}}
    assert [t.resource_group for t in shop.list(status="dead")] == ["api"]
    assert "requeued 1 dead task(s)" in run(db, "retry", "--all-dead").output
    assert shop.counts()["dead"] == 0


def test_cancel_only_pending(shop: ferroq.Queue, db: Path | str) -> None:
    pending = ids(shop, "pending")
    assert run(db, "cancel", *map(str, pending)).exit_code == 0
    assert shop.counts()["cancelled"] == 2 and shop.counts()["pending"] == 0
    again = run(db, "cancel", str(pending[0]))
    assert again.exit_code == 1 and "it is cancelled" in again.output


def test_cancel_all_pending_asks_then_cancels_what_matches(shop: ferroq.Queue, db: Path | str) -> None:
    shop.requeue(shop.list(status="dead", group="smtp")[0].id)  # pending in group smtp
    before = shop.counts()
    assert before["pending"] == 3  # ok(100), ok(101) delayed an hour, mail(1)
    assert run(db, "cancel").exit_code == 2  # IDs or --all-pending
    assert run(db, "cancel", "1", "--all-pending").exit_code == 2
    assert run(db, "cancel", "1", "--group", "smtp").exit_code == 2  # --group goes with --all-pending
    assert ok_json(db, "cancel", "--all-pending", "--dry-run") == {"cancelled": 0, "matching": 3, "dry_run": True}
    declined = run(db, "cancel", "--all-pending", input="n\n")
    assert declined.exit_code == 1 and "Cancel 3 pending task(s) of queue 'default'?" in declined.output
    assert shop.counts() == before
    assert ok_json(db, "cancel", "--all-pending", "--group", "smtp", "-y") == {
        "cancelled": 1,
        "matching": 1,
        "dry_run": False,
    }
    done = run(db, "cancel", "--all-pending", "--name", "ok", input="y\n")
    assert done.exit_code == 0 and "cancelled 2 task(s)" in done.output  # the delayed one too
    assert shop.counts()["pending"] == 0 and shop.counts()["cancelled"] == 3
    assert "nothing to cancel" in run(db, "cancel", "--all-pending").output


def test_purge_asks_then_deletes_only_what_matches(shop: ferroq.Queue, db: Path | str) -> None:
    before = shop.counts()
    # Nothing finished a day ago.
    assert "nothing to purge" in run(db, "purge", "--status", "completed", "--older-than", "1d").output
    declined = run(db, "purge", "--status", "completed", input="n\n")
    assert declined.exit_code == 1 and "Delete 3 completed task(s)" in declined.output
    assert shop.counts() == before
    assert ok_json(db, "purge", "--status", "completed", "--dry-run")["matching"] == 3
    done = run(db, "purge", "--status", "completed", input="y\n")
    assert done.exit_code == 0 and "deleted 3 task(s)" in done.output
    assert shop.counts() == {**before, "completed": 0}
    data = ok_json(db, "purge", "--status", "dead", "--group", "api", "--yes")
    assert data["deleted"] == 2
    assert [t.resource_group for t in shop.list(status="dead")] == ["smtp"]
    assert run(db, "purge", "--status", "pending", "-y").exit_code == 2
    assert run(db, "purge", "--status", "dead", "--older-than", "soon").exit_code == 2


def test_pause_and_resume_a_group_or_the_queue_and_a_worker_obeys(shop: ferroq.Queue, db: Path | str) -> None:
    shop.requeue(shop.list(status="dead", group="smtp")[0].id)  # one smtp task pending again
    assert ok_json(db, "pause", "smtp") == {"queue": "default", "group": "smtp", "paused": True, "changed": True}
    assert "already paused" in run(db, "pause", "smtp").output
    ferroq.Worker(shop, handle_signals=False).run(until_idle=True)
    pending = shop.list(status="pending")
    assert sorted(t.resource_group for t in pending) == ["default", "smtp"]  # the delayed one, the paused group's
    assert run(db, "resume", "smtp").exit_code == 0 and not shop.group("smtp").paused
    assert run(db, "pause").exit_code == 2  # a whole queue only when named
    assert run(db, "pause", "--queue", "default").exit_code == 0 and shop.paused
    assert "already paused" in run(db, "--queue", "default", "pause").output
    assert run(db, "resume", "--queue", "default").exit_code == 0 and not shop.paused


def test_export_writes_one_json_line_per_task(shop: ferroq.Queue, db: Path | str) -> None:
    result = CliRunner().invoke(main, ["--db", str(db), "export", "--status", "dead,completed"])
    assert result.exit_code == 0
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows) and len(rows) == 6
    assert {r["status"] for r in rows} == {"dead", "completed"}
    assert rows[0]["result"] == 0 and rows[0]["args"] == [0]


def test_environment_variables_select_database_queue_and_options(shop: ferroq.Queue, db: Path | str) -> None:
    env = {"FERROQ_DB": str(db), "FERROQ_OUTPUT": "json", "FERROQ_LIST_LIMIT": "2"}
    result = CliRunner().invoke(main, ["list"], env=env)
    assert result.exit_code == 0 and len(json.loads(result.output)) == 2
    # A --db given on the command line wins over FERROQ_DB.
    nope = str(db) + ".nope" if isinstance(db, Path) else with_database(db, "ferroq_nope")
    missing = CliRunner().invoke(main, ["--db", nope, "list"], env=env)
    assert missing.exit_code == 3


def test_help_lists_environment_variables_and_exit_codes() -> None:
    top = CliRunner().invoke(main, ["--help"]).output
    assert "FERROQ_DB" in top and "Exit codes" in top
    for command in (
        "worker",
        "status",
        "list",
        "inspect",
        "retry",
        "cancel",
        "purge",
        "pause",
        "resume",
        "export",
        "bench",
    ):
        assert command in top
    assert "FERROQ_LIST_LIMIT" in CliRunner().invoke(main, ["list", "--help"]).output
    assert "FERROQ_WORKER_CONCURRENCY" in CliRunner().invoke(main, ["worker", "--help"]).output


def test_a_missing_database_is_reported_and_never_created(tmp_path: Path) -> None:
    path = tmp_path / "nope.db"
    for args in (["status"], ["list"], ["inspect", "1"], ["retry", "--all-dead"], ["pause", "g"]):
        result = run(path, *args)
        assert result.exit_code == 3, (args, result.output)
        assert "no database at" in result.output and "Traceback" not in result.output
        assert not path.exists()
    assert CliRunner().invoke(main, ["list"], env={"FERROQ_DB": None}).exit_code == 2


@pytest.mark.parametrize("content", [b"this is not a database at all" * 100, b"SQLite format 3\x00" + b"\x07" * 4000])
def test_a_corrupt_database_is_reported_without_a_traceback(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.db"
    path.write_bytes(content)
    result = run(path, "status")
    assert result.exit_code == 3, result.output
    assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1
    assert isinstance(result.exception, SystemExit)
    assert path.read_bytes() == content


@pytest.mark.sqlite_only("an sqlite3 process holds the file's lock")
def test_a_locked_database_is_reported_without_a_traceback(shop: ferroq.Queue, db_path: Path, tmp_path: Path) -> None:
    shop.close()
    ready = tmp_path / "locked"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sqlite3, sys, time, pathlib\n"
                "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                "c.execute('PRAGMA locking_mode=EXCLUSIVE'); c.execute('BEGIN EXCLUSIVE')\n"
                "c.execute('UPDATE tasks SET priority = priority')\n"
                "pathlib.Path(sys.argv[2]).touch(); time.sleep(60)\n"
            ),
            str(db_path),
            str(ready),
        ]
    )
    try:
        for _ in range(1000):
            if ready.exists():
                break
            time.sleep(0.01)
        result = CliRunner().invoke(main, ["--db", str(db_path), "--busy-timeout", "0.2", "status"])
        assert result.exit_code == 3, result.output
        assert "locked" in result.output and "Traceback" not in result.output
    finally:
        holder.kill()
        holder.wait()


def test_an_invalid_queue_name_is_a_usage_error(shop: ferroq.Queue, db: Path | str) -> None:
    assert run(db, "--queue", "", "status").exit_code == 2
    if isinstance(db, Path):
        assert os.path.exists(db)


def test_status_watch_refreshes_until_interrupted(shop: ferroq.Queue, db: Path | str, tmp_path: Path) -> None:
    # stdout to a file, not a pipe: unread, a pipe fills up and blocks the watcher's writes.
    out_path = tmp_path / "watch.out"
    with open(out_path, "w") as out_file:
        watch = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ferroq.cli",
                "--db",
                str(db),
                "status",
                "--watch",
                "--interval",
                "0.1",
                "-o",
                "json",
            ],
            env=child_env(),
            stdout=out_file,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(2.0)
        shop.group("api").pause()
        time.sleep(1.0)
        watch.send_signal(signal.SIGINT)
        _, err = watch.communicate(timeout=30)
    assert watch.returncode == 0, err
    frames = [json.loads(line) for line in out_path.read_text().splitlines()]
    assert len(frames) >= 3 and "Traceback" not in err
    paused = [{g["name"]: g["paused"] for g in f["queues"][0]["groups"]}["api"] for f in frames]
    assert paused[0] is False and paused[-1] is True  # a later refresh sees the change
