"""What the integrity check a worker runs when it starts (SQLite's ``PRAGMA quick_check``,
``Worker.run`` -> ``Queue.check()``) costs on a large file.

    .venv/bin/python benches/quick_check_cost.py [--size-mb 1024] [--payload 400] [--runs 3] [--dir DIR]

Builds a queue file of about ``--size-mb`` MB of pending tasks (each with a ``--payload``-
character argument) in a temporary directory, closes it, then opens it again and times
``q.check()`` ``--runs`` times (the file is in the OS page cache after the build: this is
the warm figure; a cold start adds the time to read the file from disk once).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import ferroq


def build(path: str, size_mb: float, payload: int) -> int:
    """Fills ``path`` with tasks until it holds about ``size_mb`` MB; returns how many."""
    q = ferroq.Queue(path, durability="normal")
    job = q.task(name="job")(lambda x: None)
    batch, total, arg = 20_000, 0, "x" * payload
    while _size_mb(path) < size_mb:
        q.enqueue_many(job.call(arg) for _ in range(batch))
        total += batch
    q.close()  # checkpoints the WAL into the file
    return total


def _size_mb(path: str) -> float:
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p)) / 1e6


def time_check(path: str, runs: int) -> list[float]:
    seconds = []
    for _ in range(runs):
        q = ferroq.Queue(path, durability="normal")
        t0 = time.perf_counter()
        findings = q.check()
        seconds.append(time.perf_counter() - t0)
        q.close()
        assert findings == ["ok"], findings
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=1024.0)
    parser.add_argument("--payload", type=int, default=400)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=None, help="Where to build the file (default: a temporary directory).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        path = os.path.join(d, "q.db")
        t0 = time.perf_counter()
        tasks = build(path, args.size_mb, args.payload)
        built = time.perf_counter() - t0
        size = os.path.getsize(path) / 1e6
        print(f"built {size:,.0f} MB ({tasks:,} tasks, {args.payload}-character payloads) in {built:.0f} s")
        seconds = time_check(path, args.runs)
        print(
            f"quick_check: median {statistics.median(seconds):.2f} s over {args.runs} runs "
            f"({', '.join(f'{s:.2f}' for s in seconds)}), {size / statistics.median(seconds):,.0f} MB/s"
        )


if __name__ == "__main__":
    main()
