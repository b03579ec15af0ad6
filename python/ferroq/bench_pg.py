"""``ferroq bench --db postgresql://...``: the PostgreSQL engine's figures next to, in the
same run on the same server, the raw SQL ceiling (a plain claim/finish loop, batches of 100)
and procrastinate's drain, both from the repository's ``benches/pg_ceiling.py``.

Each scenario gets a fresh database on the server (the URL's user must be allowed to create
databases). The ceiling and procrastinate need a source checkout (benches/) with psycopg and
procrastinate installed (``make build`` installs them).
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import ferroq

from .bench import Figure, bench_latency
from .errors import InvalidArgument

__all__ = ["run"]


def _pg_ceiling() -> ModuleType:
    benches = Path(__file__).resolve().parents[2] / "benches"
    if not (benches / "pg_ceiling.py").exists():
        raise InvalidArgument(
            f"ferroq bench --db postgresql:// needs the repository's {benches}/pg_ceiling.py (a source checkout)"
        )
    # On sys.path, not loaded from its file: spawned children import their target by module name.
    if str(benches) not in sys.path:
        sys.path.insert(0, str(benches))
    return importlib.import_module("pg_ceiling")


def _enqueue(db: str, n: int, threads: int) -> float:
    import threading

    with ferroq.Queue(db) as q:
        noop = q.task(name="noop")(lambda i: None)
        per = max(1, n // threads)

        def work() -> None:
            for i in range(per):
                noop.enqueue(i)

        pool = [threading.Thread(target=work) for _ in range(threads)]
        t = time.perf_counter()
        for th in pool:
            th.start()
        for th in pool:
            th.join()
        return per * threads / (time.perf_counter() - t)


def _enqueue_many(db: str, n: int) -> float:
    with ferroq.Queue(db) as q:
        noop = q.task(name="noop")(lambda i: None)
        t = time.perf_counter()
        q.enqueue_many(noop.call(i) for i in range(n))
        return n / (time.perf_counter() - t)


def run(url: str, quick: bool = False, tasks: int | None = None) -> list[Figure]:
    """The figures of issue 14's table on the server at ``url``; ``tasks`` scales the counts
    (a smoke test)."""
    pg: Any = _pg_ceiling()
    n = tasks or (20_000 if quick else 200_000)
    figures = []
    drains = {}
    for p in (1, 2):
        ceiling = pg.raw_ceiling(url, n, p)
        drains[p] = pg.ferroq_drain(url, n, p)
        figures.append(Figure(f"drain no-op, {p} process(es)", drains[p], "tasks/s", ceiling))
    slow = pg.procrastinate_drain(url, max(10, n // 10), 1)
    figures.append(Figure("procrastinate drain, 1 process (concurrency 10)", slow, "tasks/s"))
    figures.append(Figure("ferroq drain / procrastinate drain, 1 process", drains[1] / slow, "x"))
    with pg.fresh_database(url, "ferroq_bench") as db:
        figures.append(Figure("enqueue, 1 thread", _enqueue(db, min(n, 2_000 if quick else 5_000), 1), "tasks/s"))
    with pg.fresh_database(url, "ferroq_bench") as db:
        figures.append(Figure("enqueue, 16 threads", _enqueue(db, min(n, 8_000 if quick else 32_000), 16), "tasks/s"))
    with pg.fresh_database(url, "ferroq_bench") as db:
        figures.append(Figure("enqueue_many (COPY)", _enqueue_many(db, n), "tasks/s"))
    if not quick:
        with pg.fresh_database(url, "ferroq_bench") as db:
            figures += bench_latency(1_000, 3.0, cross_process=True, location=db)
        # The same on a table that holds a retention window's worth of finished tasks.
        history = 1_000_000
        with pg.fresh_database(url, "ferroq_bench") as db:
            pg.add_finished_history(db, history)
            after = f"after {history:,} finished"
            figures.append(Figure(f"drain no-op, 1 process(es), {after}", pg.ferroq_drain_in(db, n, 1), "tasks/s"))
            figures += bench_latency(1_000, 3.0, cross_process=True, location=db, label=f"at 1,000/s {after}")
    return figures
