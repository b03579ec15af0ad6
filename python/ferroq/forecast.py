"""Arrival forecasts from the stored metrics (``Queue.forecast``): explainable, numpy-free.

The model, in three parts, each said in ``Forecast.explanation``:

1. **Season** from the hourly rows (kept 30 days): a daily (24 hourly factors) or weekly
   (168) multiplicative profile by classical decomposition (each hour over its centred
   moving average, averaged per hour of the season), interpolated between hour centres.
   A season is a candidate once the history holds two full seasons plus a day; the
   candidate (or none) with the lowest error forecasting the last day hour by hour, from a
   profile of the days before it, is chosen.
2. **Level and trend** from the raw 10-second rows (kept a day), summed per ``interval``
   and divided by the season: Holt's damped trend, its smoothing constants chosen by the
   least one-step error over that history.
3. **Band**: the spread of the errors the fitted model made over the history at the same
   number of steps ahead (up to ``MAX_BAND_STEPS``; beyond, widened as exponential
   smoothing's variance grows), times the season; 95% (±1.96σ), never below zero.

With less than a few intervals of raw history the level comes from the hourly rows; with
nothing recorded the forecast is zero and says so (``method="none"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Sequence

from . import _checks
from .errors import InvalidArgument

if TYPE_CHECKING:
    from ._core import Store

__all__ = ["Forecast", "ForecastPoint", "forecast"]

RAW_MS = 10_000
HOUR_MS = 3_600_000
#: Candidate seasons, in hours.
SEASONS = {"daily": 24, "weekly": 168}
#: How far back the hourly rows are read (their default retention is 30 days).
HOURLY_LOOKBACK_MS = 35 * 24 * HOUR_MS
#: Fewer raw intervals than this: the level comes from the hourly rows.
MIN_RAW_POINTS = 6
#: Smoothing constants tried (level, trend) and the trend's damping.
ALPHAS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8)
BETAS = (0.0, 0.02, 0.1)
PHI = 0.95
#: Steps ahead whose errors over the history are measured for the band.
MAX_BAND_STEPS = 60
Z95 = 1.96
#: A season factor below this is taken as this (a quiet hour must not blow up the level).
MIN_FACTOR = 0.05


@dataclass(frozen=True)
class ForecastPoint:
    """Predicted arrivals in ``[start, start + interval)``, with a 95% prediction interval."""

    start: datetime
    expected: float
    low: float
    high: float


@dataclass(frozen=True)
class Forecast:
    """Predicted arrivals per ``interval`` seconds over the next ``horizon`` seconds."""

    group: str | None
    interval: float
    horizon: float
    #: "seasonal", "holt" (no season found), "hourly" (level from hourly rows), "none".
    method: str
    #: The season used: "daily", "weekly" or None.
    season: str | None
    #: How it was made, in words (history, season chosen and why, smoothing constants).
    explanation: str
    points: tuple[ForecastPoint, ...]

    @property
    def total(self) -> float:
        """Expected arrivals over the whole horizon."""
        return sum(p.expected for p in self.points)

    @property
    def peak_rate(self) -> float:
        """The highest expected arrival rate over the horizon, per second."""
        return max((p.expected for p in self.points), default=0.0) / self.interval


# -- the season -------------------------------------------------------------------------


def _centred_average(values: Sequence[float], period: int) -> list[float | None]:
    """The 2xP centred moving average (classical decomposition), None where it is short."""
    n, half = len(values), period // 2
    out: list[float | None] = [None] * n
    if n <= period:
        return out
    prefix = [0.0]
    for v in values:
        prefix.append(prefix[-1] + v)
    for t in range(half, n - half):
        if period % 2:
            out[t] = (prefix[t + half + 1] - prefix[t - half]) / period
        elif t + half < n:
            inner = prefix[t + half] - prefix[t - half + 1]
            out[t] = (inner + (values[t - half] + values[t + half]) / 2) / period
    return out


def season_profile(values: Sequence[float], first_hour: int, period: int) -> list[float]:
    """Multiplicative factors per hour of the season (mean 1); slot k is hours with
    ``(first_hour + t) % period == k``. A slot without data gets 1."""
    trend = _centred_average(values, period)
    sums, counts = [0.0] * period, [0] * period
    for t, (v, m) in enumerate(zip(values, trend)):
        if m:
            k = (first_hour + t) % period
            sums[k] += v / m
            counts[k] += 1
    raw = [s / c if c else 1.0 for s, c in zip(sums, counts)]
    mean = sum(raw) / period
    return [r / mean for r in raw] if mean > 0 else [1.0] * period


def factor_at(profile: Sequence[float] | None, t_ms: float) -> float:
    """The season's factor at epoch ms ``t_ms``, linear between hour centres."""
    if not profile:
        return 1.0
    period = len(profile)
    u = (t_ms - HOUR_MS / 2) / HOUR_MS
    k = math.floor(u)
    frac = u - k
    f = profile[k % period] * (1 - frac) + profile[(k + 1) % period] * frac
    return max(f, MIN_FACTOR)


