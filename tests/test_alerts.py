"""Alerts on a manual clock: a rule holds ``for_`` seconds before it fires, resolves when
it stops holding, each transition an event told once across processes (and to a callback
or a webhook task); then a real worker evaluating them."""

from __future__ import annotations

import http.server
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import ferroq
from ferroq._core import NewTask, Outcomes
from ferroq.alerts import (
    ArrivalAnomaly,
    BacklogGrowth,
    CircuitOpen,
    DeadTasks,
    ErrorRate,
    ForecastOverCapacity,
    NoWorker,
    Transition,
    WaitAnomaly,
    WaitP95,
)
from ferroq.errors import InvalidArgument
from ferroq.testing import ManualClock, drain

pytestmark = pytest.mark.both_engines  # every test runs on SQLite and PostgreSQL

START = 1_699_920_000_000
TICK = 10_000  # one evaluation period


def open_queue(location: Path | str, clock: ManualClock) -> ferroq.Queue:
    return ferroq.Queue(location, durability="normal", clock=clock)


def one(name: str = "t") -> NewTask:
    return NewTask(name, "default", b'{"args": [], "kwargs": {}}', 0, None, 1, None)


def waited(q: ferroq.Queue, clock: ManualClock, seconds: float, n: int = 5) -> None:
    """``n`` tasks claimed after waiting ``seconds`` (the wait histogram), then done."""
    q._store.enqueue(q.name, [one()] * n)
    clock.advance(int(seconds * 1000))
    for row in q._store.claim(q.name, "w", n, 60_000):
        q._store.complete(row.id, row.token, b"null")
    q._store.flush_metrics()


def kinds(q: ferroq.Queue) -> list[tuple[str, str]]:
    return [(e.kind, e.detail["alert"]) for e in q.events() if e.kind.startswith("alert_")]


def test_a_rule_fires_after_holding_for_its_duration_and_resolves(queue_location: Path | str) -> None:
    clock = ManualClock(START)
    q = open_queue(queue_location, clock)
    told: list[Transition] = []
    q.alert("slow", when=WaitP95(above=5, window=60), for_=25, notify=told.append)
    assert q.check_alerts() == []  # nothing waited: nothing holds
    waited(q, clock, 8)
    clock.advance(TICK)
    assert q.check_alerts() == [] and kinds(q) == []  # holds, not for 25 s yet
    clock.advance(TICK)
    assert q.check_alerts() == []
    clock.advance(TICK)
    waited(q, clock, 8, n=1)  # still slow
    fired = q.check_alerts()
    assert fired is not None and [t.kind for t in fired] == ["alert_fired"]
    assert "p95 wait 7.9" in fired[0].detail and fired[0].value == pytest.approx(8, rel=0.05)
    assert told == fired and kinds(q) == [("alert_fired", "slow")]
    (state,) = q.alerts()
    assert state.firing and state.name == "slow"
    clock.advance(TICK)
    assert q.check_alerts() == []  # still firing: no second event
    clock.advance(60_000)  # the window passes with no waits
    resolved = q.check_alerts()
    assert resolved is not None and [t.kind for t in resolved] == ["alert_resolved"]
    assert kinds(q) == [("alert_fired", "slow"), ("alert_resolved", "slow")]
    assert not q.alerts()[0].firing and len(told) == 2


def test_an_evaluation_is_done_once_across_processes(queue_location: Path | str) -> None:
    clock = ManualClock(START)
    a, b = open_queue(queue_location, clock), open_queue(queue_location, clock)
    told: list[str] = []
    for q, who in ((a, "a"), (b, "b")):
        q.alert("nobody", when=NoWorker(), notify=lambda t, who=who: told.append(who))
    first, second = a.check_alerts(), b.check_alerts()
    assert first is not None and [t.kind for t in first] == ["alert_fired"]
    assert second is None  # a's turn is recent: b does not evaluate
    clock.advance(TICK)
    assert b.check_alerts() == []  # b's turn: a's state says it fires already
    assert told == ["a"] and kinds(a) == [("alert_fired", "nobody")]


