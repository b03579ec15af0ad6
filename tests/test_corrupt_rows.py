"""Rows edited by hand outside ferroq (issue 12): one malformed row must not stall the queue.

Python's ``sqlite3`` stores a ``str`` as TEXT, in a BLOB column and in an INTEGER column
when it is not a number. Such a row used to fail every claim, forever ("Invalid column
type Text at index: 3, name: payload"), and no other task ran. The edits are made by a
subprocess (never in this process: two SQLite copies in one process drop each other's
locks), the queue is drained by a worker process, and the CLI runs as the real ``ferroq``
executable.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import ferroq
from ferroq.errors import CorruptTask, PayloadError
from ferroq.task import TaskCall

from procs import Procs, child_env, procs  # noqa: F401

# Real worker processes: seconds each (`pytest -m 'not slow'` skips them).
pytestmark = pytest.mark.slow

GARBAGE = b"\xff\x00not json\xfe"

#: column -> the value a hand edit puts there (bytes are stored as a BLOB).
EDITS: dict[str, Any] = {
    "payload": '{"args": [1], "kwargs": {}}',  # TEXT where a BLOB belongs
    "priority": "high",
    "run_at": "soon",
    "max_attempts": "three",
    "garbage": GARBAGE,  # a BLOB payload no serializer can read
}

EDIT_SCRIPT = """\
import json, sqlite3, sys
con = sqlite3.connect(sys.argv[1], timeout=30)
for column, value, task_id in json.loads(sys.argv[2]):
    if isinstance(value, dict):
        value = bytes.fromhex(value["hex"])
    table, key = ("tasks", "id") if "." not in column else (column.split(".")[0], "task_id")
    column = column.split(".")[-1]
    con.execute(f"UPDATE {table} SET {column} = ? WHERE {key} = ?", (value, task_id))
    assert con.execute(f"SELECT typeof({column}) FROM {table} WHERE {key} = ?", (task_id,)).fetchone()[0] \\
        == ("blob" if isinstance(value, bytes) else "text")
con.commit()
con.close()
"""

WORKER = """
q = ferroq.Queue(sys.argv[1], durability="normal")

@q.task(name="job")
def job(i, pad=""):
    return i * 2

stats = ferroq.Worker(q, concurrency=2, lease=30.0).run(until_empty=True)
emit({"completed": stats.completed, "claimed": stats.claimed})
"""


def edit_rows(tmp_path: Path, db: Path, edits: list[tuple[str, Any, int]]) -> None:
    """UPDATEs with Python's own sqlite3, in a subprocess."""
    script = tmp_path / "edit_rows.py"
    script.write_text(EDIT_SCRIPT)
    encoded = [(col, {"hex": v.hex()} if isinstance(v, bytes) else v, i) for col, v, i in edits]
    done = subprocess.run(
        [sys.executable, str(script), str(db), json.dumps(encoded)],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )
    assert done.returncode == 0, done.stderr