# -- level and trend --------------------------------------------------------------------


@dataclass(frozen=True)
class Holt:
    """Holt's damped trend fitted to a deseasonalised series."""

    alpha: float
    beta: float
    level: float
    trend: float
    #: Standard deviation of the one-step errors.
    sigma: float

    def ahead(self, steps: int) -> float:
        damped = sum(PHI**i for i in range(1, steps + 1))
        return max(self.level + self.trend * damped, 0.0)


def _run_holt(values: Sequence[float], alpha: float, beta: float) -> Holt:
    start = values[: min(len(values), 10)]
    level, trend = sum(start) / len(start), 0.0
    sq, n = 0.0, 0
    for v in values:
        predicted = level + PHI * trend
        sq += (v - predicted) ** 2
        n += 1
        new_level = alpha * v + (1 - alpha) * predicted
        trend = beta * (new_level - level) + (1 - beta) * PHI * trend
        level = new_level
    return Holt(alpha, beta, level, trend, math.sqrt(sq / n) if n else 0.0)


def step_errors(values: Sequence[float], holt: Holt, steps: int) -> list[float]:
    """The root mean square error of ``holt``'s forecasts 1..``steps`` ahead over ``values``
    (replayed from the start with its smoothing constants)."""
    start = values[: min(len(values), 10)]
    level, trend = sum(start) / len(start), 0.0
    sq, n = [0.0] * steps, [0] * steps
    for t, v in enumerate(values):
        damped = 0.0
        for h in range(min(steps, len(values) - t - 1)):
            damped += PHI ** (h + 1)
            sq[h] += (values[t + h + 1] - max(level + trend * damped, 0.0)) ** 2
            n[h] += 1
        new_level = holt.alpha * v + (1 - holt.alpha) * (level + PHI * trend)
        trend = holt.beta * (new_level - level) + (1 - holt.beta) * PHI * trend
        level = new_level
    out = [math.sqrt(sq[h] / n[h]) if n[h] else holt.sigma for h in range(steps)]
    return [max(e, holt.sigma) for e in out]


def fit_holt(values: Sequence[float]) -> Holt:
    """The smoothing constants with the least one-step error over ``values``."""
    fits = (_run_holt(values, a, b) for a in ALPHAS for b in BETAS)
    return min(fits, key=lambda h: h.sigma)


# -- choosing the season ----------------------------------------------------------------


def _backtest(hours: Sequence[float], first_hour: int, period: int | None) -> float:
    """WMAPE of hour-ahead forecasts over the last day, from a profile of the days before."""
    train, test = hours[:-24], hours[-24:]
    profile = season_profile(train, first_hour, period) if period else None

    def factor(t: int) -> float:
        return factor_at(profile, (first_hour + t) * HOUR_MS + HOUR_MS / 2)

    deseasoned = [v / factor(t) for t, v in enumerate(train)]
    level = fit_holt(deseasoned[-7 * 24 :]).level
    alpha, err = 0.3, 0.0
    for i, actual in enumerate(test):
        f = factor(len(train) + i)
        err += abs(actual - level * f)
        level = alpha * actual / f + (1 - alpha) * level
    total = sum(test)
    return err / total if total else 0.0


def choose_season(hours: Sequence[float], first_hour: int) -> tuple[str | None, str]:
    """The season with the least backtest error (or none), and why, in words."""
    candidates = {name: p for name, p in SEASONS.items() if len(hours) >= 2 * p + 24}
    if not candidates:
        days = len(hours) / 24
        return None, f"{days:.1f} days of hourly history: a daily season needs 3"
    errors: dict[str | None, float] = {None: _backtest(hours, first_hour, None)}
    errors.update({name: _backtest(hours, first_hour, p) for name, p in candidates.items()})
    best = min(errors, key=lambda k: errors[k])
    said = ", ".join(f"{k or 'none'} {v:.2f}" for k, v in errors.items())
    return best, f"error forecasting the last day hour by hour (WMAPE): {said}"


# -- the forecast -----------------------------------------------------------------------


def _hourly(store: Store, queue: str, group: str | None, now: int) -> tuple[list[float], int]:
    """Complete hours from the first with arrivals on, zero-filled; and the first's index."""
    rows = [
        (s, v)
        for s, v in store.metric_series(queue, group, "enqueued", HOUR_MS, now - HOURLY_LOOKBACK_MS)
        if s + HOUR_MS <= now
    ]
    return _filled(rows, HOUR_MS, now)