def test_threshold_rules(queue_location: Path | str) -> None:
    clock = ManualClock(START)
    q = open_queue(queue_location, clock)
    q.alert("dead", when=DeadTasks(at_least=2, window=600))
    q.alert("errors", when=ErrorRate(above=0.5, window=600, min_runs=3))
    q.alert("growing", when=BacklogGrowth(per_minute=10, window=300))
    q.alert("circuit", when=CircuitOpen(longer_than=30), group="g")
    q._store.worker_seen("w", q.name, "h", 1, 4, "thread")  # a worker alive: NoWorker quiet
    q.alert("nobody", when=NoWorker())
    q._store.enqueue(q.name, [one()] * 4)
    for row in q._store.claim(q.name, "w", 4, 60_000):
        q._store.fail(row.id, row.token, '{"type": "E", "message": "boom"}', None)  # one attempt each: dead
    q._store.enqueue(q.name, [one()] * 100)  # nobody starts these
    q._store.flush_metrics()
    q.group("g").circuit.open(reason="test")
    fired = q.check_alerts()
    assert fired is not None and sorted(t.alert for t in fired) == ["dead", "errors", "growing"]
    clock.advance(31_000)
    q._store.worker_seen("w", q.name, "h", 1, 4, "thread")
    fired = q.check_alerts()
    assert fired is not None and [t.alert for t in fired] == ["circuit"]
    assert "'g' open 31 s" in fired[0].detail


def test_an_arrival_anomaly_against_the_forecast_band(queue_location: Path | str) -> None:
    clock = ManualClock(START)
    q = open_queue(queue_location, clock)
    q.alert("surge", when=ArrivalAnomaly(z=4, interval=60))
    for _ in range(6 * 60):  # an hour of 10 every 10 s
        q._store.enqueue(q.name, [one()] * 10)
        q._store.flush_metrics()
        clock.advance(10_000)
    assert q.check_alerts() == []
    for _ in range(6):  # a minute at ten times the rate
        q._store.enqueue(q.name, [one()] * 100)
        q._store.flush_metrics()
        clock.advance(10_000)
    fired = q.check_alerts()
    assert fired is not None and [t.alert for t in fired] == ["surge"]
    assert "600 arrivals in 60 s, forecast 60" in fired[0].detail


def test_a_forecast_over_capacity_warns_ahead(queue_location: Path | str) -> None:
    clock = ManualClock(START)
    q = open_queue(queue_location, clock)
    q.alert("capacity", when=ForecastOverCapacity(horizon=600))
    q._store.worker_seen("w", q.name, "h", 1, 2, "thread")  # 2 threads
    for _ in range(60):  # 10 minutes of 30 tasks per 10 s (3/s) that ran 1 s each
        q._store.enqueue(q.name, [one()] * 30)
        clock.advance(10_000)
        rows = q._store.claim(q.name, "w", 30, 60_000)
        outcomes = Outcomes()
        for r in rows:
            outcomes.completed(r.id, r.token, b"null", 1_000_000)
        q._store.finish_many(outcomes)
        q._store.flush_metrics()
    q._store.worker_seen("w", q.name, "h", 1, 2, "thread")
    fired = q.check_alerts()
    assert fired is not None and [t.alert for t in fired] == ["capacity"]
    assert "capacity 2.00/s" in fired[0].detail


@pytest.mark.parametrize(
    "kwargs",
    [
        {"when": "p95 > 5"},
        {"when": WaitP95(above=1), "for_": -1},
        {"when": WaitP95(above=1), "notify": 3},
        {"when": WaitP95(above=1), "webhook": "ftp://x"},
        {"when": WaitP95(above=1), "group": ""},
    ],
)
def test_bad_alerts_are_refused(queue_location: Path | str, kwargs: dict[str, Any]) -> None:
    q = ferroq.Queue(queue_location)
    with pytest.raises(InvalidArgument):
        q.alert("a", **kwargs)
    for bad in (lambda: WaitP95(above=-1), lambda: ErrorRate(above=float("nan")), lambda: DeadTasks(at_least=0)):
        with pytest.raises(InvalidArgument):
            bad()


def test_a_duplicate_alert_name_is_refused(queue_location: Path | str) -> None:
    q = ferroq.Queue(queue_location)
    q.alert("a", when=NoWorker())
    with pytest.raises(InvalidArgument, match="already declared"):
        q.alert("a", when=NoWorker())