def ferroq_cli(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real ``ferroq`` executable of this environment."""
    exe = Path(sys.executable).with_name("ferroq")
    done = subprocess.run(
        [str(exe), "--db", str(db), *args], capture_output=True, text=True, timeout=60, env=child_env()
    )
    # (stdout may hold a task's own stored traceback: `inspect` shows it)
    assert "Traceback" not in done.stderr, done.stderr
    return done


@pytest.fixture
def edited(tmp_path: Path) -> tuple[Path, list[int], dict[str, int]]:
    """A queue of good tasks with one row of each kind of EDITS among them (closed)."""
    db = tmp_path / "q.db"
    with ferroq.Queue(db, durability="normal") as q:

        @q.task(name="job")
        def job(i: int) -> int:
            return i * 2

        ids = q.enqueue_many(job.call(i) for i in range(40))
    bad = {column: ids[3 + 7 * k] for k, column in enumerate(EDITS)}
    edit_rows(tmp_path, db, [("payload" if c == "garbage" else c, v, bad[c]) for c, v in EDITS.items()])
    good = [i for i in ids if i not in bad.values()]
    return db, good, bad


def test_a_worker_runs_every_good_task_and_sets_each_bad_row_aside(
    procs: Procs, tmp_path: Path, edited: tuple[Path, list[int], dict[str, int]]
) -> None:
    db, good, bad = edited
    worker = procs.run(procs.script("worker", WORKER), db, timeout=120)
    assert worker.last()["completed"] == len(good)
    assert "claim failed" not in worker.stderr()

    q = ferroq.Queue(db)
    for i in good:
        info = q.get(i)
        assert (info.status, info.result) == ("completed", info.args[0] * 2)
    # A value of the wrong type: set aside by the claim, dead, its error naming the column;
    # get names the column and gives the raw value.
    for column in ("payload", "priority", "run_at", "max_attempts"):
        with pytest.raises(CorruptTask) as raised:
            q.get(bad[column])
        assert (raised.value.task_id, raised.value.column) == (bad[column], column)
        assert raised.value.raw == str(EDITS[column]).encode()
        assert isinstance(raised.value, ferroq.errors.StorageError)
    # Garbage bytes in a BLOB payload: the worker dead-letters it; get shows the task, and
    # its arguments raise CorruptTask when read.
    info = q.get(bad["garbage"])
    assert info.status == "dead"
    assert info.corrupt is not None and (info.corrupt.column, info.corrupt.raw) == ("payload", GARBAGE)
    with pytest.raises(CorruptTask):
        _ = info.args
    with pytest.raises(CorruptTask):
        _ = info.kwargs
    assert "unreadable" in repr(info)

    # Listings go on past every such row.
    listed = {t.id: t for t in q.iter_tasks(page_size=7)}
    assert sorted(listed) == sorted(good + list(bad.values()))
    for column in ("payload", "priority", "run_at", "max_attempts"):
        t = listed[bad[column]]
        assert t.status == "dead" and t.lease_owner is None and t.finished_at is not None
        assert t.last_error is not None and t.last_error.type == "CorruptTask"
        assert f"column {column} holds TEXT" in t.last_error.message
        assert t.corrupt is not None and t.corrupt.column == column
        assert q.history(t.id)[-1].to_status == "dead"
    assert listed[bad["priority"]].priority is None
    assert listed[bad["priority"]].args == [bad["priority"] - 1]
    assert len(q.list(status="dead", limit=100)) == len(bad)
    dead_events = [e for e in q.events(limit=10_000) if e.kind == "dead"]
    assert {e.task_id for e in dead_events} >= {bad[c] for c in ("payload", "priority", "run_at", "max_attempts")}
    q.close()

    # The CLI: no traceback, the rows shown with their raw bytes and a typed error.
    listing = ferroq_cli(db, "list", "--limit", "100")
    assert listing.returncode == 0 and "CorruptTask" in listing.stdout
    for column, task_id in bad.items():
        shown = ferroq_cli(db, "inspect", str(task_id))
        assert shown.returncode == 0, shown.stderr
        assert (
            "cannot be read" in shown.stdout and "column payload" in shown.stdout
            if column == "garbage"
            else f"column {column}" in shown.stdout
        )
        as_json = json.loads(ferroq_cli(db, "inspect", str(task_id), "-o", "json").stdout)
        assert as_json["task"]["error"]["type"] == "CorruptTask"
    exported = ferroq_cli(db, "export")
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert len(lines) == len(good) + len(bad)
    by_id = {line["id"]: line for line in lines}
    for column, task_id in bad.items():
        line = by_id[task_id]
        assert line["error"]["type"] == "CorruptTask"
        assert line["error"]["column"] == ("payload" if column == "garbage" else column)
        value = EDITS[column]
        assert base64.b64decode(line["raw_base64"]) == (value if isinstance(value, bytes) else value.encode())
    assert all("error" not in by_id[i] for i in good)


def test_reads_go_on_past_a_row_not_yet_claimed(tmp_path: Path, edited: tuple[Path, list[int], dict[str, int]]) -> None:
    """Before any worker ran: the rows are pending, listings and the CLI still show them."""
    db, good, bad = edited
    with ferroq.Queue(db) as q:
        rows = list(q.iter_tasks())
        assert len(rows) == len(good) + len(bad)
        assert {t.id for t in rows if t.corrupt is not None} == set(bad.values())
        assert q.list(limit=100, newest_first=True)[0].id == max(good + list(bad.values()))
    for args in (["list"], ["list", "-o", "json"], ["export"]):
        assert ferroq_cli(db, *args).returncode == 0


def test_enqueue_many_rejects_a_hand_built_payload_the_serializer_cannot_decode(queue: ferroq.Queue) -> None:
    @queue.task(name="job")
    def job(i: int) -> int:
        return i

    for payload in (GARBAGE, b"[1, 2]", b'{"args": 1, "kwargs": {}}'):
        with pytest.raises(PayloadError):
            queue.enqueue_many([job.call(1), TaskCall("job", payload, job.options)])
    # The whole batch is refused: nothing was stored.
    assert queue.counts()["pending"] == 0
    # A hand-built call with a payload the serializer reads is taken, like task.call's.
    ids = queue.enqueue_many([TaskCall("job", b'{"args": [5], "kwargs": {}}', job.options), job.call(6)])
    assert [queue.get(i).args for i in ids] == [[5], [6]]


def test_a_payload_stored_apart_that_cannot_be_read_is_set_aside(procs: Procs, tmp_path: Path) -> None:
    """A large payload lives in task_payloads (schema 4); TEXT there is caught the same way."""
    db = tmp_path / "q.db"
    with ferroq.Queue(db, durability="normal") as q:

        @q.task(name="job")
        def job(i: int, pad: str = "") -> int:
            return i * 2

        ids = q.enqueue_many(job.call(i, pad="x" * (1_000 if i % 3 == 0 else 0)) for i in range(12))
    bad = ids[3]
    edit_rows(tmp_path, db, [("task_payloads.payload", "not a blob", bad)])
    one_at_a_time = WORKER.replace("concurrency=2", "concurrency=1")
    worker = procs.run(procs.script("worker1", one_at_a_time), db, timeout=120)
    assert worker.last()["completed"] == len(ids) - 1
    with ferroq.Queue(db) as q:
        with pytest.raises(CorruptTask) as raised:
            q.get(bad)
        assert raised.value.column == "payload" and raised.value.raw == b"not a blob"
        (info,) = q.list(status="dead")
        assert info.id == bad and info.last_error is not None
        assert "column task_payloads.payload holds TEXT, expected BLOB" in info.last_error.message
