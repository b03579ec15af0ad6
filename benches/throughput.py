"""Quick throughput figures with the raw SQLite ceiling measured in the same run.

    .venv/bin/python benches/throughput.py [--n 20000]

The ceiling runs in a subprocess with Python's sqlite3 (never in this process: two SQLite
copies in one process break each other's locks), same pragmas, bare inserts.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time

import ferroq

RAW = textwrap.dedent("""
    import sqlite3, sys, time
    path, sync, n, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL"); c.execute(f"PRAGMA synchronous={sync}")
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, payload BLOB)")
    t = time.perf_counter()
    if mode == "single":
        for _ in range(n):
            c.execute("BEGIN IMMEDIATE"); c.execute("INSERT INTO t (payload) VALUES (?)", (b"{}",)); c.execute("COMMIT")
    else:
        c.execute("BEGIN IMMEDIATE"); c.executemany("INSERT INTO t (payload) VALUES (?)", ((b"{}",) for _ in range(n))); c.execute("COMMIT")
    print(n / (time.perf_counter() - t))
""")


def raw_rate(sync: str, n: int, mode: str) -> float:
    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run([sys.executable, "-c", RAW, os.path.join(d, "raw.db"), sync, str(n), mode],
                             capture_output=True, text=True, check=True)
        return float(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    n = parser.parse_args().n
    rows = []
    for durability, sync in (("full", "FULL"), ("normal", "NORMAL")):
        with tempfile.TemporaryDirectory() as d:
            q = ferroq.Queue(os.path.join(d, "q.db"), durability=durability)

            @q.task(name="noop")
            def noop(i: int) -> None:
                return None

            single_n = n // 4
            t = time.perf_counter()
            for i in range(single_n):
                noop.enqueue(i)
            ours = single_n / (time.perf_counter() - t)
            rows.append((f"enqueue, 1 thread, {durability}", ours, raw_rate(sync, single_n, "single")))

            t = time.perf_counter()
            q.enqueue_many(noop.call(i) for i in range(n))
            ours = n / (time.perf_counter() - t)
            rows.append((f"enqueue_many, {durability}", ours, raw_rate(sync, n, "batch")))

            t = time.perf_counter()
            stats = ferroq.Worker(q, concurrency=4, handle_signals=False).run(until_idle=True)
            ours = stats.completed / (time.perf_counter() - t)
            rows.append((f"drain no-op, 1 process, {durability}", ours, raw_rate(sync, single_n, "single")))
    print(f"{'scenario':<36} {'ferroq/s':>12} {'raw SQLite/s':>14} {'ratio':>7}")
    for name, ours, raw in rows:
        print(f"{name:<36} {ours:>12,.0f} {raw:>14,.0f} {ours / raw:>7.2f}")


if __name__ == "__main__":
    main()
