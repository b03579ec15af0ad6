"""What ``ferroq`` prints, run as the real executable: widths, times, durations, events,
names, exit codes and the error prefix."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import ferroq
from ferroq._units import duration
from ferroq.cli._tasks import LIST_ALWAYS, LIST_DROPPED
from ferroq.queue import LIST_LIMIT
from procs import child_env

pytestmark = pytest.mark.both_engines  # every test with a database runs on SQLite and PostgreSQL


@pytest.fixture
def db(queue_location: Path | str) -> Path | str:
    """The database the CLI is pointed at (--db): the file or URL of the test's queue."""
    return queue_location


FERROQ = str(Path(sys.executable).parent / "ferroq")


class Declined(Exception):
    pass


def cli(db: Path | str, *args: str, columns: int | None = None) -> subprocess.CompletedProcess[str]:
    env = child_env()
    env.pop("COLUMNS", None)
    if columns is not None:
        env["COLUMNS"] = str(columns)
    return subprocess.run([FERROQ, "--db", str(db), *args], env=env, capture_output=True, text=True, timeout=60)


def json_lines(done: subprocess.CompletedProcess[str]) -> list[Any]:
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.fixture
def shop(queue_location: Path | str) -> ferroq.Queue:
    """Dead charges (long names, long errors), a completed task, a delayed one."""
    q = ferroq.Queue(queue_location, durability="normal")

    @q.task(name="shop.tasks.charge", resource_group="payments", max_attempts=1)
    def charge(n: int) -> None:
        ferroq.current_task().progress(0.5, "calling the bank")
        raise Declined(f"card {n} declined by the issuing bank after a long and detailed conversation")

    @q.task(name="shop.tasks.ship")
    def ship(n: int) -> int:
        return n

    charge.enqueue(1)
    charge.enqueue(2)
    ship.enqueue(3)
    ferroq.Worker(q, handle_signals=False).run(until_idle=True)
    ship.using(delay=3600).enqueue(4)
    return q


def header(done: subprocess.CompletedProcess[str]) -> list[str]:
    assert done.returncode == 0, done.stderr
    line = done.stdout.splitlines()[0]
    return [
        col
        for col in ("id", "name", "status", "run at", "group", "prio", "tries", "created", "finished", "last error")
        if col in line
    ]


@pytest.mark.parametrize("width", [80, 120, 200])
def test_list_keeps_the_id_and_drops_columns_in_the_documented_order(
    shop: ferroq.Queue, db: Path | str, width: int
) -> None:
    done = cli(db, "list", columns=width)
    shown = header(done)
    lines = done.stdout.splitlines()
    assert all(len(line) <= width for line in lines), lines
    assert set(LIST_ALWAYS) <= set(shown)
    optional = [c for c in LIST_DROPPED if c in shown]
    # What is shown of the droppable columns is what is left after dropping from the front.
    assert optional == list(LIST_DROPPED[len(LIST_DROPPED) - len(optional) :]), shown
    ids = [line.split()[0] for line in lines[1:]]
    assert ids == ["4", "3", "2", "1"], lines  # every id whole, first on its line
    if width == 200:
        assert shown[-1] == "last error" and "card 2 declined" in done.stdout
    if width == 80:
        assert "run at" in shown and "shop.tasks.charge" in done.stdout


def test_list_and_help_say_the_drop_order(db: Path | str) -> None:
    ferroq.Queue(db).close()
    done = cli(db, "list", "--help", columns=200)
    assert ", ".join(LIST_DROPPED) in " ".join(done.stdout.split())
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert ", ".join(f"`{c}`" for c in LIST_DROPPED) in readme


def test_list_shows_when_a_pending_task_runs(shop: ferroq.Queue, db: Path | str) -> None:
    done = cli(db, "list", "--status", "pending", columns=200)
    (row,) = done.stdout.splitlines()[1:]
    assert row.split()[0] == "4" and any(f"in {d}" in row for d in ("59m", "60m", "1h")), row


