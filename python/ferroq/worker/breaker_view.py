"""A worker's in-process view of its resource groups' circuit breakers.

The breaker itself lives in the file (``rust/policy/breaker.rs``): the completer writes
outcomes in batches, so the file hears of a failure only when its batch is flushed, and a
worker trusting only the file kept starting a down group's tasks meanwhile (about twice its
concurrency in calls). This view hears of each counted failure as its run ends, from the
thread that ran it, and holds the group here at once when this process alone has seen
``failure_threshold`` of them within the window, so at most ``failure_threshold +
concurrency - 1`` calls reach a down upstream from one process. The file stays the one
durable, cross-process breaker: after each flush with failures the completer reads its
verdict (``learned``) and the view follows it.

A held group starts nothing here: until the file's verdict while it waits for one, then until
the file's open time is up (after that the claim decides again: half-open lets its probes
through). The no-failure path reads one dict's truth value per task, without a lock.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from typing import Callable, Iterable

__all__ = ["BreakerView", "HOLD_WITHOUT_END"]

#: A circuit opened by hand with no end: hold here this long, then ask the claim again.
HOLD_WITHOUT_END = 1.0


class BreakerView:
    """Counted failures per group in this process, and the groups it holds."""

    def __init__(self, declared: Callable[[str], tuple[int, float] | None]) -> None:
        #: group -> time.monotonic() until which no task of the group starts here; inf while
        #: waiting for the file's verdict. Read without the lock: empty unless a group failed.
        self.held: dict[str, float] = {}
        #: Groups just held here whose claimed but unstarted tasks are still to give back.
        self.tripped: deque[str] = deque()
        self._declared = declared  # settings declared in this process, until the file says
        self._settings: dict[str, tuple[int, float] | None] = {}  # as the file last said
        self._failures: dict[str, deque[float]] = {}  # counted failure times, in the window
        self._unflushed: Counter[str] = Counter()  # counted failures not written yet
        self._lock = threading.Lock()

    def holds(self, group: str) -> bool:
        """Whether a task of ``group`` must not start here now."""
        until = self.held.get(group)
        if until is None:
            return False
        if time.monotonic() < until:
            return True
        with self._lock:  # the file's open time is up: the claim decides again
            if self.held.get(group) == until:
                del self.held[group]
        return False

    def awaiting_file(self) -> bool:
        """Whether a group is held here until the file's verdict on its failures."""
        with self._lock:
            return math.inf in self.held.values()

    def failed(self, group: str) -> None:
        """A run of ``group`` just ended with a failure that counts toward its breaker."""
        settings = self._settings[group] if group in self._settings else self._declared(group)
        now = time.monotonic()
        with self._lock:
            self._unflushed[group] += 1
            if settings is None or group in self.held:
                return  # no breaker; or runs that started before the hold, as in the file
            threshold, window = settings
            times = self._failures.setdefault(group, deque())
            while times and times[0] <= now - window:
                times.popleft()
            times.append(now)
            if len(times) >= threshold:
                times.clear()
                self.held[group] = math.inf
                self.tripped.append(group)

    def flushed(self, groups: Iterable[str]) -> None:
        """The completer wrote these counted failures (one group name per failure)."""
        with self._lock:
            self._unflushed.subtract(groups)

    def learned(self, group: str, state: str, open_for_ms: int | None, settings: tuple[int, int] | None) -> bool:
        """The file's circuit of ``group`` after a flush with its failures: ``state``, ms it
        stays open, its (threshold, window ms). True if it is open (give back its tasks)."""
        with self._lock:
            self._settings[group] = None if settings is None else (settings[0], settings[1] / 1000)
            if state == "open":
                hold = HOLD_WITHOUT_END if open_for_ms is None else open_for_ms / 1000
                self.held[group] = time.monotonic() + hold
                self._failures.pop(group, None)  # the file forgot them too
                return True
            if self._unflushed[group] <= 0:
                # Every failure seen here is in the file and it is not open (other settings,
                # closed by hand, half-open): the file decides.
                del self._unflushed[group]
                self.held.pop(group, None)
            return False

    def unknown(self, group: str) -> None:
        """The file's circuit could not be read: a hold waiting for it ends soon, and the
        claim decides."""
        with self._lock:
            if self.held.get(group) == math.inf:
                self.held[group] = time.monotonic() + HOLD_WITHOUT_END
