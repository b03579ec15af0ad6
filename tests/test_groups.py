"""Resource groups in one process: breaker, failure classes, pause, throttle, aging, events.
The cross-process guarantees are in test_groups_processes.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import ferroq
from workers import WAIT, BackgroundWorker

pytestmark = pytest.mark.both_engines  # every test with a queue runs on SQLite and PostgreSQL

NO_BACKOFF = ferroq.RetryPolicy(base_delay=0, max_delay=0, jitter=0)


def run_until_idle(q: ferroq.Queue, **kwargs: object) -> ferroq.WorkerStats:
    return ferroq.Worker(q, handle_signals=False, concurrency=1, prefetch=0, **kwargs).run(until_idle=True)


def wait_until(condition, timeout: float = WAIT) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ferroq.CircuitBreaker(failure_threshold=0),
        lambda: ferroq.CircuitBreaker(window=0),
        lambda: ferroq.CircuitBreaker(open_for=-1),
        lambda: ferroq.CircuitBreaker(open_for=10, max_open_for=5),
        lambda: ferroq.CircuitBreaker(half_open_probes=0),
        lambda: ferroq.CircuitBreaker(counts=(ValueError, "x")),  # type: ignore[arg-type]
        lambda: ferroq.Throttle(),
        lambda: ferroq.Throttle(rate=0),
        lambda: ferroq.Throttle(rate=float("nan")),
        lambda: ferroq.Throttle(rate=True),
        lambda: ferroq.Throttle(rate=5, burst=0.5),
        lambda: ferroq.Throttle(max_concurrency=3, burst=2),
        lambda: ferroq.Throttle(max_concurrency=0),
        lambda: ferroq.Throttle(rate=5, adaptive=True),
        lambda: ferroq.Throttle(max_concurrency=4, adaptive=True, min_concurrency=5),
        lambda: ferroq.Throttle(max_concurrency=4, error_rate=1.0),
        lambda: ferroq.PriorityAging(every=0),
        lambda: ferroq.PriorityAging(step=0),
        lambda: ferroq.PriorityAging(max_priority=10**6),
        lambda: ferroq.RateLimited(-1),
    ],
)
def test_bad_settings_are_refused(make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ferroq.InvalidArgument):
        make()


def test_bad_group_arguments_are_refused(queue: ferroq.Queue) -> None:
    with pytest.raises(ferroq.InvalidArgument):
        queue.group("")
    with pytest.raises(ferroq.InvalidArgument):
        queue.group("pay", breaker="yes")  # type: ignore[arg-type]
    with pytest.raises(ferroq.InvalidArgument):
        queue.group("pay", throttle=ferroq.CircuitBreaker())  # type: ignore[arg-type]
    with pytest.raises(ferroq.InvalidArgument):
        queue.circuit("pay").open(duration=-1)
    with pytest.raises(ferroq.InvalidArgument):
        queue.events(after=-1)
    with pytest.raises(ferroq.InvalidArgument):
        ferroq.Queue(queue.path, priority_aging=5)  # type: ignore[arg-type]
    with pytest.raises(ferroq.InvalidArgument):
        queue._store.circuit(queue.name, "pay", "explode")
    assert queue.groups() == [], "nothing was written"


def test_breaker_opens_holds_the_group_pending_and_a_probe_closes_it(queue: ferroq.Queue, tmp_path: Path) -> None:
    pay = queue.group("pay", breaker=ferroq.CircuitBreaker(failure_threshold=3, window=60, open_for=0.3))
    healthy = tmp_path / "healthy"
    runs: list[int] = []

    @queue.task(resource_group=pay, max_attempts=10, retry=NO_BACKOFF)
    def charge(n: int) -> int:
        runs.append(n)
        if not healthy.exists():
            raise ConnectionError("payments API down")
        return n

    @queue.task
    def other(n: int) -> int:
        return n

    handles = [charge.enqueue(i) for i in range(6)]
    others = [other.enqueue(i) for i in range(3)]
    run_until_idle(queue)
    assert pay.circuit.state == "open"
    assert len(runs) == 3, "claims stopped at the threshold"
    assert all(h.result(timeout=WAIT) == i for i, h in enumerate(others)), "other groups ran"
    state = pay.state()
    assert (state.pending, state.running) == (6, 0)
    assert sum(queue.get(h.id).attempts for h in handles) == 3, "held tasks keep their attempts"
    assert state.open_until is not None

    healthy.touch()
    time.sleep(0.35)
    assert pay.circuit.state == "half_open"
    stats = ferroq.Worker(queue, handle_signals=False, concurrency=2).run(until_empty=True)
    assert stats.completed == 6
    assert [h.result(timeout=WAIT) for h in handles] == list(range(6))
    assert pay.circuit.state == "closed"
    kinds = [(e.detail["from"], e.detail["to"]) for e in pay.circuit.transitions()]
    assert kinds == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    reasons = [e.detail["reason"] for e in pay.circuit.transitions()]
    assert "3 failures within 60s" in reasons[0] and "a probe succeeded" in reasons[2]


def test_which_failures_count_is_policy(queue: ferroq.Queue) -> None:
    only_infra = ferroq.CircuitBreaker(failure_threshold=1, counts=(ferroq.InfrastructureError,))
    db = queue.group("db", breaker=only_infra)
    errors = {
        "bug": ValueError("bug"),
        "input": ferroq.ValidationError("bad input"),
        "429": ferroq.RateLimited(0),
        "retry": ferroq.Retry(0),
        "down": ferroq.InfrastructureError("db down"),
    }
    seen: list[str] = []

    @queue.task(resource_group="db", max_attempts=1, retry=NO_BACKOFF)
    def query(kind: str) -> None:
        seen.append(kind)
        if kind == "429" and seen.count(kind) > 1:
            return  # a rate-limited run does not use up its attempt: it runs again
        raise errors[kind]

    handles = {kind: query.enqueue(kind) for kind in ["bug", "input", "429", "retry"]}
    run_until_idle(queue)
    assert db.circuit.state == "closed", seen
    query.enqueue("down")
    run_until_idle(queue)
    assert db.circuit.state == "open", "only the InfrastructureError counted"
    bad_input = handles["input"]
    assert queue.get(bad_input.id).status == "dead", "ValidationError fails fast"
    assert queue.get(bad_input.id).attempts == 1


def test_rate_limited_waits_keeps_its_attempt_and_holds_a_throttled_group(queue: ferroq.Queue) -> None:
    api = queue.group(
        "api", breaker=ferroq.CircuitBreaker(failure_threshold=1), throttle=ferroq.Throttle(max_concurrency=4)
    )
    calls: list[float] = []

    @queue.task(resource_group=api, max_attempts=1)
    def fetch() -> str:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise ferroq.RateLimited(0.3, "429 Too Many Requests")
        return "ok"

    first, second = fetch.enqueue(), fetch.enqueue()
    run_until_idle(queue)
    assert len(calls) == 1, "the group is held after the 429"
    info = queue.get(first.id)
    assert (info.status, info.attempts) == ("pending", 0), "max_attempts=1 and still pending"
    assert api.state().blocked_until is not None
    assert api.circuit.state == "closed"
    ferroq.Worker(queue, handle_signals=False).run(until_empty=True)
    assert first.result(timeout=WAIT) == second.result(timeout=WAIT) == "ok"
    assert calls[1] - calls[0] >= 0.29


def test_operators_open_and_close_a_circuit(queue: ferroq.Queue) -> None:
    @queue.task(resource_group="pay")
    def charge() -> str:
        return "charged"

    h = charge.enqueue()
    queue.circuit("pay").open(reason="provider maintenance")
    assert queue.circuit("pay").state == "open"
    run_until_idle(queue)
    assert queue.get(h.id).status == "pending"
    queue.circuit("pay").close(reason="maintenance over")
    run_until_idle(queue)
    assert h.result(timeout=WAIT) == "charged"
    reasons = [e.detail["reason"] for e in queue.circuit("pay").transitions()]
    assert reasons == ["operator: provider maintenance", "operator: maintenance over"]
    queue.circuit("pay").open(duration=60)
    queue.circuit("pay").reset()
    assert queue.group("pay").state().trips == 0


def test_pause_and_resume_groups_and_queues(queue: ferroq.Queue) -> None:
    @queue.task(resource_group="reports")
    def report(n: int) -> int:
        return n

    @queue.task
    def ping() -> str:
        return "pong"

    reports = queue.group("reports")
    assert reports.pause() and not reports.pause()
    r, p = report.enqueue(1), ping.enqueue()
    run_until_idle(queue)
    assert p.result(timeout=WAIT) == "pong"
    assert queue.get(r.id).status == "pending" and reports.paused
    assert queue.pause() and queue.paused
    p2 = ping.enqueue()
    reports.resume()
    run_until_idle(queue)
    assert queue.get(p2.id).status == "pending" and queue.get(r.id).status == "pending"
    with BackgroundWorker(queue):
        time.sleep(0.05)
        queue.resume()  # wakes the idle worker at once
        assert r.result(timeout=WAIT) == 1 and p2.result(timeout=WAIT) == "pong"
    kinds = [e.kind for e in queue.events()]
    assert kinds == ["group_paused", "queue_paused", "group_resumed", "queue_resumed"]
    tail = queue.events(after=queue.events()[1].id)
    assert [e.kind for e in tail] == kinds[2:]


class CountingStore:
    """The queue's store, counting the claims made through it."""

    def __init__(self, store: object) -> None:
        self._store = store
        self.claims = 0

    def claim(self, *args: object) -> object:
        self.claims += 1
        return self._store.claim(*args)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


