"""``Worker(autoscale=...)``: the decision (Little's law, bounds, caps) as a pure function,
and a real worker growing under a backlog, shrinking when idle, never beyond its bounds."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import ferroq
from ferroq._core import NewTask
from ferroq.errors import InvalidArgument
from ferroq.worker.autoscale import Autoscale, Load, decide
from procs import Procs, procs, wait_until  # noqa: F401

CFG = Autoscale(min=2, max=20, drain=30, headroom=1.25)


def load(**kw: object) -> Load:
    base: dict[str, object] = dict(rate=0.0, forecast_rate=None, run_time=0.2, backlog=0, workers=1, cap=None)
    base.update(kw)
    return Load(**base)  # type: ignore[arg-type]


def test_littles_law_sizes_for_the_arrivals() -> None:
    # 40/s x 0.2 s = 8 running on average, x 1.25 headroom = 10.
    d = decide(load(rate=40.0), 2, CFG)
    assert d.wanted == 10
    assert "arrivals 40.00/s" in d.reason and "200 ms" in d.reason


def test_it_sizes_ahead_for_a_higher_forecast() -> None:
    d = decide(load(rate=10.0, forecast_rate=40.0), 3, CFG)
    assert d.wanted == 10 and "forecast 40.00/s" in d.reason


def test_a_backlog_adds_threads_to_clear_it_within_the_drain_time() -> None:
    # 300 waiting x 0.2 s / 30 s = 2 more threads.
    assert decide(load(rate=40.0, backlog=300), 2, CFG).wanted == 12


def test_other_workers_take_their_share() -> None:
    assert decide(load(rate=40.0, workers=2), 2, CFG).wanted == 5


def test_bounds_and_group_caps_hold() -> None:
    assert decide(load(rate=1000.0), 2, CFG).wanted == 20
    assert "bounded to [2, 20]" in decide(load(rate=1000.0), 2, CFG).reason
    assert decide(load(rate=1000.0, cap=6), 2, CFG).wanted == 6
    # A rate limit of 20/s lets 20 x 0.2 s x 1.25 = 5 threads be busy.
    limited = decide(load(rate=1000.0, rate_limit=20.0), 2, CFG)
    assert limited.wanted == 5 and "rate limits 20/s allow 5" in limited.reason
    assert decide(load(rate=0.0), 9, CFG).wanted == 2
    assert decide(load(rate=0.1), 9, CFG).wanted == 2


def test_without_a_run_time_it_doubles_under_a_backlog_and_holds_otherwise() -> None:
    assert decide(load(run_time=None, backlog=50), 3, CFG).wanted == 6
    assert decide(load(run_time=None, rate=5.0), 3, CFG).wanted == 3


@pytest.mark.parametrize(
    "kwargs", [{"min": 0}, {"min": 5, "max": 4}, {"every": 0}, {"headroom": 0.5}, {"headroom": True}, {"drain": -1}]
)
def test_bad_settings_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        Autoscale(**kwargs)  # type: ignore[arg-type]


def test_parse_and_type_checks(tmp_path: Path) -> None:
    assert Autoscale.parse("2:16") == Autoscale(min=2, max=16)
    assert Autoscale.parse("8") == Autoscale(min=1, max=8)
    for bad in ("a:b", "4:2", ":"):
        with pytest.raises(InvalidArgument):
            Autoscale.parse(bad)
    q = ferroq.Queue(tmp_path / "q.db")
    with pytest.raises(InvalidArgument):
        ferroq.Worker(q, autoscale=(1, 4))  # type: ignore[arg-type]


def runner_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("ferroq-run-"))


def wait_for(what: str, cond: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_worker_grows_under_a_backlog_and_shrinks_when_idle(tmp_path: Path) -> None:
    q = ferroq.Queue(tmp_path / "q.db", durability="normal")
    release = threading.Event()
    lock, running = threading.Lock(), [0]

    @q.task
    def slow() -> None:
        with lock:
            running[0] += 1
        release.wait(30)
        with lock:
            running[0] -= 1

    scaling = Autoscale(min=1, max=6, every=0.05, cooldown=0.2)
    w = ferroq.Worker(q, autoscale=scaling, handle_signals=False, lease=5)
    assert w.concurrency == 1
    q.enqueue_many(slow.call() for _ in range(200))
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    most = 0

    def grown() -> bool:
        nonlocal most
        most = max(most, runner_threads())
        return w.concurrency == 6 and running[0] == 6

    wait_for("the worker to grow to its max under the backlog", grown)
    release.set()
    wait_for("the queue to drain", lambda: q.counts()["completed"] == 200)
    wait_for("the worker to shrink to its min when idle", lambda: w.concurrency == 1 and runner_threads() == 1)
    w.stop()
    t.join(30)
    assert most <= 6 and running[0] == 0
    changes = [e for e in q.events() if e.kind == "concurrency_changed"]
    assert changes[0].detail["from"] == 1 and changes[0].detail["to"] == 2
    assert "backlog" in changes[0].detail["reason"]
    assert all(1 <= e.detail["to"] <= 6 for e in changes)
    assert changes[-1].detail["to"] == 1 and "backlog" in changes[-1].detail["reason"]
    assert changes[-1].detail["worker"] == w.id


def test_a_growing_backlog_and_a_slower_measured_thread_time_add_threads() -> None:
    # Arrivals the flushed metrics do not show yet: the backlog grew by 20/s.
    assert decide(load(rate=40.0, growth=20.0), 2, CFG).wanted == 14
    # Busy threads took 0.4 s per task (overheads included), not the 0.2 s run time.
    d = decide(load(rate=40.0, service_time=0.4), 2, CFG)
    assert d.wanted == 20 and "thread time 400 ms" in d.reason


POOL_WORKER = """
import multiprocessing, threading
from ferroq.worker.autoscale import Autoscale

