"""Autoscaling a worker's concurrency (``Worker(autoscale=ferroq.Autoscale(min, max))``):
its runner threads, and with ``pool="process"`` their child processes (a new runner starts
its child; a runner that leaves stops its child).

Every ``every`` seconds the maintenance thread decides how many runner threads the worker
needs, by Little's law (tasks running = arrival rate x run time):

    needed = (headroom x rate + growth) x run_time / workers  +  backlog x run_time / drain / workers

- ``rate``: the highest of the arrival rates of the last minute and of its last 20 seconds
  (quick to rise, slow to fall) and the forecast's peak over the next ``lead`` seconds
  (``Queue.forecast``): it grows *ahead* of a predicted rise;
- ``run_time``: the mean run time of the last five minutes (metrics table), or, while a
  backlog waits (every thread busy), the thread time each finished task took here
  (threads x seconds / tasks finished: claims, commits and the GIL included), if longer;
- ``backlog``: pending tasks of the served groups (delayed ones too) and the tasks claimed
  into this worker's buffer, to be cleared within ``drain`` seconds;
- ``growth``: how fast the backlog grew since the last decision (arrivals the metrics,
  flushed every 10 s, do not show yet);
- ``workers``: live workers on the queue (each takes its share).

Clamped to ``[min, max]``, to the sum of the served groups' running caps when every one
has a cap, and to what their rate limits let start (headroom x rate x run time) when every
one has a rate: threads beyond those could only wait. It grows at once and shrinks only after
wanting less for ``cooldown`` seconds, by half at most each time, so it does not flap. Each change is an event
``concurrency_changed`` (``worker``, ``from``, ``to``, ``reason``) and a log line.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import _checks
from ..errors import InvalidArgument, StorageError

if TYPE_CHECKING:
    from .coordinator import Worker

log = logging.getLogger("ferroq.worker")

__all__ = ["Autoscale", "Decision", "Load", "decide"]


@dataclass(frozen=True)
class Autoscale:
    """How a worker's concurrency may move (see ``ferroq.worker.autoscale``)."""

    min: int = 1
    max: int = 32
    #: Seconds between decisions.
    every: float = 5.0
    #: How far ahead the forecast is read (seconds).
    lead: float = 60.0
    #: A backlog is to be cleared within this many seconds.
    drain: float = 10.0
    #: Capacity over the load needed (1.25: threads busy 80% of the time).
    headroom: float = 1.25
    #: Shrink only after wanting less for this many seconds.
    cooldown: float = 30.0

    def __post_init__(self) -> None:
        _checks.integer("min", self.min, 1, 10_000)
        _checks.integer("max", self.max, self.min, 10_000)
        for name in ("every", "lead", "drain", "cooldown"):
            _checks.seconds(name, getattr(self, name), positive=name != "cooldown")
        headroom = self.headroom
        if isinstance(headroom, bool) or not isinstance(headroom, (int, float)) or not 1 <= headroom <= 10:
            raise InvalidArgument(f"headroom must be a number from 1 to 10, got {headroom!r}")

    @classmethod
    def parse(cls, text: str) -> Autoscale:
        """``"1:32"`` (the CLI's ``--autoscale``)."""
        lo, sep, hi = text.partition(":")
        try:
            return cls(min=int(lo), max=int(hi)) if sep else cls(min=1, max=int(lo))
        except ValueError:
            raise InvalidArgument(f"autoscale must be MIN:MAX (e.g. 1:32), got {text!r}") from None


