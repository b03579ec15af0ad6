"""A rolling deploy with real worker processes: new code enqueues a task that workers still
running the old code have no processor for. They give it back (pending, attempt returned,
claimable again after a growing delay) instead of killing it, warn once, and ``ferroq
status`` says so; a worker with the processor then runs it; with nobody to run it, it goes
dead with ``UnknownTaskName`` once the grace since its first deferral is over."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ferroq

from procs import Procs, child_env, procs, wait_until  # noqa: F401

# Real worker processes: seconds each (`pytest -m 'not slow'` skips them).
pytestmark = [pytest.mark.slow, pytest.mark.both_engines]

#: The installed ``ferroq`` console script, next to this interpreter (a Python script).
FERROQ = Path(sys.executable).with_name("ferroq")
NEW = "billing.new_thing"
WARNING = f"has no processor for task {NEW!r}"

OLD_APP = """
import ferroq
q = ferroq.Queue({db!r}, durability="normal")

@q.task(name="billing.invoice")
def invoice(n: int) -> int:
    return n
"""

NEW_APP = (
    OLD_APP
    + """
@q.task(name="{new}")
def new_thing(n: int) -> int:
    return n * 10
"""
)


def setup(tmp_path: Path, db: Path | str) -> tuple[Path | str, ferroq.Queue]:
    (tmp_path / "old_app.py").write_text(textwrap.dedent(OLD_APP.format(db=str(db))))
    (tmp_path / "new_app.py").write_text(textwrap.dedent(NEW_APP.format(db=str(db), new=NEW)))
    return db, ferroq.Queue(db, durability="normal")


def enqueue_new(q: ferroq.Queue, *args: int) -> list[int]:
    """What the new code enqueues (its processor lives in new_app.py)."""
    task = q.tasks.get(NEW) or q.task(name=NEW)(lambda n: n)
    return q.enqueue_many([task.call(n) for n in args])


def deferrals(q: ferroq.Queue, task_id: int) -> int:
    return sum(1 for t in q.history(task_id) if t.error is not None and t.error.type == "NoProcessor")


def test_an_old_worker_gives_the_task_back_and_a_new_worker_runs_it(
    tmp_path: Path, queue_location: Path | str, procs: Procs
) -> None:
    db, q = setup(tmp_path, queue_location)
    ids = enqueue_new(q, 1, 2, 3)
    invoice = q.task(name="billing.invoice")(lambda n: n).enqueue(7)
    old = procs.start(FERROQ, "worker", "old_app:q", "--log-level", "warning", label="old-worker")
    # Each task met at least twice: the warning is logged once all the same.
    wait_until(lambda: all(deferrals(q, i) >= 2 for i in ids), 60, "two deferrals of each task", children=[old])
    assert invoice.result(timeout=30) == 7  # the old worker kept working
    for i in ids:
        info = q.get(i)
        assert (info.status, info.attempts) == ("pending", 0), info

    status = subprocess.run(
        [sys.executable, "-m", "ferroq.cli", "--db", str(db), "status"],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    assert f"3 tasks of {NEW!r}" in status.stdout and "have no processor in the running workers" in status.stdout

    old.send(signal.SIGTERM)
    old.check(60)
    assert old.stderr().count(WARNING) == 1, old.stderr()

    new = procs.start(FERROQ, "worker", "new_app:q", "--until-empty", "--log-level", "warning", label="new-worker")
    new.check(120)
    for i, n in zip(ids, (1, 2, 3)):
        info = q.get(i)
        assert (info.status, info.result, info.attempts) == ("completed", n * 10, 1), info
    assert WARNING not in new.stderr()
    assert (
        NEW
        not in subprocess.run(
            [sys.executable, "-m", "ferroq.cli", "--db", str(db), "status"],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    )


def test_a_task_no_worker_can_run_goes_dead_after_the_grace(
    tmp_path: Path, queue_location: Path | str, procs: Procs
) -> None:
    db, q = setup(tmp_path, queue_location)
    (task_id,) = enqueue_new(q, 1)
    old = procs.start(
        FERROQ,
        "worker",
        "old_app:q",
        "--until-empty",
        "--unknown-task-grace",
        "2",
        "--log-level",
        "warning",
        label="old-worker",
    )
    old.check(120)
    info = q.get(task_id)
    assert info.status == "dead", info
    assert info.last_error is not None and info.last_error.type == "ferroq.errors.UnknownTaskName"
    assert NEW in info.last_error.message and "no processor is registered" in info.last_error.message
    assert deferrals(q, task_id) >= 2  # given back until the grace was over
    assert old.stderr().count(WARNING) == 1 and "is dead" in old.stderr()


def test_the_grace_is_checked(tmp_path: Path, queue_location: Path | str) -> None:
    db, q = setup(tmp_path, queue_location)
    with pytest.raises(ferroq.InvalidArgument, match="unknown_task_grace"):
        ferroq.Worker(q, unknown_task_grace=-1.0)
    done = subprocess.run(
        [str(FERROQ), "worker", "old_app:q", "--unknown-task-grace", "-1"],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--unknown-task-grace" in done.stderr and "Traceback" not in done.stderr