db, gate = sys.argv[1], sys.argv[2]
q = ferroq.Queue(db, durability="normal")

@q.task(name="wait_for_gate")
def wait_for_gate():
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)

if __name__ == "__main__":
    w = ferroq.Worker(q, pool="process", autoscale=Autoscale(min=1, max=4, every=0.05, cooldown=0.2), lease=5)

    done = threading.Event()

    def report():
        while not done.wait(0.05):
            emit({"concurrency": w.concurrency, "children": len(multiprocessing.active_children())})

    reporter = threading.Thread(target=report)
    reporter.start()
    w.run()
    done.set()
    reporter.join()
    emit({"stopped": True, "children": len(multiprocessing.active_children())})
"""


@pytest.mark.slow
def test_a_process_pool_grows_and_shrinks_its_children(tmp_path: Path, procs: Procs) -> None:
    db, gate = tmp_path / "q.db", tmp_path / "go"
    q = ferroq.Queue(db, durability="normal")
    gated = NewTask("wait_for_gate", "default", b'{"args": [], "kwargs": {}}', 0, None, 3, None)
    q._store.enqueue(q.name, [gated] * 40)
    worker = procs.start(procs.script("pool_worker", POOL_WORKER), db, gate)

    def seen(concurrency: int, children: int) -> bool:
        return any(r.get("concurrency") == concurrency and r["children"] == children for r in worker.records())

    wait_until(lambda: seen(4, 4), 60, "four children under the backlog", children=[worker])
    gate.touch()
    wait_until(lambda: q.counts()["completed"] == 40, 60, "the queue to drain", children=[worker])
    n = len(worker.records())
    wait_until(
        lambda: any(r.get("concurrency") == 1 and r["children"] == 1 for r in worker.records()[n:]),
        60,
        "one child left when idle",
        children=[worker],
    )
    worker.send(15)
    worker.check(30)
    assert worker.last() == {"stopped": True, "children": 0}
    assert max(r["children"] for r in worker.records()) <= 4
