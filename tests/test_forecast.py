"""``Queue.forecast`` and ``ferroq forecast``: arrivals replayed on a manual clock, read back
from the metrics table (accuracy itself is measured by benches/forecast_accuracy.py)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import ferroq
from ferroq._core import NewTask
from ferroq.cli import main
from ferroq.errors import InvalidArgument
from ferroq.testing import ManualClock

pytestmark = pytest.mark.both_engines  # every test runs on SQLite and PostgreSQL

DAY_MS = 86_400_000
#: A UTC midnight.
START = 1_699_920_000_000


def open_queue(location: Path | str) -> tuple[ferroq.Queue, ManualClock]:
    clock = ManualClock(START)
    return ferroq.Queue(location, durability="normal", clock=clock), clock


def arrive(q: ferroq.Queue, clock: ManualClock, per_step: list[int], step_ms: int, group: str = "default") -> None:
    """``per_step[i]`` arrivals in step i, flushed as a worker would, then the clock moves on."""
    for n in per_step:
        if n:
            q._store.enqueue(q.name, [NewTask("t", group, b"[]", 0, None, 1, None)] * n)
        q._store.flush_metrics()
        clock.advance(step_ms)


def daily_shape(hour: float) -> float:
    return 1 + 0.8 * math.sin(2 * math.pi * hour / 24)


def test_no_history_forecasts_nothing_and_says_so(queue_location: Path | str) -> None:
    q, _ = open_queue(queue_location)
    f = q.forecast(horizon=600, interval=60)
    assert f.method == "none" and f.season is None
    assert len(f.points) == 10 and f.total == 0
    assert "no arrivals" in f.explanation


def test_a_short_steady_history_gives_its_rate_without_a_season(queue_location: Path | str) -> None:
    q, clock = open_queue(queue_location)
    arrive(q, clock, [20] * 360, 10_000)  # an hour at 2/s
    f = q.forecast(horizon=600, interval=60)
    assert f.method == "holt" and f.season is None
    assert "daily season needs 3" in f.explanation
    for p in f.points:
        assert p.expected == pytest.approx(120, rel=0.05)
        assert p.low <= p.expected <= p.high
    assert f.peak_rate == pytest.approx(2, rel=0.05)


def test_a_daily_cycle_is_found_and_followed(queue_location: Path | str) -> None:
    q, clock = open_queue(queue_location)
    # Three days hour by hour (the hourly rows), then the last day minute by minute.
    arrive(q, clock, [round(3600 * daily_shape(h + 0.5)) for h in range(72)], 3_600_000)
    arrive(q, clock, [round(60 * daily_shape((m + 0.5) / 60)) for m in range(18 * 60)], 60_000)
    # Now 18:00 of day 4: the next three hours climb out of the evening trough.
    f = q.forecast(horizon=3 * 3600, interval=600)
    assert f.method == "seasonal" and f.season == "daily"
    assert "daily" in f.explanation and "none" in f.explanation
    for i, p in enumerate(f.points):
        # Within 15% of the true 10-minute count (hourly factors, interpolated).
        assert p.expected == pytest.approx(600 * daily_shape(18 + (i + 0.5) / 6), rel=0.15), (i, p)


def test_a_group_forecast_counts_only_that_group(queue_location: Path | str) -> None:
    q, clock = open_queue(queue_location)
    arrive(q, clock, [10] * 60, 10_000, group="a")
    arrive(q, clock, [0] * 6, 10_000)
    for _ in range(60):
        arrive(q, clock, [3], 0, group="b")
        arrive(q, clock, [0], 10_000)
    assert q.forecast("b", horizon=60, interval=60).points[0].expected == pytest.approx(18, rel=0.1)
    assert q.forecast("a", horizon=60, interval=60).total < 5  # a stopped


@pytest.mark.parametrize(
    "kwargs",
    [
        {"interval": 15},
        {"interval": 0},
        {"interval": True},
        {"interval": float("nan")},
        {"horizon": 30, "interval": 60},
        {"horizon": -1},
        {"horizon": 30 * 86_400},
        {"horizon": "soon"},
    ],
)
def test_bad_arguments_are_refused_clearly(queue_location: Path | str, kwargs: dict[str, object]) -> None:
    q, _ = open_queue(queue_location)
    with pytest.raises(InvalidArgument):
        q.forecast(**kwargs)  # type: ignore[arg-type]


def test_a_bad_group_name_is_refused(queue_location: Path | str) -> None:
    q, _ = open_queue(queue_location)
    with pytest.raises(InvalidArgument):
        q.forecast("")


def test_cli_forecast_prints_a_table_and_json(queue_location: Path | str) -> None:
    # Twenty minutes of history ending now: the CLI reads the real clock.
    clock = ManualClock(int(time.time() * 1000) - 1_200_000)
    q = ferroq.Queue(queue_location, durability="normal", clock=clock)
    arrive(q, clock, [5] * 120, 10_000)
    q.close()
    db = str(queue_location)
    table = CliRunner().invoke(main, ["--db", db, "forecast", "--horizon", "5m"])
    assert table.exit_code == 0, table.output
    assert "expected" in table.output and "holt" in table.output
    out = CliRunner().invoke(main, ["--db", db, "forecast", "--horizon", "5m", "-o", "json"])
    data = json.loads(out.output)
    assert data["method"] == "holt" and len(data["points"]) == 5
    assert data["total"] == pytest.approx(150, rel=0.1)
    bad = CliRunner().invoke(main, ["--db", db, "forecast", "--interval", "15s"])
    assert bad.exit_code != 0 and "multiple of 10" in bad.output and "Traceback" not in bad.output


def test_the_band_is_as_wide_as_the_errors_the_model_made(queue_location: Path | str) -> None:
    import random

    rng = random.Random(5)
    q, clock = open_queue(queue_location)
    # Two hours at 2/s, counted as Poisson (normal approximation): sd sqrt(120) a minute.
    arrive(q, clock, [max(0, round(rng.gauss(20, math.sqrt(20)))) for _ in range(720)], 10_000)
    first = q.forecast(horizon=60, interval=60).points[0]
    half = (first.high - first.low) / 2
    assert half == pytest.approx(1.96 * math.sqrt(120), rel=0.3)