def _raw(
    store: Store, queue: str, group: str | None, now: int, interval_ms: int, keep_ms: int
) -> tuple[list[float], int]:
    """Complete intervals of ``interval_ms`` from the raw rows, summed, zero-filled."""
    by_interval: dict[int, float] = {}
    for s, v in store.metric_series(queue, group, "enqueued", RAW_MS, now - keep_ms):
        key = s - s % interval_ms
        if key + interval_ms <= now:
            by_interval[key] = by_interval.get(key, 0.0) + v
    return _filled(sorted(by_interval.items()), interval_ms, now)


def _filled(rows: Sequence[tuple[int, float]], step: int, now: int) -> tuple[list[float], int]:
    """Steps from the first row to the last complete one before ``now``: a quiet spell
    since the last arrival is zeros, not a gap."""
    if not rows:
        return [], 0
    first, last = rows[0][0] // step, now // step - 1
    values = [0.0] * (last - first + 1)
    for s, v in rows:
        values[s // step - first] = v
    return values, first


def forecast(
    store: Store, queue: str, group: str | None, *, horizon: float, interval: float, now_ms: int, raw_keep_ms: int
) -> Forecast:
    """See ``Queue.forecast``."""
    interval_ms = _interval_ms(interval)
    horizon = _checks.seconds("horizon", horizon, positive=True)
    if not interval <= horizon <= 7 * 86_400:
        raise InvalidArgument(f"horizon must be between the interval and 7 days, in seconds, got {horizon!r}")
    hours, first_hour = _hourly(store, queue, group, now_ms)
    season, why = choose_season(hours, first_hour)
    profile = season_profile(hours, first_hour, SEASONS[season]) if season else None
    raw, first_interval = _raw(store, queue, group, now_ms, interval_ms, raw_keep_ms)
    steps = max(1, round(horizon * 1000 / interval_ms))
    start = -(-now_ms // interval_ms) * interval_ms  # the next interval boundary
    if len(raw) >= MIN_RAW_POINTS:
        last_seen = (first_interval + len(raw) - 1) * interval_ms
        series, step_ms, scale = raw, interval_ms, 1.0
        first = first_interval * interval_ms
        method = "seasonal" if season else "holt"
    elif hours:
        last_seen = (first_hour + len(hours) - 1) * HOUR_MS
        series, step_ms, scale = hours, HOUR_MS, interval_ms / HOUR_MS
        first = first_hour * HOUR_MS
        method = "hourly"
    else:
        points = tuple(ForecastPoint(_at(start + i * interval_ms), 0.0, 0.0, 0.0) for i in range(steps))
        return Forecast(group, interval, horizon, "none", None, "no arrivals recorded yet: forecasting none", points)
    deseasoned = [v / factor_at(profile, first + i * step_ms + step_ms / 2) for i, v in enumerate(series)]
    holt = fit_holt(deseasoned)
    last_ahead = max(1, math.ceil((start + (steps - 1) * interval_ms - last_seen) / step_ms))
    measured = step_errors(deseasoned, holt, min(last_ahead, MAX_BAND_STEPS))
    out = []
    for i in range(steps):
        at = start + i * interval_ms
        ahead = max(1, math.ceil((at - last_seen) / step_ms))
        f = factor_at(profile, at + interval_ms / 2)
        expected = holt.ahead(ahead) * f * scale
        half = Z95 * _spread(holt, measured, ahead) * f * scale
        out.append(ForecastPoint(_at(at), expected, max(expected - half, 0.0), expected + half))
    explanation = (
        f"season: {season or 'none'} ({why}); level: Holt damped trend (alpha {holt.alpha}, "
        f"beta {holt.beta}, phi {PHI}) over {len(series)} intervals of {step_ms // 1000:g} s"
    )
    return Forecast(group, interval, horizon, method, season, explanation, tuple(out))


def _spread(holt: Holt, measured: Sequence[float], ahead: int) -> float:
    """The error's spread ``ahead`` steps ahead: as measured, or grown from the last measured."""
    if ahead <= len(measured):
        return measured[ahead - 1]
    k = len(measured)
    return measured[-1] * math.sqrt((1 + (ahead - 1) * holt.alpha**2) / (1 + (k - 1) * holt.alpha**2))


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def _interval_ms(interval: float) -> int:
    number = isinstance(interval, (int, float)) and not isinstance(interval, bool)
    ok = number and math.isfinite(interval) and 10 <= interval <= 86_400
    ms = round(interval * 1000) if ok else 0
    if not ok or ms % RAW_MS:
        raise InvalidArgument(f"interval must be a multiple of 10 seconds up to a day, got {interval!r}")
    return ms
