"""Periodic tasks: each tick enqueued exactly once (minute boundaries, DST in Europe/Berlin,
restarts, missed ticks, two schedulers in two processes), with an injected clock."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from ferroq import Queue
from ferroq.errors import InvalidArgument
from ferroq.worker.scheduler import Scheduler

from procs import procs  # noqa: F401

pytestmark = pytest.mark.both_engines  # every test runs on SQLite and PostgreSQL

BERLIN = ZoneInfo("Europe/Berlin")
UTC = timezone.utc


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at.timestamp()


def make_queue(db: Path | str, cron: str, missed: str = "once") -> Queue:
    q = Queue(db)

    @q.periodic(cron, tz="Europe/Berlin", missed=missed, name="job")
    def job() -> None: ...

    return q


def ticks(q: Queue) -> list[datetime]:
    """The ticks enqueued, from their unique keys, in order."""
    keys = [t.unique_key for t in q.list(limit=10_000)]
    return sorted(
        datetime.strptime(k.rsplit(":", 2)[1] + ":" + k.rsplit(":", 1)[1], "%Y-%m-%dT%H:%MZ").replace(tzinfo=UTC)
        for k in keys
        if k
    )


def step(q: Queue, clock: Clock, until: datetime, every: timedelta = timedelta(minutes=1)) -> Scheduler:
    s = Scheduler(q, clock)
    clock.at = clock.at.astimezone(UTC)  # real minutes: aware arithmetic in Berlin is wall-clock
    while clock.at <= until:
        s.poll()
        clock.at += every
    return s


def berlin(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN)  # type: ignore[misc]


def test_minute_boundaries(queue_location: Path | str) -> None:
    q = make_queue(queue_location, "*/5 * * * *")
    clock = Clock(berlin(2024, 6, 1, 10, 0, 30))
    s = Scheduler(q, clock)
    assert s.poll() == []
    clock.at = berlin(2024, 6, 1, 10, 4, 59) + timedelta(microseconds=999_000)
    assert s.poll() == []
    clock.at = berlin(2024, 6, 1, 10, 5)
    assert len(s.poll()) == 1
    clock.at = berlin(2024, 6, 1, 10, 5, 30)
    assert s.poll() == []
    clock.at = berlin(2024, 6, 1, 10, 10, 0, 1)
    assert len(s.poll()) == 1
    assert ticks(q) == [berlin(2024, 6, 1, 10, 5).astimezone(UTC), berlin(2024, 6, 1, 10, 10).astimezone(UTC)]


def test_dst_forward_daily_job_runs_once_when_the_clocks_skip_its_time(queue_location: Path | str) -> None:
    q = make_queue(queue_location, "30 2 * * *")
    step(q, Clock(berlin(2024, 3, 30, 12, 0)), berlin(2024, 4, 1, 12, 0))
    # 31 March has no 02:30: the run comes when the clocks jump, 03:00 CEST.
    assert ticks(q) == [datetime(2024, 3, 31, 1, 0, tzinfo=UTC), datetime(2024, 4, 1, 0, 30, tzinfo=UTC)]


def test_dst_forward_interval_job_keeps_its_pace(queue_location: Path | str) -> None:
    q = make_queue(queue_location, "*/30 * * * *")
    step(q, Clock(berlin(2024, 3, 31, 0, 50)), berlin(2024, 3, 31, 4, 10))
    start = datetime(2024, 3, 31, 0, 0, tzinfo=UTC)  # 01:00 CET; 01:00Z is 03:00 CEST
    assert ticks(q) == [start + timedelta(minutes=30 * i) for i in range(5)]


def test_dst_back_daily_job_runs_once_in_the_repeated_hour(queue_location: Path | str) -> None:
    q = make_queue(queue_location, "30 2 * * *")
    step(q, Clock(berlin(2024, 10, 26, 12, 0)), berlin(2024, 10, 28, 12, 0))
    assert ticks(q) == [datetime(2024, 10, 27, 0, 30, tzinfo=UTC), datetime(2024, 10, 28, 1, 30, tzinfo=UTC)]


def test_dst_back_interval_job_runs_in_both_hours(queue_location: Path | str) -> None:
    q = make_queue(queue_location, "*/30 * * * *")
    step(q, Clock(berlin(2024, 10, 27, 1, 50)), berlin(2024, 10, 27, 3, 10))
    start = datetime(2024, 10, 27, 0, 0, tzinfo=UTC)  # 02:00 CEST
    assert ticks(q) == [start + timedelta(minutes=30 * i) for i in range(5)]  # ... 03:00 CET


def test_a_finished_tick_is_not_enqueued_again_after_a_restart(queue_location: Path | str) -> None:
    db = queue_location
    q = make_queue(db, "*/5 * * * *")
    clock = Clock(berlin(2024, 6, 1, 10, 4))
    Scheduler(q, clock).poll()
    clock.at = berlin(2024, 6, 1, 10, 5, 1)
    (task_id,) = Scheduler(q, clock).poll()
    q.cancel(task_id)  # finished: its unique key is free again
    q.close()
    again = make_queue(db, "*/5 * * * *")
    assert Scheduler(again, clock).poll() == []
    assert len(ticks(again)) == 1


def test_missed_ticks_once(queue_location: Path | str) -> None:
    db = queue_location
    clock = Clock(berlin(2024, 6, 1, 10, 4))
    step(make_queue(db, "*/5 * * * *"), clock, berlin(2024, 6, 1, 10, 6))
    clock.at = berlin(2024, 6, 1, 10, 27)  # no worker ran from 10:06 to 10:27
    q = make_queue(db, "*/5 * * * *")
    s = Scheduler(q, clock)
    assert len(s.poll()) == 1  # 10:10 ... 10:25 collapse into one run
    clock.at = berlin(2024, 6, 1, 10, 30)
    assert len(s.poll()) == 1
    assert [t.astimezone(BERLIN).strftime("%H:%M") for t in ticks(q)] == ["10:05", "10:25", "10:30"]


def test_missed_ticks_skip(queue_location: Path | str) -> None:
    db = queue_location
    clock = Clock(berlin(2024, 6, 1, 10, 4))
    step(make_queue(db, "*/5 * * * *", missed="skip"), clock, berlin(2024, 6, 1, 10, 6))
    clock.at = berlin(2024, 6, 1, 10, 27)
    q = make_queue(db, "*/5 * * * *", missed="skip")
    s = Scheduler(q, clock)
    assert s.poll() == []
    clock.at = berlin(2024, 6, 1, 10, 30)
    assert len(s.poll()) == 1
    assert [t.astimezone(BERLIN).strftime("%H:%M") for t in ticks(q)] == ["10:05", "10:30"]


def test_a_new_schedule_does_not_run_ticks_from_before_it_existed(queue_location: Path | str) -> None:
    q = make_queue(queue_location, "0 0 * * *")
    assert Scheduler(q, Clock(berlin(2024, 6, 1, 10, 0))).poll() == []


SCHEDULER = """
import sys, time
from datetime import datetime, timedelta, timezone
from ferroq import Queue
from ferroq.worker.scheduler import Scheduler

