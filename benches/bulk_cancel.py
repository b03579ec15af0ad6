"""Bulk cancel: one ``cancel`` per task (what the dashboard's bulk cancel did) against
``cancel_pending`` (a batch of 500 per transaction), on the same number of pending tasks.

    .venv/bin/python benches/bulk_cancel.py [--tasks 20000] [--db postgresql://...]

Without ``--db`` each side gets a fresh SQLite file (default durability: one fsync per
transaction); with a URL, a fresh schema of that database each.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from typing import NamedTuple

import ferroq


class Figures(NamedTuple):
    tasks: int
    one_by_one_per_s: float
    cancel_pending_per_s: float


def _fresh(db: str | None, directory: str, label: str) -> ferroq.Queue:
    if db is None:
        return ferroq.Queue(os.path.join(directory, f"{label}.db"))
    sep = "&" if "?" in db else "?"
    return ferroq.Queue(f"{db}{sep}schema=bench_{uuid.uuid4().hex[:12]}")


def _filled(db: str | None, directory: str, label: str, tasks: int) -> ferroq.Queue:
    q = _fresh(db, directory, label)
    job = q.task(name="job")(lambda n: None)
    q.enqueue_many(job.call(n) for n in range(tasks))
    return q


def measure(tasks: int, directory: str, db: str | None = None) -> Figures:
    with _filled(db, directory, "one_by_one", tasks) as q:
        ids = [t.id for t in q.iter_tasks(status="pending")]
        start = time.perf_counter()
        for task_id in ids:
            q.cancel(task_id)
        one_by_one = time.perf_counter() - start
        assert q.count_pending() == 0
    with _filled(db, directory, "bulk", tasks) as q:
        start = time.perf_counter()
        done = q.cancel_pending()
        bulk = time.perf_counter() - start
        assert done == tasks and q.count_pending() == 0
    return Figures(tasks, tasks / one_by_one, tasks / bulk)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--db", default=None, help="a postgresql:// URL (default: SQLite files in a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        f = measure(args.tasks, d, args.db)
    print(f"{f.tasks:,} pending tasks, {'PostgreSQL' if args.db else 'SQLite (durability full)'}")
    print(f"  one cancel per task   {f.one_by_one_per_s:>10,.0f} tasks/s")
    print(f"  cancel_pending        {f.cancel_pending_per_s:>10,.0f} tasks/s")


if __name__ == "__main__":
    main()
