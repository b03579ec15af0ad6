"""The worker's profiler: ``Worker(profile=True)`` records per-stage and per-task figures in
the metrics table; ``Queue.profile()`` and ``ferroq profile`` read them, also live from
another process; off, the worker runs its usual collaborators."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import ferroq
from ferroq.cli import main as cli
from ferroq.profiling import STAGES
from ferroq.worker.claim_loop import ClaimLoop
from ferroq.worker.completer import Completer
from ferroq.worker.runners import ThreadRunners

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import Procs, child_env, procs, wait_until  # noqa: F401

MIB = 1 << 20


def declare(q: ferroq.Queue) -> None:
    @q.task(name="sleepy")
    def sleepy() -> None:
        time.sleep(0.02)  # wall time without CPU time

    @q.task(name="alloc")
    def alloc() -> int:
        block = bytearray(16 * MIB)  # a 16 MiB peak, freed before the run ends
        return len(block)

    q.enqueue_many(sleepy.call() for _ in range(5))
    q.enqueue_many(alloc.call() for _ in range(3))


def test_a_profiling_worker_records_stages_and_tasks(queue: ferroq.Queue) -> None:
    declare(queue)
    ferroq.Worker(queue, concurrency=1, profile=True).run(until_idle=True)
    p = queue.profile(window=60)
    stages = {s.stage: s for s in p.stages}
    assert [s.stage for s in p.stages] == list(STAGES)
    for name in ("claim", "decode", "wait", "run", "record", "commit"):
        assert stages[name].tasks == 8, name
    assert stages["encode"].tasks == 3, "only the non-None results are encoded"
    tasks = {t.name: t for t in p.tasks}
    assert (tasks["sleepy"].runs, tasks["alloc"].runs) == (5, 3)
    assert tasks["sleepy"].cpu.mean < tasks["sleepy"].wall.mean
    assert 16 * MIB <= tasks["alloc"].memory_peak_max < 20 * MIB
    assert tasks["sleepy"].memory_peak_max < MIB
    text = p.table()
    assert "commit" in text and "alloc" in text and "16MiB" in text


def test_runs_off_the_runner_threads_leave_nothing_behind(queue: ferroq.Queue) -> None:
    @queue.task(name="aio")
    async def aio(i: int) -> int:
        return i

    queue.enqueue_many(aio.call(i) for i in range(20))
    w = ferroq.Worker(queue, concurrency=2, profile=True)
    w.run(until_idle=True)
    assert queue.counts()["completed"] == 20
    assert w._profiler is not None and w._profiler.handed == {}


def test_off_nothing_is_recorded_and_the_usual_path_runs(queue: ferroq.Queue) -> None:
    declare(queue)
    w = ferroq.Worker(queue, concurrency=1)
    assert (type(w._claims), type(w._runners), type(w._completer)) == (ClaimLoop, ThreadRunners, Completer)
    w.run(until_idle=True)
    assert queue.profile(window=60).empty
    assert queue.counts()["completed"] == 8


def test_profile_without_memory_records_time_only(queue: ferroq.Queue) -> None:
    declare(queue)
    ferroq.Worker(queue, concurrency=1, profile="time").run(until_idle=True)
    p = queue.profile(window=60)
    tasks = {t.name: t for t in p.tasks}
    assert tasks["alloc"].runs == 3 and tasks["alloc"].memory_peak_max == 0
    assert len(p.stages) == len(STAGES)


def test_bad_profile_settings_are_refused(queue: ferroq.Queue) -> None:
    for bad in ("yes", 1, None, "on"):
        with pytest.raises(ferroq.InvalidArgument, match="profile"):
            ferroq.Worker(queue, profile=bad)  # type: ignore[arg-type]


def test_the_cli_prints_the_profile_or_says_there_is_none(db_path: Path, queue: ferroq.Queue) -> None:
    runner = CliRunner()
    empty = runner.invoke(cli, ["--db", str(db_path), "profile", "--no-wait"])
    assert empty.exit_code == 0 and "no profile recorded" in empty.output
    declare(queue)
    ferroq.Worker(queue, concurrency=1, profile=True).run(until_idle=True)
    shown = runner.invoke(cli, ["--db", str(db_path), "profile", "--no-wait", "--seconds", "60"])
    assert shown.exit_code == 0, shown.output
    assert "wait" in shown.output and "sleepy" in shown.output
    as_json = json.loads(runner.invoke(cli, ["--db", str(db_path), "profile", "--no-wait", "-o", "json"]).output)
    assert {t["name"] for t in as_json["tasks"]} == {"sleepy", "alloc"}


APP = """
import os, time
import ferroq

queue = ferroq.Queue({db!r})

@queue.task(name="step")
def step(i):
    time.sleep(0.01)
    return i
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ferroq_profile_reads_a_running_worker_from_another_process(tmp_path: Path, procs: Procs) -> None:
    db = tmp_path / "app.db"
    (tmp_path / "app.py").write_text(textwrap.dedent(APP.format(db=str(db))))
    q = ferroq.Queue(db)
    step = q.task(name="step")(lambda i: i)
    q.enqueue_many(step.call(i) for i in range(3000))  # ~30 s of work: still running when read
    worker = subprocess.Popen(
        [sys.executable, "-m", "ferroq.cli", "worker", "app:queue", "--profile", "on", "--concurrency", "1"],
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def shown() -> str | None:
            done = subprocess.run(
                [sys.executable, "-m", "ferroq.cli", "--db", str(db), "profile", "--no-wait", "--seconds", "60"],
                cwd=tmp_path,
                env=child_env(),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
            return done.stdout if "step" in done.stdout else None

        text = wait_until(shown, 60, "the running worker's profile", interval=0.5)
        assert worker.poll() is None, "read while the worker runs"
        assert "commit" in text
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
