"""Alerts (``Queue.alert``): rules on the stored metrics, events and registrations,
evaluated by the workers once across processes, fired and resolved as events.

A rule is one of the classes below, each with its threshold and window; ``for_`` seconds is
how long its condition must hold before the alert fires (``alert_fired``) and it resolves
(``alert_resolved``) as soon as the condition no longer holds. Evaluation: every
``EVALUATE_EVERY`` seconds one worker of the queue takes the ``alerts`` turn (a store-level
compare-and-set: see ``Store::take_turn``), evaluates every alert this process declared
against the file, and saves their state and events in one transaction; the callback or
webhook is told after that commit, so once per transition whichever worker evaluated.

- thresholds: ``WaitP95``, ``ErrorRate``, ``DeadTasks``, ``BacklogGrowth``, ``NoWorker``,
  ``CircuitOpen``;
- anomaly: ``ArrivalAnomaly``: the last interval's arrivals against the forecast made
  without it (``Queue.forecast``), as a z-score of its band; ``WaitAnomaly``: recent p95
  waits as a robust z-score (median, MAD) of the hour before;
- predictive: ``ForecastOverCapacity``: the forecast's peak rate within the horizon above
  what the live workers can run (their threads / the mean run time).
"""

from __future__ import annotations

import json
import logging
import math
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Protocol, Union

from . import _checks, _core
from .errors import InvalidArgument, StorageError
from .forecast import forecast as _forecast
from .info import from_ms

if TYPE_CHECKING:
    from .queue import Queue

__all__ = [
    "Alert",
    "AlertState",
    "ArrivalAnomaly",
    "BacklogGrowth",
    "CircuitOpen",
    "DeadTasks",
    "ErrorRate",
    "ForecastOverCapacity",
    "NoWorker",
    "Rule",
    "Transition",
    "WaitAnomaly",
    "WaitP95",
    "check_alerts",
    "WEBHOOK_TASK",
]

log = logging.getLogger("ferroq.alerts")

#: Seconds between evaluations (a worker's maintenance thread; one turn per period).
EVALUATE_EVERY = 10.0
DUTY = "alerts"
#: The task that posts an alert to a webhook (registered by ``Queue.alert(webhook=...)``).
WEBHOOK_TASK = "ferroq.alert_webhook"


class Rule(Protocol):
    """A condition: ``check`` returns (holds, the measured value, what was measured)."""

    def check(self, view: View) -> tuple[bool, float, str]: ...


@dataclass
class View:
    """What one evaluation reads, each once."""

    q: Queue
    group: str | None
    now_ms: int

    def metrics(self, window: float) -> list[Any]:
        by_group = self.q.metrics(window=window)
        return [m for g, m in by_group.items() if self.group is None or g == self.group]


def _window(value: float) -> float:
    return _checks.seconds("window", value, positive=True)


