"""Alerts evaluated by real worker processes: each transition is recorded and told once,
however many workers evaluate (the alerts duty's turn in the file)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import ferroq
from ferroq._core import NewTask
from procs import Procs, procs, wait_until  # noqa: F401

pytestmark = pytest.mark.slow

APP = """
from ferroq.alerts import DeadTasks
from ferroq.worker import maintenance
import ferroq.alerts

db, told, name = sys.argv[1], sys.argv[2], sys.argv[3]
maintenance.ALERTS_EVERY = 0.05    # each worker tries often...
maintenance.METRICS_INTERVAL = 0.05
ferroq.alerts.EVALUATE_EVERY = 0.5  # ...one turn per half second across them

q = ferroq.Queue(db)

@q.task(name="broken", max_attempts=1)
def broken():
    raise ValueError("no")

def tell(t):
    with open(told, "a") as f:
        f.write(f"{name} {t.kind}\\n")

q.alert("dead", when=DeadTasks(at_least=1, window=600), notify=tell)
ferroq.Worker(q, name=name).run()
"""


def test_three_workers_fire_an_alert_once(tmp_path: Path, procs: Procs) -> None:
    db, told = tmp_path / "q.db", tmp_path / "told"
    q = ferroq.Queue(db)
    script = procs.script("app", APP)
    workers = [procs.start(script, db, told, f"w{i}", label=f"w{i}") for i in range(3)]
    wait_until(lambda: sum(w.alive for w in q.workers()) == 3, 30, "three workers", children=workers)
    q._store.enqueue(q.name, [NewTask("broken", "default", b'{"args": [], "kwargs": {}}', 0, None, 1, None)])
    wait_until(lambda: told.exists(), 30, "the alert to fire", children=workers)
    time.sleep(2.0)  # four more turns: every worker had its chance to fire it again
    lines = told.read_text().split()
    assert lines[1::2] == ["alert_fired"], lines
    fired = [e for e in q.events() if e.kind == "alert_fired"]
    assert len(fired) == 1
    for w in workers:
        w.send(15)
    for w in workers:
        w.wait(30)