def test_an_idle_worker_of_a_paused_queue_does_not_spin_on_a_due_task(queue: ferroq.Queue) -> None:
    # A delayed task that came due while the queue was paused made the idle worker claim
    # every millisecond (about 1,000 claims a second, 7% of a core) until resumed.
    @queue.task
    def ping() -> str:
        return "pong"

    handle = ping.using(delay=0.05).enqueue()
    queue.pause()
    time.sleep(0.1)
    counting = CountingStore(queue._store)
    queue._store = counting  # type: ignore[assignment]
    with BackgroundWorker(queue, poll_interval=0.5):
        time.sleep(1.0)
        assert counting.claims <= 10, f"{counting.claims} claims in a second while paused"
        queue.resume()
        assert handle.result(timeout=WAIT) == "pong"


def test_rate_limit_spaces_task_starts(queue: ferroq.Queue) -> None:
    queue.group("api", throttle=ferroq.Throttle(rate=20, burst=1))
    starts: list[float] = []

    @queue.task(resource_group="api")
    def call() -> None:
        starts.append(time.monotonic())

    for _ in range(8):
        call.enqueue()
    ferroq.Worker(queue, handle_signals=False, concurrency=4).run(until_empty=True)
    assert len(starts) == 8
    # 1 token at once, then one per 50 ms: 7 more need at least 350 ms.
    assert starts[-1] - starts[0] >= 0.34


