"""Argument checks shared by the API: each raises InvalidArgument naming the argument."""

from __future__ import annotations

import math
from typing import Any

from .errors import InvalidArgument

#: The largest integer the store keeps (SQLite INTEGER is a signed 64-bit value).
INT64_MAX = 2**63 - 1
#: The longest delay or timeout accepted: a century, so every time fits in epoch ms.
SECONDS_MAX = 100 * 365.25 * 86400


def integer(name: str, value: Any, lo: int, hi: int) -> int:
    """An int (not a bool) within lo..=hi."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name} must be an int, got {value!r}")
    if not lo <= value <= hi:
        raise InvalidArgument(f"{name} {value} is outside the range {lo}..={hi}")
    return value


def seconds(name: str, value: Any, *, positive: bool = False) -> float:
    """A finite, non-negative (or positive) number of seconds, at most a century."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgument(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0 or (positive and value == 0) or value > SECONDS_MAX:
        bound = "> 0" if positive else ">= 0"
        raise InvalidArgument(f"{name} must be a finite number of seconds {bound} (at most a century), got {value!r}")
    return float(value)


def optional_seconds(name: str, value: Any, *, positive: bool = False) -> float | None:
    return None if value is None else seconds(name, value, positive=positive)


def text(name: str, value: Any) -> str:
    """A str the store can keep: valid Unicode, so it encodes to UTF-8 (a lone surrogate such
    as ``"\\ud800"``, e.g. from ``os.fsdecode`` of non-UTF-8 bytes, does not)."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a str, got {value!r}")
    if not value.isascii():  # the common case costs no encoding
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidArgument(
                f"{name} {value!r} is not valid Unicode: it holds the lone surrogate "
                f"{value[e.start]!r} at index {e.start}"
            ) from None
    return value


def optional_text(name: str, value: Any) -> str | None:
    return None if value is None else text(name, value)