@pytest.mark.parametrize("width", [80, 200])
def test_status_is_compact_in_a_narrow_terminal(shop: ferroq.Queue, db: Path | str, width: int) -> None:
    shop.group("payments", throttle=ferroq.Throttle(rate=5, max_concurrency=2))
    done = cli(db, "status", columns=width)
    assert done.returncode == 0, done.stderr
    assert all(len(line) <= width for line in done.stdout.splitlines()), done.stdout
    assert "payments" in done.stdout and "0/2" in done.stdout
    assert ("tokens" in done.stdout) == (width >= 120)


def test_events_kind_filters_before_taking_the_last_twenty(shop: ferroq.Queue, db: Path | str) -> None:
    for _ in range(15):  # 30 newer events of other kinds
        shop.pause()
        shop.resume()
    dead = json_lines(cli(db, "events", "--kind", "dead", "-o", "json"))
    assert [e["kind"] for e in dead] == ["dead", "dead"]
    assert len(json_lines(cli(db, "events", "-o", "json"))) == 20
    latest = shop.latest_events(3, kinds=["dead", "progress"])
    assert latest[-1].kind == "dead" and {e.kind for e in latest} == {"dead", "progress"}
    assert [e.id for e in latest] == sorted(e.id for e in latest)


def test_events_hold_errors_as_objects_and_times_as_iso_8601(db: Path | str) -> None:
    q = ferroq.Queue(db, durability="normal")

    @q.task(name="flaky", max_attempts=2, retry=ferroq.RetryPolicy(base_delay=60))
    def flaky() -> None:
        raise Declined("no")

    flaky.enqueue()
    ferroq.Worker(q, handle_signals=False).run(until_idle=True)
    failed, retried = json_lines(cli(db, "events", "--after", "0", "-o", "json"))
    assert set(failed) == {"id", "at", "queue", "group", "task_id", "kind", "detail"}
    assert failed["detail"]["error"]["type"].endswith("Declined") and failed["detail"]["error"]["message"] == "no"
    assert "Traceback" in failed["detail"]["error"]["traceback"]
    assert failed["at"][:4].isdigit() and "T" in failed["at"]
    assert retried["kind"] == "retried" and "T" in retried["detail"]["run_at"]
    text = cli(db, "events", "--after", "0").stdout
    assert "error=" in text and "Declined: no" in text and '\\"' not in text, text


def test_a_progress_message_can_be_read_back(shop: ferroq.Queue, db: Path | str) -> None:
    dead = shop.list(status="dead", name="shop.tasks.charge")[0]
    assert dead.progress == 0.5 and dead.progress_message == "calling the bank"
    assert "calling the bank" in cli(db, "inspect", str(dead.id)).stdout
    (event,) = json_lines(cli(db, "events", "--kind", "progress", "-o", "json"))[-1:]
    assert event["detail"] == {"progress": 0.5, "message": "calling the bank"}
    shop.requeue(dead.id)
    assert shop.get(dead.id).progress_message is None


def test_refused_retry_exits_1_and_retry_json_has_one_shape(db: Path | str) -> None:
    q = ferroq.Queue(db, durability="normal")

    @q.task(name="once", max_attempts=1)
    def once() -> None:
        raise Declined("no")

    dead = once.using(unique_key="k").enqueue().id
    ferroq.Worker(q, handle_signals=False).run(until_idle=True)
    once.using(unique_key="k").enqueue()  # now holds the key
    held = cli(db, "retry", str(dead))
    assert held.returncode == 1, held
    assert "error: cannot requeue" in held.stderr and "unique key is held" in held.stderr
    held_json = cli(db, "retry", str(dead), "-o", "json")
    assert held_json.returncode == 1
    by_id = json.loads(held_json.stdout)
    by_all = json.loads(cli(db, "retry", "--all-dead", "-o", "json").stdout)
    assert set(by_id) == set(by_all) == {"requeued", "skipped", "failed"}
    assert by_id["requeued"] == 0 and str(dead) in by_id["failed"]
    assert by_all == {"requeued": 0, "skipped": [dead], "failed": {}}
    with pytest.raises(ferroq.InvalidTransition):
        q.requeue(dead)


