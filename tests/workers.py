"""Test helpers shared by the API and semantics tests."""

from __future__ import annotations

import threading
from typing import Any

import ferroq

WAIT = 30.0  # generous: waits end as soon as the condition holds


class BackgroundWorker:
    """A worker on its own thread, for tests that look at a task while it runs."""

    def __init__(self, q: ferroq.Queue, **kwargs: Any) -> None:
        self.worker = ferroq.Worker(q, handle_signals=False, **kwargs)
        self.thread = threading.Thread(target=self.worker.run, daemon=True)

    def __enter__(self) -> ferroq.Worker:
        self.thread.start()
        return self.worker

    def __exit__(self, *exc: object) -> None:
        self.worker.stop()
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "worker did not stop"
