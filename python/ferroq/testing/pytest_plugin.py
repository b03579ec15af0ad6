"""The pytest plugin ferroq registers (entry point ``pytest11``): the ``ferroq_queue``
fixture. Installing ferroq is enough to get it."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from ..queue import Queue


@pytest.fixture
def ferroq_queue(tmp_path: Path) -> Iterator[Queue]:
    """A fresh ``ferroq.Queue`` on its own file in the test's temporary directory
    (``durability="normal"``: fast, and a test does not need to survive power loss),
    closed when the test ends. Declare tasks on it with ``@ferroq_queue.task``."""
    queue = Queue(tmp_path / "ferroq-test.db", durability="normal")
    try:
        yield queue
    finally:
        queue.close()