def _limit(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InvalidArgument(f"{name} must be a non-negative number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class WaitP95:
    """The p95 wait (due to claimed) over ``window`` seconds above ``above`` seconds."""

    above: float
    window: float = 300.0

    def __post_init__(self) -> None:
        _limit("above", self.above), _window(self.window)

    def check(self, view: View) -> tuple[bool, float, str]:
        p95 = max((m.wait.p95 for m in view.metrics(self.window) if m.wait.count), default=0.0)
        return p95 > self.above, p95, f"p95 wait {p95:.3f} s over {self.window:g} s (limit {self.above:g} s)"


@dataclass(frozen=True)
class ErrorRate:
    """Failed runs over finished runs in ``window`` above ``above`` (0..1), once at least
    ``min_runs`` finished."""

    above: float
    window: float = 300.0
    min_runs: int = 10

    def __post_init__(self) -> None:
        _limit("above", self.above), _window(self.window)
        _checks.integer("min_runs", self.min_runs, 1, 10**9)

    def check(self, view: View) -> tuple[bool, float, str]:
        ms = view.metrics(self.window)
        failed = sum(m.failed for m in ms)
        finished = failed + sum(m.completed for m in ms)
        rate = failed / finished if finished else 0.0
        return (
            finished >= self.min_runs and rate > self.above,
            rate,
            f"error rate {rate:.1%} of {finished} runs over {self.window:g} s (limit {self.above:.1%})",
        )


@dataclass(frozen=True)
class DeadTasks:
    """At least ``at_least`` tasks went dead within ``window`` seconds."""

    at_least: int = 1
    window: float = 3600.0

    def __post_init__(self) -> None:
        _checks.integer("at_least", self.at_least, 1, 10**9), _window(self.window)

    def check(self, view: View) -> tuple[bool, float, str]:
        dead = sum(m.dead for m in view.metrics(self.window))
        return dead >= self.at_least, float(dead), f"{dead} dead over {self.window:g} s (limit {self.at_least})"


@dataclass(frozen=True)
class BacklogGrowth:
    """The backlog grew by more than ``per_minute`` tasks a minute over ``window`` seconds
    (enqueued minus started, from the metrics)."""

    per_minute: float
    window: float = 300.0

    def __post_init__(self) -> None:
        _limit("per_minute", self.per_minute), _window(self.window)

    def check(self, view: View) -> tuple[bool, float, str]:
        ms = view.metrics(self.window)
        growth = (sum(m.enqueued for m in ms) - sum(m.started for m in ms)) / (self.window / 60)
        return (
            growth > self.per_minute,
            growth,
            f"backlog growing {growth:.1f}/min over {self.window:g} s (limit {self.per_minute:g}/min)",
        )


@dataclass(frozen=True)
class NoWorker:
    """No worker alive on the queue."""

    def check(self, view: View) -> tuple[bool, float, str]:
        alive = sum(1 for w in view.q.workers() if w.alive)
        return alive == 0, float(alive), f"{alive} worker(s) alive"


@dataclass(frozen=True)
class CircuitOpen:
    """The group's circuit (every group's, without ``group=``) open for longer than
    ``longer_than`` seconds."""

    longer_than: float

    def __post_init__(self) -> None:
        _limit("longer_than", self.longer_than)

    def check(self, view: View) -> tuple[bool, float, str]:
        states = view.q.groups() if view.group is None else [view.q.group(view.group).state()]
        open_ = {s.name for s in states if s.circuit == "open"}
        if not open_:
            return False, 0.0, "no circuit open"
        opened = {e.group: e.at for e in view.q.latest_events(200, kinds=["circuit_opened"]) if e.group in open_}
        now = from_ms(view.now_ms)
        assert now is not None
        longest, name = max(((now - at).total_seconds(), g) for g, at in opened.items()) if opened else (0.0, "")
        return (
            longest > self.longer_than,
            longest,
            f"circuit of {name!r} open {longest:.0f} s (limit {self.longer_than:g} s)",
        )


@dataclass(frozen=True)
class ArrivalAnomaly:
    """The last complete ``interval``'s arrivals outside the forecast band made without it:
    ``|actual - expected| / sigma > z`` (sigma from the band's half width / 1.96)."""

    z: float = 4.0
    interval: float = 60.0

    def __post_init__(self) -> None:
        _limit("z", self.z)

    def check(self, view: View) -> tuple[bool, float, str]:
        q, step = view.q, int(self.interval * 1000)
        start = view.now_ms - view.now_ms % step - step  # the last complete interval
        f = _forecast(
            q._store,
            q.name,
            view.group,
            horizon=self.interval,
            interval=self.interval,
            now_ms=start,
            raw_keep_ms=int(q.observability.metrics_raw_age * 1000),
        )
        if f.method == "none":
            return False, 0.0, "no history to judge arrivals by"
        point = f.points[0]
        rows = q._store.metric_series(q.name, view.group, "enqueued", 10_000, start)
        actual = sum(v for s, v in rows if s < start + step)
        sigma = max((point.high - point.expected) / 1.96, math.sqrt(max(point.expected, 1.0)))
        z = (actual - point.expected) / sigma
        return (
            abs(z) > self.z,
            z,
            f"{actual:.0f} arrivals in {self.interval:g} s, forecast {point.expected:.0f} "
            f"[{point.low:.0f}, {point.high:.0f}]: z {z:+.1f} (limit {self.z:g})",
        )


@dataclass(frozen=True)
class WaitAnomaly:
    """Waits far above their usual: the median of the p95 waits of the last ``recent``
    seconds' 10-second intervals, as a robust z-score against those of the ``history``
    seconds before (``(x - median) / (1.4826 MAD)``) above ``z``, and above ``min_wait``
    seconds (3 ms after 1 ms is not worth waking anyone for)."""

    z: float = 5.0
    recent: float = 300.0
    history: float = 3600.0
    min_wait: float = 1.0

    def __post_init__(self) -> None:
        _limit("z", self.z), _window(self.recent), _window(self.history), _limit("min_wait", self.min_wait)

    def check(self, view: View) -> tuple[bool, float, str]:
        q = view.q
        split = view.now_ms - int(self.recent * 1000)
        rows = q._store.metric_histograms(q.name, view.group, "wait", 10_000, split - int(self.history * 1000))
        before = [summary[4] / 1e6 for start, summary in rows if start < split and summary[0]]
        recent = [summary[4] / 1e6 for start, summary in rows if start >= split and summary[0]]
        if len(before) < 10 or not recent:
            return False, 0.0, f"{len(before)} intervals of wait history, {len(recent)} recent: not judged"
        middle = _median(before)
        spread = max(1.4826 * _median([abs(x - middle) for x in before]), 0.001 + 0.05 * middle)
        now = _median(recent)
        z = (now - middle) / spread
        return (
            z > self.z and now > self.min_wait,
            z,
            f"p95 wait {now:.3f} s lately against {middle:.3f} s usually: z {z:+.1f} (limit {self.z:g})",
        )


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


@dataclass(frozen=True)
class ForecastOverCapacity:
    """The forecast's peak arrival rate within ``horizon`` seconds above what the live
    workers can run: their threads / the mean run time over the last ``window`` seconds."""

    horizon: float = 600.0
    window: float = 900.0

    def __post_init__(self) -> None:
        _window(self.horizon), _window(self.window)

    def check(self, view: View) -> tuple[bool, float, str]:
        ms = view.metrics(self.window)
        runs = sum(m.run.count for m in ms)
        if not runs:
            return False, 0.0, "no run time measured: capacity unknown"
        run_time = max(sum(m.run.mean * m.run.count for m in ms) / runs, 1e-6)
        threads = sum(w.concurrency for w in view.q.workers() if w.alive)
        capacity = threads / run_time
        f = view.q.forecast(view.group, horizon=max(60.0, round(self.horizon / 60) * 60), interval=60)
        peak = f.peak_rate
        return (
            peak > capacity,
            peak,
            f"forecast peak {peak:.2f}/s within {self.horizon:g} s, capacity {capacity:.2f}/s "
            f"({threads} threads / run {run_time * 1000:.0f} ms)",
        )


RULES = (
    WaitP95,
    ErrorRate,
    DeadTasks,
    BacklogGrowth,
    NoWorker,
    CircuitOpen,
    ArrivalAnomaly,
    WaitAnomaly,
    ForecastOverCapacity,
)


@dataclass(frozen=True)
class Transition:
    """An alert that fired or resolved in an evaluation."""

    alert: str
    kind: str  # "alert_fired" or "alert_resolved"
    group: str | None
    value: float
    detail: str
    at: datetime


Notify = Callable[[Transition], Any]


@dataclass(frozen=True)
class Alert:
    """A declared alert (``Queue.alert``)."""

    name: str
    when: Rule
    for_: float
    group: str | None
    notify: Notify | None
    webhook: str | None


@dataclass(frozen=True)
class AlertState:
    """An alert as its latest event left it (``Queue.alerts()``, ``ferroq alerts``)."""

    name: str
    firing: bool
    group: str | None
    since: datetime
    detail: str


def make_alert(name: str, when: Any, for_: Any, group: str | None, notify: Any, webhook: Any) -> Alert:
    _core.check_name("alert", _checks.text("alert name", name))
    if not isinstance(when, RULES):
        names = ", ".join(r.__name__ for r in RULES)
        raise InvalidArgument(f"when must be an alert rule (ferroq.alerts: {names}), got {when!r}")
    for_ = _checks.seconds("for_", for_)
    if group is not None:
        _core.check_name("resource group", _checks.text("group", group))
    if notify is not None and not callable(notify):
        raise InvalidArgument(f"notify must be callable, got {notify!r}")
    if webhook is not None and not (isinstance(webhook, str) and webhook.startswith(("http://", "https://"))):
        raise InvalidArgument(f"webhook must be an http(s) URL, got {webhook!r}")
    return Alert(name, when, for_, group, notify, webhook)


def check_alerts(q: Queue, alerts: dict[str, Alert], *, every: float | None = None) -> list[Transition] | None:
    """One evaluation if this process gets the turn (None if another's is recent): fires
    and resolves, saves the state and events, then tells the callbacks and webhooks."""
    store = q._store
    every = EVALUATE_EVERY if every is None else every
    turn = store.take_turn(q.name, DUTY, max(1, int(every * 1000) - 500))  # slack: a worker ticks every `every`
    if turn is None:
        return None
    fence, saved = turn
    state: dict[str, dict[str, Any]] = json.loads(saved)
    now = store.now_ms()
    happened = [t for a in alerts.values() if (t := _step(q, a, state, now)) is not None]
    rows: list[tuple[str | None, str, str]] = [
        (t.group, t.kind, json.dumps({"alert": t.alert, "value": t.value, "detail": t.detail})) for t in happened
    ]
    if not store.end_turn(q.name, DUTY, fence, json.dumps(state), rows):
        return None  # a later turn was taken meanwhile: it decides
    for t in happened:
        _deliver(q, alerts[t.alert], t)
    return happened


def _step(q: Queue, a: Alert, state: dict[str, dict[str, Any]], now: int) -> Transition | None:
    s = state.setdefault(a.name, {"pending_since": None, "firing": False})
    try:
        holds, value, detail = a.when.check(View(q, a.group, now))
    except (StorageError, InvalidArgument) as e:
        log.warning("alert %r could not be evaluated: %s", a.name, e)
        return None
    at = from_ms(now)
    assert at is not None
    if not holds:
        s["pending_since"] = None
        if s["firing"]:
            s["firing"] = False
            return Transition(a.name, "alert_resolved", a.group, value, detail, at)
        return None
    if s["pending_since"] is None:
        s["pending_since"] = now
    if not s["firing"] and now - s["pending_since"] >= a.for_ * 1000:
        s["firing"] = True
        return Transition(a.name, "alert_fired", a.group, value, detail, at)
    return None


def _deliver(q: Queue, a: Alert, t: Transition) -> None:
    if a.notify is not None:
        try:
            a.notify(t)
        except Exception:
            log.exception("alert %r: notify callback failed", a.name)
    if a.webhook is not None:
        body = {
            "alert": t.alert,
            "event": t.kind,
            "group": t.group,
            "value": t.value,
            "detail": t.detail,
            "at": t.at.isoformat(),
            "queue": q.name,
        }
        try:
            q._tasks[WEBHOOK_TASK].enqueue(a.webhook, body)
        except Exception:
            log.exception("alert %r: could not enqueue its webhook", a.name)


def post_webhook(url: str, body: dict[str, Any]) -> None:
    """The webhook task: POSTs ``body`` as JSON; a failure (or a non-2xx answer) raises,
    so the task is retried with backoff."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "ferroq-alerts"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        if not 200 <= response.status < 300:
            raise RuntimeError(f"webhook {url} answered {response.status}")


def states(q: Queue) -> list[AlertState]:
    """Each alert's latest fired or resolved event: firing ones first, then by name."""
    latest: dict[str, Any] = {}
    for e in q.latest_events(1000, kinds=["alert_fired", "alert_resolved"]):
        latest[e.detail.get("alert", "?")] = e
    out = [
        AlertState(name, e.kind == "alert_fired", e.group, e.at, str(e.detail.get("detail", "")))
        for name, e in latest.items()
    ]
    return sorted(out, key=lambda s: (not s.firing, s.name))


AnyRule = Union[
    WaitP95,
    ErrorRate,
    DeadTasks,
    BacklogGrowth,
    NoWorker,
    CircuitOpen,
    ArrivalAnomaly,
    WaitAnomaly,
    ForecastOverCapacity,
]