db, go = sys.argv[1], sys.argv[2]
q = Queue(db)

@q.periodic("* * * * *", tz="Europe/Berlin", name="job")
def job(): ...

at = [datetime(2024, 10, 27, 0, 50, tzinfo=timezone.utc).timestamp()]  # 02:50 CEST
s = Scheduler(q, lambda: at[0])
wait_for_file(go)
for _ in range(121):          # two hours of minutes, each polled a few times
    for _ in range(3):
        s.poll()
        # Finish what is pending at once, freeing its unique key: the other scheduler must
        # still not enqueue that tick again.
        for t in q.list(status="pending"):
            try:
                q.cancel(t.id)
            except Exception:
                pass
    at[0] += 60
emit({"done": True})
"""


@pytest.mark.slow
def test_two_schedulers_in_two_processes_enqueue_each_tick_once(
    queue_location: Path | str, tmp_path: Path, procs
) -> None:
    db = queue_location
    Queue(db).close()
    go = tmp_path / "go"
    script = procs.script("scheduler", SCHEDULER)
    children = [procs.start(script, db, go, label=f"scheduler-{i}") for i in range(2)]
    go.touch()
    for child in children:
        child.check(120)
    q = Queue(db)
    got = ticks(q)
    assert len(got) == len(set(got)) == 120
    assert got[0] == datetime(2024, 10, 27, 0, 51, tzinfo=UTC)  # through the repeated hour


def test_bad_declarations(queue_location: Path | str) -> None:
    q = Queue(queue_location)

    @q.task
    def job() -> None: ...

    with pytest.raises(InvalidArgument, match="cron"):
        q.schedule(job, cron="every five minutes")
    with pytest.raises(InvalidArgument, match="time zone"):
        q.schedule(job, cron="* * * * *", tz="Mars/Olympus")
    with pytest.raises(InvalidArgument, match="missed"):
        q.schedule(job, cron="* * * * *", missed="twice")
    with pytest.raises(InvalidArgument):
        q.schedule(job, cron="* * * * *", args=(1,))  # job takes no argument
    q.schedule(job, cron="* * * * *")
    with pytest.raises(InvalidArgument, match="already"):
        q.schedule(job, cron="*/2 * * * *")