@dataclass(frozen=True)
class Load:
    """What a decision is made from."""

    #: Arrivals per second: the higher of the last minute's and its last 20 seconds'.
    rate: float
    #: The forecast's peak arrival rate over the lead, per second (None: no forecast).
    forecast_rate: float | None
    #: Mean run time in seconds (None: nothing ran lately).
    run_time: float | None
    #: Pending tasks of the served groups.
    backlog: int
    #: Live workers on the queue (this one included).
    workers: int
    #: Sum of the served groups' running caps (None: some group has none).
    cap: int | None
    #: While saturated: thread-seconds per task finished here since the last decision.
    service_time: float | None = None
    #: Tasks per second the backlog grew by since the last decision (0 if it shrank).
    growth: float = 0.0
    #: Sum of the served groups' rate limits, per second (None: some group has none).
    rate_limit: float | None = None


@dataclass(frozen=True)
class Decision:
    wanted: int
    reason: str


def decide(load: Load, current: int, cfg: Autoscale) -> Decision:
    """The concurrency ``load`` needs, and why, in words."""
    workers = max(1, load.workers)
    rate = max(load.rate, load.forecast_rate or 0.0)
    which = "forecast" if (load.forecast_rate or 0.0) > load.rate else "arrivals"
    if load.backlog == 0 and rate == 0:
        wanted, reason = cfg.min, "no backlog, no arrivals lately or forecast"
    elif load.run_time is None:
        # No run time measured yet: double while a backlog waits, else hold.
        wanted = current * 2 if load.backlog else current
        reason = f"backlog {load.backlog}, no run time measured yet" if load.backlog else "no run time measured yet"
    else:
        per_task, what = load.run_time, "run"
        if load.service_time is not None and load.service_time > per_task:
            per_task, what = load.service_time, "thread time"
        steady = (cfg.headroom * rate + load.growth) * per_task / workers
        catch_up = load.backlog * per_task / cfg.drain / workers
        wanted = math.ceil(steady + catch_up)
        growing = f" + backlog growth {load.growth:.2f}/s" if load.growth else ""
        reason = (
            f"({which} {rate:.2f}/s x {cfg.headroom:g}{growing}) x {what} {per_task * 1000:.0f} ms / "
            f"{workers} worker(s) = {steady:.1f}; backlog {load.backlog} over {cfg.drain:g} s = {catch_up:.1f}"
        )
    if load.cap is not None and wanted > load.cap:
        wanted, reason = load.cap, f"{reason}; groups' running caps {load.cap}"
    if load.rate_limit is not None and load.run_time is not None:
        allowed = max(1, math.ceil(cfg.headroom * load.rate_limit * max(load.run_time, load.service_time or 0.0)))
        if wanted > allowed:
            wanted, reason = allowed, f"{reason}; groups' rate limits {load.rate_limit:g}/s allow {allowed}"
    bounded = min(cfg.max, max(cfg.min, wanted))
    if bounded != wanted:
        reason = f"{reason}; bounded to [{cfg.min}, {cfg.max}]"
    return Decision(bounded, reason)


