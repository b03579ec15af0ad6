"""Prometheus exposition (prometheus-client), in base units.

Per process, as Prometheus expects: ``ferroq_tasks_total{queue,group,status}`` counts what
this process did since it started (enqueued, started, completed, retried, dead, cancelled),
and ``ferroq_task_wait_seconds`` / ``ferroq_task_run_seconds`` are histograms of the same
runs; scrape every worker and sum. Read from the file at scrape time, so any process shows
them: ``ferroq_queue_depth{queue,status}``, and per resource group ``ferroq_group_running``,
``ferroq_circuit_state{state}`` (1 for the current state) and ``ferroq_group_concurrency_limit``.

    from prometheus_client import REGISTRY, start_http_server
    ferroq.prometheus.register(q)        # or REGISTRY.register(FerroqCollector(q))
    start_http_server(9464)              # or mount make_asgi_app(q) / make_wsgi_app(q)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client import CollectorRegistry, make_asgi_app as _asgi, make_wsgi_app as _wsgi
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

from .errors import StorageError

if TYPE_CHECKING:
    from .queue import Queue

__all__ = ["FerroqCollector", "register", "make_asgi_app", "make_wsgi_app", "BUCKETS"]

#: Histogram bucket bounds in seconds (the HDR histograms behind them are finer).
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_CIRCUIT_STATES = ("closed", "open", "half_open")


class FerroqCollector(Collector):
    """Collects ferroq's metrics for one queue at scrape time."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def collect(self) -> Iterator[Metric]:
        store, name = self.queue._engine, self.queue.name
        tasks = CounterMetricFamily(
            "ferroq_tasks", "Tasks by what happened to them, by this process.", labels=["queue", "group", "status"]
        )
        wait = HistogramMetricFamily(
            "ferroq_task_wait_seconds", "From when a task was due until a worker claimed it.", labels=["queue", "group"]
        )
        run = HistogramMetricFamily("ferroq_task_run_seconds", "How long processors ran.", labels=["queue", "group"])
        cache = CounterMetricFamily(
            "ferroq_cache_lookups",
            "Enqueues of cached tasks by this process: hit (no new run) or miss.",
            labels=["queue", "group", "result"],
        )
        for queue, group, counts, wait_b, run_b in store.metrics_totals([int(b * 1e6) for b in BUCKETS]):
            for status, n in counts.items():
                if status.startswith("cache_"):
                    cache.add_metric([queue, group, status.removeprefix("cache_").removesuffix("s")], n)
                else:
                    tasks.add_metric([queue, group, status], n)
            for family, (count, sum_us, cumulative) in ((wait, wait_b), (run, run_b)):
                buckets: list[tuple[str, float]] = [(_le(b), c) for b, c in zip(BUCKETS, cumulative)]
                buckets.append(("+Inf", count))
                family.add_metric([queue, group], buckets, sum_us / 1e6)
        yield tasks
        yield cache
        yield wait
        yield run
        try:
            yield from self._from_file(name)
        except StorageError:
            return  # an unreadable file shows as missing gauges; the counters above still serve

    def _from_file(self, name: str) -> Iterator[Metric]:
        depth = GaugeMetricFamily("ferroq_queue_depth", "Tasks in the queue by status.", labels=["queue", "status"])
        for status, n in self.queue.counts().items():
            depth.add_metric([name, status], n)
        yield depth
        running = GaugeMetricFamily(
            "ferroq_group_running", "Running tasks of a resource group.", labels=["queue", "group"]
        )
        circuit = GaugeMetricFamily(
            "ferroq_circuit_state", "1 for the circuit breaker's current state.", labels=["queue", "group", "state"]
        )
        limit = GaugeMetricFamily(
            "ferroq_group_concurrency_limit",
            "The running cap now (adaptive throttles move it).",
            labels=["queue", "group"],
        )
        for g in self.queue.groups():
            running.add_metric([name, g.name], g.running)
            for state in _CIRCUIT_STATES:
                circuit.add_metric([name, g.name, state], 1.0 if g.circuit == state else 0.0)
            if g.concurrency_limit is not None:
                limit.add_metric([name, g.name], g.concurrency_limit)
        yield running
        yield circuit
        yield limit


def register(queue: Queue, registry: CollectorRegistry = REGISTRY) -> FerroqCollector:
    """Registers a collector for ``queue`` (default: prometheus-client's global registry)."""
    collector = FerroqCollector(queue)
    registry.register(collector)
    return collector


def make_asgi_app(queue: Queue) -> Any:
    """An ASGI app serving ``queue``'s metrics (mount it in Starlette/FastAPI)."""
    registry = CollectorRegistry()
    registry.register(FerroqCollector(queue))
    return _asgi(registry)


def make_wsgi_app(queue: Queue) -> Any:
    """A WSGI app serving ``queue``'s metrics."""
    registry = CollectorRegistry()
    registry.register(FerroqCollector(queue))
    return _wsgi(registry)


def _le(bound: float) -> str:
    return repr(float(bound))