def test_adaptive_throttle_cuts_the_cap_on_errors_and_shows_it(queue: ferroq.Queue) -> None:
    api = queue.group(
        "api", throttle=ferroq.Throttle(max_concurrency=8, adaptive=True, min_concurrency=2, error_rate=0.2, cooldown=0)
    )
    assert api.state().concurrency_limit == 8

    @queue.task(resource_group=api, max_attempts=1)
    def flaky() -> None:
        raise TimeoutError("upstream slow")

    for _ in range(6):
        flaky.enqueue()
    run_until_idle(queue)
    state = api.state()
    assert state.adaptive and state.concurrency_limit is not None and state.concurrency_limit < 8
    changes = [e for e in queue.events(group=api) if e.kind == "throttle_changed"]
    assert changes and changes[-1].detail["concurrency_limit"] == state.concurrency_limit


def test_priority_aging_lifts_a_waiting_task(queue_location: Path | str) -> None:
    q = ferroq.Queue(
        queue_location, durability="normal", priority_aging=ferroq.PriorityAging(every=0.05, step=1, max_priority=3)
    )

    @q.task(resource_group="slow", priority=-2)
    def low() -> str:
        return "done"

    h = low.enqueue()
    q.group("slow").pause()
    with BackgroundWorker(q):
        wait_until(lambda: q.get(h.id).priority == 3)
        q.group("slow").resume()
        assert h.result(timeout=WAIT) == "done"


def test_group_handles_and_listing(queue: ferroq.Queue) -> None:
    pay = queue.group("pay", throttle=ferroq.Throttle(rate=5, max_concurrency=2))
    assert queue.group("pay") is pay, "the declared handle"

    @queue.task
    def charge() -> None: ...

    charge.using(resource_group=pay).enqueue()
    charge.enqueue()
    states = {s.name: s for s in queue.groups()}
    assert set(states) == {"default", "pay"}
    assert (states["pay"].pending, states["pay"].rate, states["pay"].max_concurrency) == (1, 5.0, 2)
    assert states["pay"].tokens == 5.0 and states["pay"].circuit == "closed"
    # Settings can be replaced and removed; the other one is kept.
    queue.group("pay", breaker=ferroq.CircuitBreaker())
    assert queue.group("pay").state().has_breaker and queue.group("pay").state().rate == 5.0
    queue.group("pay", throttle=None)
    assert queue.group("pay").state().rate is None


def test_buffered_tasks_of_a_group_whose_circuit_opens_are_given_back(queue: ferroq.Queue) -> None:
    queue.group("pay", breaker=ferroq.CircuitBreaker(failure_threshold=2, open_for=60))
    runs: list[int] = []

    @queue.task(resource_group="pay", max_attempts=5, retry=ferroq.RetryPolicy(base_delay=60))
    def charge(n: int) -> None:
        runs.append(n)
        time.sleep(0.02)  # a call that times out: its failure is recorded while others wait
        raise ConnectionError("down")

    handles = [charge.enqueue(i) for i in range(20)]
    stats = ferroq.Worker(queue, handle_signals=False, concurrency=1, prefetch=20).run(until_idle=True)
    assert stats.claimed == 20, "all 20 were in the worker's buffer"
    assert len(runs) < 20 and stats.released == 20 - len(runs)
    assert queue.circuit("pay").state == "open"
    untouched = [queue.get(h.id) for h in handles if h.id not in {handles[i].id for i in runs}]
    assert untouched and all(t.status == "pending" and t.attempts == 0 for t in untouched)
