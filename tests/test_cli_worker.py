"""``ferroq worker MODULE:QUEUE`` in real processes: runs the tasks declared in a module,
with threads or child processes, and only the resource groups it is given."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ferroq

from procs import child_env

# Real worker processes: seconds each (`pytest -m 'not slow'` skips them).
pytestmark = [pytest.mark.slow, pytest.mark.both_engines]

APP = """
import ferroq

queue = ferroq.Queue({db!r}, durability="normal")

@queue.task(name="double", resource_group="cpu")
def double(n: int) -> int:
    return n * 2

@queue.task(name="send", resource_group="mail")
def send(to: str) -> str:
    return "sent " + to
"""


def make_app(tmp_path: Path, db: Path | str) -> tuple[Path | str, ferroq.Queue]:
    """app.py in ``tmp_path``, whose queue lives at ``db`` (a file or a PostgreSQL URL)."""
    (tmp_path / "app.py").write_text(textwrap.dedent(APP.format(db=str(db))))
    q = ferroq.Queue(db, durability="normal")
    return db, q


def ferroq_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferroq.cli", *args],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def enqueue(q: ferroq.Queue, name: str, n: int, group: str, arg: object) -> None:
    """Enqueues by name, as the app's code would (the processor itself lives in app.py)."""
    task = q.tasks.get(name) or q.task(name=name, resource_group=group)(lambda x: x)
    q.enqueue_many([task.call(arg) for _ in range(n)])


def test_worker_runs_a_modules_queue_until_empty(tmp_path: Path, queue_location: Path | str) -> None:
    db, q = make_app(tmp_path, queue_location)
    enqueue(q, "double", 20, "cpu", 21)
    done = ferroq_cli(tmp_path, "worker", "app:queue", "--until-empty", "--concurrency", "4")
    assert done.returncode == 0, done.stderr
    assert q.counts()["completed"] == 20
    assert {t.result for t in q.list(status="completed")} == {42}
    assert "started on" in done.stderr  # logged at --log-level info


def test_worker_with_processes_uses_the_process_pool(tmp_path: Path, queue_location: Path | str) -> None:
    db, q = make_app(tmp_path, queue_location)
    enqueue(q, "send", 5, "mail", "ada")
    done = ferroq_cli(tmp_path, "worker", "app", "--until-empty", "--processes", "2", "--log-level", "warning")
    assert done.returncode == 0, done.stderr
    assert [t.result for t in q.list(status="completed")] == ["sent ada"] * 5


def test_worker_claims_only_its_groups(tmp_path: Path, queue_location: Path | str) -> None:
    db, q = make_app(tmp_path, queue_location)
    enqueue(q, "double", 5, "cpu", 1)
    enqueue(q, "send", 5, "mail", "bob")
    done = ferroq_cli(tmp_path, "worker", "app:queue", "--groups", "mail", "--until-empty")
    assert done.returncode == 0, done.stderr
    assert {t.resource_group for t in q.list(status="completed")} == {"mail"}
    assert {t.resource_group for t in q.list(status="pending")} == {"cpu"}


def test_worker_obeys_a_pause_made_by_the_cli(tmp_path: Path, queue_location: Path | str) -> None:
    db, q = make_app(tmp_path, queue_location)
    enqueue(q, "double", 3, "cpu", 1)
    enqueue(q, "send", 3, "mail", "eve")
    assert ferroq_cli(tmp_path, "--db", str(db), "pause", "mail").returncode == 0
    done = ferroq_cli(tmp_path, "worker", "app:queue", "--until-idle")
    assert done.returncode == 0, done.stderr
    assert q.counts()["completed"] == 3 and q.counts()["pending"] == 3
    assert ferroq_cli(tmp_path, "--db", str(db), "resume", "mail").returncode == 0
    assert ferroq_cli(tmp_path, "worker", "app:queue", "--until-idle").returncode == 0
    assert q.counts()["completed"] == 6


def test_worker_reports_a_bad_target_without_a_traceback(tmp_path: Path, queue_location: Path | str) -> None:
    make_app(tmp_path, queue_location)
    for spec, message in (
        ("nosuchmodule:q", "cannot import"),
        ("app:nope", "no attribute"),
        ("app:double", "not a ferroq.Queue"),
    ):
        done = ferroq_cli(tmp_path, "worker", spec)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and "Traceback" not in done.stderr
    both = ferroq_cli(tmp_path, "worker", "app:queue", "--concurrency", "2", "--processes", "2")
    assert both.returncode == 2 and "not both" in both.stderr