class Autoscaler:
    """Measures the load, decides, and resizes the worker (from its maintenance thread)."""

    def __init__(self, worker: Worker, cfg: Autoscale) -> None:
        self.worker = worker
        self.cfg = cfg
        self.next_at = 0.0
        #: Since when a smaller concurrency has been wanted (None: not wanted).
        self.lower_since: float | None = None
        self._forecast_at = 0.0
        self._forecast_rate: float | None = None
        #: At the last decision: (monotonic time, tasks finished here, backlog).
        self._last: tuple[float, int, int] | None = None

    def tick(self, now: float) -> None:
        if now < self.next_at:
            return
        self.next_at = now + self.cfg.every
        try:
            load = self.measure(now)
        except StorageError as e:
            log.warning("autoscale: could not read the load, keeping %d: %s", self.worker.concurrency, e)
            return
        self.apply(decide(load, self.worker.concurrency, self.cfg), now)

    def apply(self, d: Decision, now: float) -> None:
        w = self.worker
        current = w.concurrency
        if d.wanted == current:
            self.lower_since = None
            return
        if d.wanted < current:
            if self.lower_since is None:
                self.lower_since = now
            if now - self.lower_since < self.cfg.cooldown:
                return
        self.lower_since = None
        if d.wanted < current // 2:  # a lull after a burst is often short: halve at most
            d = Decision(max(d.wanted, current // 2, self.cfg.min), f"{d.reason}; down by half at most")
        w._resize(d.wanted)
        log.info("worker %s: concurrency %d -> %d (%s)", w.id, current, d.wanted, d.reason)
        detail = json.dumps({"worker": w.id, "from": current, "to": d.wanted, "reason": d.reason})
        try:
            w.queue._engine.record_events(w.queue.name, [(None, "concurrency_changed", detail)])
        except StorageError as e:
            log.warning("autoscale: could not record the change: %s", e)

    def measure(self, now: float) -> Load:
        w = self.worker
        q, store = w.queue, w.queue._engine
        groups = list(w.groups) if w.groups is not None else None
        served: list[str | None] = list(groups) if groups is not None else [None]
        now_ms = store.now_ms()
        rows = [r for g in served for r in store.metric_series(q.name, g, "enqueued", 10_000, now_ms - 60_000)]
        minute = sum(v for _, v in rows) / 60
        # The last two intervals (the newest may be partly flushed).
        recent = sum(v for start, v in rows if start >= now_ms - now_ms % 10_000 - 10_000) / 20
        metrics = q.metrics(window=300)
        ran = [m.run for g, m in metrics.items() if groups is None or g in groups]
        runs = sum(r.count for r in ran)
        run_time = sum(r.mean * r.count for r in ran) / runs if runs else None
        states = q.groups() if groups is None else [q.group(g).state() for g in groups]
        # Claimed into this worker's buffer but not started: waiting as much as pending ones.
        backlog = (sum(s.pending for s in states) if states else q.counts()["pending"]) + len(w._ready)
        caps = [s.concurrency_limit for s in states]
        cap = sum(c for c in caps if c is not None) if states and all(c is not None for c in caps) else None
        rates = [s.rate for s in states]
        rate_limit = sum(r for r in rates if r is not None) if states and all(r is not None for r in rates) else None
        alive = sum(1 for x in q.workers() if x.alive) or 1
        service, growth = self.since_last(now, backlog)
        return Load(
            max(minute, recent),
            self.forecast_rate(now, served),
            run_time,
            backlog,
            alive,
            cap,
            service,
            growth,
            rate_limit,
        )

    def since_last(self, now: float, backlog: int) -> tuple[float | None, float]:
        """Since the last decision: thread-seconds per task finished here when a backlog
        waited at both (every thread busy: Little's law on this worker), and how fast the
        backlog grew."""
        st = self.worker.stats
        finished = st.completed + st.retried + st.dead
        last, self._last = self._last, (now, finished, backlog)
        if last is None or now <= last[0]:
            return None, 0.0
        growth = max(0.0, (backlog - last[2]) / (now - last[0]))
        if not (backlog and last[2]) or finished <= last[1]:
            return None, growth
        return self.worker.concurrency * (now - last[0]) / (finished - last[1]), growth

    def forecast_rate(self, now: float, served: list[str | None]) -> float | None:
        """The forecast's peak rate over the lead (refreshed every minute: it is a fit)."""
        if now - self._forecast_at < 60 and self._forecast_at:
            return self._forecast_rate
        self._forecast_at = now
        q = self.worker.queue
        lead = max(10.0, round(self.cfg.lead / 10) * 10)
        interval = 60.0 if lead >= 60 else 10.0  # a minute's fit is 6 times cheaper
        try:
            fs = [q.forecast(g, horizon=lead, interval=interval) for g in served]
        except (StorageError, InvalidArgument) as e:
            log.warning("autoscale: no forecast: %s", e)
            self._forecast_rate = None
        else:
            useful = [f for f in fs if f.method != "none"]
            self._forecast_rate = sum(f.peak_rate for f in useful) if useful else None
        return self._forecast_rate