def test_every_failure_starts_with_the_same_prefix(db: Path | str) -> None:
    ferroq.Queue(db).close()
    for args in (["list", "--bogus"], ["inspect", "99"], ["list", "--status", "nope"], ["retry"]):
        done = cli(db, *args)
        assert done.returncode in (2, 4), (args, done)
        assert done.stderr.splitlines()[-1].startswith("error: "), (args, done.stderr)
        assert "Error:" not in done.stderr and "Traceback" not in done.stderr


def test_the_readme_exit_codes_are_the_codes() -> None:
    from ferroq.cli import Exit

    readme = " ".join((Path(__file__).parent.parent / "README.md").read_text().split())
    for code in (Exit.OK, Exit.FAILED, Exit.USAGE, Exit.DATABASE, Exit.NOT_FOUND, Exit.INTERRUPTED):
        assert f"`{int(code)}`" in readme.split("**Exit codes**")[1][:800]


def test_durations_print_in_human_units(shop: ferroq.Queue, db: Path | str) -> None:
    assert [duration(s) for s in (0.12, 5.6361, 8_640_000, 90, 0.0004)] == ["120ms", "5.6s", "100d", "1.5m", "0.4ms"]
    stats = cli(db, "stats", "--window", "100d")
    assert "last 100d" in stats.stdout and "e+" not in stats.stdout, stats.stdout
    health = cli(db, "health", "--no-require-workers", "--max-dead", "9", "--dead-window", "100d")
    assert "in the last 100d" in health.stdout and "e+" not in health.stdout, health.stdout


def test_name_takes_a_unique_suffix_at_a_dot(shop: ferroq.Queue, db: Path | str) -> None:
    charges = json.loads(cli(db, "list", "--name", "charge", "-o", "json").stdout)
    assert [t["name"] for t in charges] == ["shop.tasks.charge"] * 2
    assert json.loads(cli(db, "list", "--name", "arge", "-o", "json").stdout) == []

    @shop.task(name="billing.charge")
    def other() -> None: ...

    other.enqueue()
    ambiguous = cli(db, "list", "--name", "charge")
    assert ambiguous.returncode == 2
    assert "billing.charge" in ambiguous.stderr and "shop.tasks.charge" in ambiguous.stderr
    exact = json.loads(cli(db, "list", "--name", "billing.charge", "-o", "json").stdout)
    assert [t["name"] for t in exact] == ["billing.charge"]


def test_last_event_id_is_public(shop: ferroq.Queue) -> None:
    start = shop.last_event_id()
    shop.pause()
    assert [e.kind for e in shop.events(after=start)] == ["queue_paused"]
    assert shop.last_event_id() == start + 1


def test_list_shares_one_default_limit() -> None:
    from ferroq.cli._tasks import list_command

    assert inspect.signature(ferroq.Queue.list).parameters["limit"].default == LIST_LIMIT
    (limit,) = [p for p in list_command.params if p.name == "limit"]
    assert limit.default == LIST_LIMIT


def test_core_log_records_reach_the_ferroq_logger(tmp_path: Path) -> None:
    script = tmp_path / "log.py"
    script.write_text(
        textwrap.dedent(f"""
        import logging, ferroq
        seen = []
        class Keep(logging.Handler):
            def emit(self, record):
                seen.append(record.name)
        logging.getLogger("ferroq").addHandler(Keep())
        q = ferroq.Queue({str(tmp_path / "q.db")!r})
        q.circuit("api").open(60, reason="test")
        print(seen)
    """)
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=os.fspath(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    names = eval(done.stdout)
    assert names and all(n.startswith("ferroq._core.") for n in names), names