HOOKS = """
import os

def note(*fields):
    fd = os.open("hooks.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, (" ".join(map(str, (*fields, os.getpid()))) + "\\n").encode())
    os.close(fd)

def start():
    note("start")

def stop():
    note("stop")

def before(ctx):
    note("before", ctx.id)

def after(ctx, outcome):
    note("after", ctx.id, outcome.result)

def refuse():
    raise RuntimeError("no database")

NOT_A_FUNCTION = 3
"""


@pytest.mark.parametrize("pool", [(), ("--processes", "2")], ids=["threads", "processes"])
def test_worker_hook_options_call_functions_named_by_module(
    tmp_path: Path, queue_location: Path | str, pool: tuple[str, ...]
) -> None:
    db, q = make_app(tmp_path, queue_location)
    (tmp_path / "hooks.py").write_text(HOOKS)
    enqueue(q, "double", 3, "cpu", 4)
    done = ferroq_cli(
        tmp_path,
        "worker",
        "app:queue",
        "--until-empty",
        *pool,
        "--on-start",
        "hooks:start",
        "--on-stop",
        "hooks:stop",
        "--before-run",
        "hooks:before",
        "--after-run",
        "hooks:after",
    )
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in (tmp_path / "hooks.log").read_text().splitlines()]
    assert lines[0][0] == "start" and lines[-1][0] == "stop"
    ids = [t.id for t in q.list()]
    for task_id in ids:
        seen = [line for line in lines if len(line) > 2 and line[1] == str(task_id)]
        assert [line[0] for line in seen] == ["before", "after"] and seen[1][2] == "8", seen
        assert (seen[0][-1] == lines[0][-1]) == (not pool)  # in the worker process, or in a child


def test_worker_hook_options_that_are_wrong_are_one_line_errors(tmp_path: Path, queue_location: Path | str) -> None:
    db, q = make_app(tmp_path, queue_location)
    (tmp_path / "hooks.py").write_text(HOOKS)
    enqueue(q, "double", 1, "cpu", 4)
    for args, code, message in (
        (("--on-start", "hooks"), 2, "takes MODULE:FUNC"),
        (("--before-run", "nope:f"), 2, "cannot import 'nope'"),
        (("--after-run", "hooks:missing"), 2, "has no attribute 'missing'"),
        (("--on-stop", "hooks:NOT_A_FUNCTION"), 2, "not a function"),
        (
            ("--on-start", "hooks:refuse"),
            1,
            "--on-start hooks:refuse failed, the worker did not start: RuntimeError: no database",
        ),
    ):
        done = ferroq_cli(tmp_path, "worker", "app:queue", "--until-empty", *args)
        assert done.returncode == code, (args, done.stderr)
        assert f"error: {message}" in done.stderr or message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
    assert q.counts()["pending"] == 1  # nothing ran


def test_worker_autoscales_and_refuses_bad_autoscale_options(tmp_path: Path, queue_location: Path | str) -> None:
    db, q = make_app(tmp_path, queue_location)
    enqueue(q, "double", 20, "cpu", 21)
    done = ferroq_cli(tmp_path, "worker", "app:queue", "--until-empty", "--autoscale", "1:4")
    assert done.returncode == 0, done.stderr
    assert q.counts()["completed"] == 20
    assert "thread pool, autoscaled within 1..4" in done.stderr
    enqueue(q, "double", 6, "cpu", 21)
    done = ferroq_cli(tmp_path, "worker", "app:queue", "--until-empty", "--autoscale", "1:2", "--pool", "process")
    assert done.returncode == 0, done.stderr
    assert q.counts()["completed"] == 26
    assert "process pool, autoscaled within 1..2" in done.stderr
    for bad in (
        ["--autoscale", "4:1"],
        ["--autoscale", "x"],
        ["--autoscale", "1:4", "--concurrency", "2"],
        ["--pool", "process"],
    ):
        refused = ferroq_cli(tmp_path, "worker", "app:queue", "--until-empty", *bad)
        assert refused.returncode == 2, refused.stderr
        assert "autoscale" in refused.stderr and "Traceback" not in refused.stderr
