"""The issue-17 benchmark scripts on short runs, so they never rot (`make test` runs this
file). Nothing here asserts speed; the soak asserts that memory and descriptors stay flat."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cache_script_runs(tmp_path: Path) -> None:
    f = load("cache").measure(calls=20, directory=str(tmp_path))
    assert f.calls == 20 and f.run_p50_ms > 0 and f.hit_p50_ms > 0


def test_routing_script_runs(tmp_path: Path) -> None:
    """A short run (long tasks of 50 ms): the routed scenario sends the long task to the slow
    lane, so every short task still runs and is measured."""
    routing = load("routing")
    for routed in (False, True):
        w = routing.scenario(str(tmp_path), routed, seconds=0.5, rate=60, concurrency=4, lane=2, long_s=0.05)
        assert w.short > 0 and w.p95_ms >= 0


def test_soak_memory_stays_flat(tmp_path: Path) -> None:
    """A short soak (10 simulated hours of 2,000 tasks): the worker's RSS and open
    descriptors after the 3-hour warm-up stay within 16 MiB and 2 descriptors of where the
    warm-up left them (a leak of a descriptor per hour, or of 2 KB per task, fails)."""
    soak = load("soak_memory")
    samples = soak.soak(str(tmp_path), hours=10, per_hour=2000, report=False)
    rss, fds = soak.growth(samples, warmup=3)
    assert rss <= 16.0 and fds <= 2, samples


def test_profiler_overhead_script_runs(tmp_path: Path) -> None:
    rates = load("profiler_overhead").measure(tasks=300, work_us=0, rounds=1, directory=str(tmp_path))
    assert set(rates) == {False, "time", True} and all(r > 0 for r in rates.values())


def test_bulk_cancel_script_runs(tmp_path: Path) -> None:
    f = load("bulk_cancel").measure(tasks=50, directory=str(tmp_path))
    assert f.tasks == 50 and f.one_by_one_per_s > 0 and f.cancel_pending_per_s > 0
