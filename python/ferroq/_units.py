"""Durations as people read them: the one formatter behind every duration ferroq prints
(CLI tables, health details, log lines)."""

from __future__ import annotations

import math

__all__ = ["duration"]

_UNITS = (("d", 86_400.0), ("h", 3_600.0), ("m", 60.0), ("s", 1.0))


def duration(seconds: float) -> str:
    """``0.12`` -> ``120ms``, ``5.64`` -> ``5.6s``, ``90`` -> ``1.5m``, ``8_640_000`` ->
    ``100d``: the largest unit that keeps the number at least 1, at most 3 significant
    digits, never an exponent."""
    if math.isnan(seconds) or math.isinf(seconds):
        return str(seconds)
    sign, seconds = ("-", -seconds) if seconds < 0 else ("", seconds)
    for unit, size in _UNITS:
        if seconds >= size:
            return sign + _number(seconds / size) + unit
    ms = seconds * 1000
    return sign + ("0s" if ms == 0 else _number(ms) + "ms")


def _number(value: float) -> str:
    """At most one decimal, none from 10 up (``5.6``, ``12``, ``100``); ``.0`` dropped."""
    text = f"{value:.1f}" if value < 10 else f"{value:,.0f}"
    return text[:-2] if text.endswith(".0") else text
