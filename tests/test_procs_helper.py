"""The child-process helper itself: what every multi-process test relies on."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import Procs, procs  # noqa: F401


def test_a_script_written_again_while_children_start_is_never_read_empty(procs: Procs) -> None:
    # Tests write a script again before starting each of its children; a child that read
    # it mid-write ran nothing and exited 0 (a CI run lost one enqueuer's 1,000 records).
    body = "emit('ran')\n"
    script = procs.script("busy", body)
    stop = threading.Event()

    def rewrite() -> None:
        while not stop.is_set():
            procs.script("busy", body)

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        children = [procs.run(script, label=f"busy-{i}") for i in range(12)]
    finally:
        stop.set()
        writer.join()
    assert [c.records() for c in children] == [["ran"]] * 12
