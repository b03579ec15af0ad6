"""SIGINT and SIGTERM: the first stops claiming and lets running tasks finish within the
shutdown grace; a second one stops at once, giving running tasks back."""

from __future__ import annotations

import itertools
import logging
import signal
import threading
from types import FrameType
from typing import Any, Callable

log = logging.getLogger("ferroq.worker")


class StopSignals:
    def __init__(
        self, stopping: threading.Event, hard_stop: threading.Event, notify: Callable[[], None], grace: float
    ) -> None:
        self.stopping = stopping
        self.hard_stop = hard_stop
        self.notify = notify
        self.grace = grace
        self._received = itertools.count()  # signals received by this run

    def reset(self, grace: float) -> None:
        """At the start of a ``Worker.run``."""
        self.grace = grace
        self._received = itertools.count()

    def install(self) -> dict[int, Any]:
        """Handles both signals (only possible on the main thread); returns the previous handlers."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, Any] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, self.on_signal)
        return previous

    @staticmethod
    def restore(previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # A second signal can run its handler inside this one (Python runs handlers between
        # any two bytecodes), e.g. while the first is still logging: each one counts itself
        # in first (one C call, so never interrupted) and acts on its own number. Logging
        # first made a quick second signal a first one too, and the stop waited out the
        # grace (seen in CI).
        first = next(self._received) == 0 and not self.stopping.is_set()
        if first:
            self.stopping.set()
            log.warning(
                "%s: finishing running tasks (up to %.0fs); send again to stop now",
                signal.Signals(signum).name,
                self.grace,
            )
        else:
            self.stopping.set()
            self.hard_stop.set()
            log.warning("second %s: stopping now, releasing running tasks", signal.Signals(signum).name)
        self.notify()