class Hook(http.server.BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []
    fail_first = 1

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if Hook.fail_first:
            Hook.fail_first -= 1
            self.send_response(503)
        else:
            Hook.received.append(body)
            self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_a_webhook_is_a_retried_ferroq_task(queue_location: Path | str) -> None:
    Hook.received, Hook.fail_first = [], 1  # the handler's state is per class: fresh for each engine's run
    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        q = ferroq.Queue(queue_location)
        q.alert("nobody", when=NoWorker(), webhook=f"http://127.0.0.1:{server.server_port}/hook")
        fired = q.check_alerts()
        assert fired is not None and len(fired) == 1
        drain(q, skip_backoff=True)  # the first POST gets a 503: retried
        assert [b["alert"] for b in Hook.received] == ["nobody"]
        assert Hook.received[0]["event"] == "alert_fired" and Hook.received[0]["queue"] == "default"
    finally:
        server.shutdown()
        server.server_close()


def test_a_worker_evaluates_alerts(queue_location: Path | str, monkeypatch: pytest.MonkeyPatch) -> None:
    from ferroq.worker import maintenance

    monkeypatch.setattr(maintenance, "ALERTS_EVERY", 0.1)
    monkeypatch.setattr(maintenance, "METRICS_INTERVAL", 0.1)
    monkeypatch.setattr("ferroq.alerts.EVALUATE_EVERY", 0.6)
    q = ferroq.Queue(queue_location)

    @q.task(max_attempts=1)
    def broken() -> None:
        raise ValueError("no")

    told: list[Transition] = []
    q.alert("dead", when=DeadTasks(at_least=1, window=60), notify=told.append)
    broken.enqueue()
    w = ferroq.Worker(q, handle_signals=False)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while not told and time.monotonic() < deadline:
        time.sleep(0.05)
    w.stop()
    t.join(30)
    assert [x.kind for x in told] == ["alert_fired"] and kinds(q) == [("alert_fired", "dead")]


def test_cli_alerts_and_status_show_what_fires(queue_location: Path | str) -> None:
    from click.testing import CliRunner

    from ferroq.cli import main

    q = ferroq.Queue(queue_location)
    db = str(queue_location)
    none = CliRunner().invoke(main, ["--db", db, "alerts"])
    assert none.exit_code == 0 and "no alert has fired" in none.output
    q.alert("nobody", when=NoWorker())
    q.check_alerts()
    table = CliRunner().invoke(main, ["--db", db, "alerts"])
    assert table.exit_code == 0 and "nobody" in table.output and "firing" in table.output
    data = json.loads(CliRunner().invoke(main, ["--db", db, "alerts", "-o", "json"]).output)
    assert [(a["name"], a["firing"]) for a in data["alerts"]] == [("nobody", True)]
    status = CliRunner().invoke(main, ["--db", db, "status"])
    assert "alert 'nobody' firing" in status.output and "0 worker(s) alive" in status.output
    status_json = json.loads(CliRunner().invoke(main, ["--db", db, "status", "-o", "json"]).output)
    assert [a["name"] for a in status_json["queues"][0]["alerts_firing"]] == ["nobody"]


def test_a_wait_anomaly_against_the_usual_waits(queue_location: Path | str) -> None:
    clock = ManualClock(START)
    q = open_queue(queue_location, clock)
    q.alert("stuck", when=WaitAnomaly(z=5, recent=60, history=1800, min_wait=1))
    assert q.check_alerts() == []  # no history: not judged
    for i in range(180):  # half an hour of waits between 0.1 and 0.3 s
        waited(q, clock, 0.1 + 0.1 * (i % 3), n=2)
        clock.advance(10_000 - (100 + 100 * (i % 3)))
    clock.advance(TICK)
    assert q.check_alerts() == []
    for _ in range(6):  # then a minute of 4 s waits
        waited(q, clock, 4, n=2)
        clock.advance(6_000)
    fired = q.check_alerts()
    assert fired is not None and [t.alert for t in fired] == ["stuck"]
    assert "usually" in fired[0].detail and fired[0].value > 5
