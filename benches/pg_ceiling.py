"""PostgreSQL drain figures on one server, in one run: the raw SQL ceiling, procrastinate, ferroq.

    .venv/bin/python benches/pg_ceiling.py [--url postgresql://...] [--tasks 200000]
        [--procrastinate-tasks 20000] [--procrastinate-concurrency 10] [--processes 1 2]
        [-o table|json]

- raw ceiling: the least a queue on PostgreSQL must do per task, in plain SQL through psycopg
  (binary): claim 100 ready rows (``FOR UPDATE SKIP LOCKED`` in a ``MATERIALIZED`` CTE, ordered by
  priority then id, on a partial index), mark them running under a lease, then finish them in one
  fenced set-based ``UPDATE ... FROM unnest(ids, leases, results)``. One autocommit transaction per
  statement, as a worker would. Issue 14's "raw ceiling" column.
- procrastinate: its worker (``run_worker(wait=False)``, async no-op task, concurrency 10 per
  process) draining deferred jobs until empty. Issue 14's "procrastinate" column.
- ferroq: the same drain through ``ferroq.Queue(URL)`` and ``ferroq.Worker``, once this build's
  engine takes postgresql:// URLs (until then the row says so). This is the hook for
  ``ferroq bench --db postgresql://``: when the engine lands, that command reports these columns
  (the functions below take a URL and return tasks/s).

Each run gets a fresh database on the server. The clock starts once every worker process has
connected and stops when the last has found the queue empty; every task is checked done exactly
once. Without --url it uses $FERROQ_TEST_PG_URL, else starts a throw-away cluster
(tests/pg_cluster.py: fsync off, so these are CPU figures, not disk ones).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

BATCH = 100
PROCRASTINATE_CONCURRENCY = 10
FERROQ_CONCURRENCY = 4
PAYLOAD = b'{"args":[1],"kwargs":{}}'


@dataclass
class Row:
    name: str
    processes: int
    tasks: int
    tasks_per_s: float | None  # None: not measured (the note says why)
    note: str = ""


# -- databases ---------------------------------------------------------------------------------


def _with_database(url: str, name: str) -> str:
    return f"{url.rpartition('/')[0]}/{name}"


@contextlib.contextmanager
def fresh_database(url: str, prefix: str) -> Iterator[str]:
    """A new empty database on the server at ``url`` (dropped afterwards); its URL."""
    import psycopg

    name = f"{prefix}_{os.getpid()}_{time.monotonic_ns()}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(url, name)
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _run_processes(target: Callable[..., None], args: tuple[Any, ...], processes: int) -> tuple[int, float]:
    """Starts ``processes`` children of ``target(*args, ready, go, out)``; once all are ready,
    times them to the end. (tasks they did, seconds)."""
    ctx = multiprocessing.get_context("spawn")
    ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    children = [ctx.Process(target=target, args=(*args, ready, go, out)) for _ in range(processes)]
    for child in children:
        child.start()
    try:
        for _ in children:
            _get(ready, children, 120)
        started = time.perf_counter()
        go.set()
        done = sum(_get(out, children, 1800) for _ in children)
        seconds = time.perf_counter() - started
    finally:
        for child in children:
            child.join(timeout=60)
            if child.is_alive():
                child.kill()
    return done, seconds


def _get(queue: Any, children: list[Any], timeout: float) -> Any:
    """The next value from ``queue``; fails at once if a child died instead of waiting it out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return queue.get(timeout=0.5)
        except Exception:  # noqa: BLE001 (queue.Empty: look at the children, then wait on)
            failed = [c.exitcode for c in children if c.exitcode not in (None, 0)]
            if failed or time.monotonic() > deadline:
                raise RuntimeError(f"a worker process failed (exit codes {failed}) or timed out") from None


# -- the raw SQL ceiling -----------------------------------------------------------------------

RAW_SCHEMA = """
CREATE TABLE ceiling_tasks (
    id bigserial PRIMARY KEY,
    queue text NOT NULL DEFAULT 'default',
    priority int NOT NULL DEFAULT 0,
    status smallint NOT NULL DEFAULT 0,  -- 0 ready, 1 running, 2 done
    lease bigint,
    attempts int NOT NULL DEFAULT 0,
    run_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz,
    payload bytea NOT NULL,
    result bytea
);
CREATE INDEX ceiling_ready ON ceiling_tasks (queue, priority DESC, id) WHERE status = 0;
"""

RAW_CLAIM = """
WITH picked AS MATERIALIZED (
    SELECT id FROM ceiling_tasks
    WHERE queue = 'default' AND status = 0 AND run_at <= now()
    ORDER BY priority DESC, id
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
UPDATE ceiling_tasks t
SET status = 1, lease = %(lease)s, attempts = t.attempts + 1, started_at = now()
FROM picked WHERE t.id = picked.id
RETURNING t.id, t.payload
"""

RAW_FINISH = """
UPDATE ceiling_tasks t
SET status = 2, finished_at = now(), result = r.result
FROM unnest(%(ids)s::bigint[], %(leases)s::bigint[], %(results)s::bytea[]) AS r(id, lease, result)
WHERE t.id = r.id AND t.lease = r.lease AND t.status = 1
"""


def _raw_child(url: str, ready: Any, go: Any, out: Any) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True, prepare_threshold=0) as conn:
        ready.put(True)
        go.wait()
        done, lease = 0, os.getpid() << 32
        while True:
            lease += 1
            rows = conn.execute(RAW_CLAIM, {"batch": BATCH, "lease": lease}).fetchall()
            if not rows:
                break
            ids = [row[0] for row in rows]
            finished = conn.execute(
                RAW_FINISH, {"ids": ids, "leases": [lease] * len(ids), "results": [b"null"] * len(ids)}
            )
            if finished.rowcount != len(ids):  # the fence held against us: a bug in this script
                raise SystemExit(f"finished {finished.rowcount} of {len(ids)} claimed")
            done += len(ids)
    out.put(done)


def raw_ceiling(url: str, tasks: int, processes: int) -> float:
    """tasks/s of the plain SQL claim/finish loop (batches of 100) in ``processes`` processes."""
    import psycopg

    with fresh_database(url, "ferroq_ceiling") as db:
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(RAW_SCHEMA)
            conn.execute("INSERT INTO ceiling_tasks (payload) SELECT %s FROM generate_series(1, %s)", (PAYLOAD, tasks))
            conn.execute("VACUUM ANALYZE ceiling_tasks")
        done, seconds = _run_processes(_raw_child, (db,), processes)
        with psycopg.connect(db) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE status = 2 AND attempts = 1), count(*) FROM ceiling_tasks"
            ).fetchone()
        _check(done, tasks, row, "raw ceiling")
    return tasks / seconds


def _check(done: int, tasks: int, row: Any, what: str) -> None:
    if done != tasks or row is None or tuple(row) != (tasks, tasks):
        raise RuntimeError(f"{what}: {done} done, database says {row}, expected {tasks} each exactly once")


# -- procrastinate -----------------------------------------------------------------------------


def _procrastinate_app(url: str) -> Any:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="noop")
    async def noop(i: int) -> None:
        return None

    return app


def _procrastinate_child(url: str, concurrency: int, ready: Any, go: Any, out: Any) -> None:
    logging.getLogger("procrastinate").setLevel(logging.ERROR)  # a warning per app made in __main__
    app = _procrastinate_app(url)

    async def work() -> None:
        async with app.open_async():
            ready.put(True)
            await asyncio.get_running_loop().run_in_executor(None, go.wait)
            await app.run_worker_async(wait=False, concurrency=concurrency, install_signal_handlers=False)

    asyncio.run(work())
    out.put(0)  # counted from the database: its worker does not say how many it ran


def procrastinate_drain(url: str, tasks: int, processes: int, concurrency: int = PROCRASTINATE_CONCURRENCY) -> float:
    """tasks/s of procrastinate's workers draining ``tasks`` deferred no-op jobs."""
    import psycopg

    logging.getLogger("procrastinate").setLevel(logging.ERROR)

    with fresh_database(url, "ferroq_procrastinate") as db:
        app = _procrastinate_app(db)
        with app.open():
            app.schema_manager.apply_schema()
            noop = app.tasks["noop"]
            for start in range(0, tasks, 1000):
                noop.batch_defer(*({"i": i} for i in range(start, min(tasks, start + 1000))))
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE procrastinate_jobs")
        _, seconds = _run_processes(_procrastinate_child, (db, concurrency), processes)
        with psycopg.connect(db) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE status = 'succeeded' AND attempts <= 1), count(*) "
                "FROM procrastinate_jobs"
            ).fetchone()
        _check(tasks, tasks, row, "procrastinate")
    return tasks / seconds


# -- ferroq (the hook for `ferroq bench --db postgresql://`) ------------------------------------

ENGINE_MISSING = "the PostgreSQL engine is not in this build (ferroq.Queue refuses postgresql:// URLs)"


def ferroq_engine_missing(url: str) -> bool:
    import ferroq

    with fresh_database(url, "ferroq_probe") as db:
        try:
            ferroq.Queue(db).close()
        except ferroq.InvalidArgument as e:
            if "not supported" in str(e):
                return True
            raise
    return False


def _ferroq_child(url: str, ready: Any, go: Any, out: Any) -> None:
    import ferroq

    q = ferroq.Queue(url)
    q.task(name="noop")(lambda i: None)
    worker = ferroq.Worker(q, concurrency=FERROQ_CONCURRENCY, handle_signals=False)
    ready.put(True)
    go.wait()
    out.put(worker.run(until_idle=True).completed)


def ferroq_drain(url: str, tasks: int, processes: int) -> float:
    """tasks/s of ferroq workers draining ``tasks`` no-op tasks from a PostgreSQL queue."""
    with fresh_database(url, "ferroq_drain") as db:
        return ferroq_drain_in(db, tasks, processes)


def ferroq_drain_in(db: str, tasks: int, processes: int) -> float:
    """``ferroq_drain`` in the queue database ``db``, whatever finished tasks it holds."""
    import ferroq

    q = ferroq.Queue(db)
    before = q.counts()
    noop = q.task(name="noop")(lambda i: None)
    for start in range(0, tasks, 50_000):
        q.enqueue_many(noop.call(i) for i in range(start, min(tasks, start + 50_000)))
    done, seconds = _run_processes(_ferroq_child, (db,), processes)
    counts = q.counts()
    q.close()
    completed = counts.get("completed", 0) - before.get("completed", 0)
    _check(done, tasks, (completed, sum(counts.values()) - sum(before.values())), "ferroq")
    return tasks / seconds


def add_finished_history(db: str, tasks: int) -> None:
    """Puts ``tasks`` completed no-op tasks (rows and payloads, finished over the last day) in
    the ferroq queue database ``db``, as a busy queue's retention window holds them. Written in
    SQL (the engine's own writes would take minutes), then vacuumed and analyzed, as autovacuum
    would have left them."""
    import ferroq
    import psycopg

    ferroq.Queue(db).close()  # the schema
    now = int(time.time() * 1000)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            """WITH ins AS (
                   INSERT INTO tasks (queue, name, resource_group, priority, run_at, status, attempts,
                                      max_attempts, created_at, updated_at, started_at, finished_at)
                   SELECT 'default', 'noop', 'default', 0, t, 'completed', 1, 3, t, t, t, t
                   FROM (SELECT %(now)s - 86400000 + n * 86400000 / %(n)s AS t
                         FROM generate_series(1, %(n)s::bigint) AS n) AS s
                   RETURNING id)
               INSERT INTO task_payloads (task_id, payload) SELECT id, %(payload)s FROM ins""",
            {"now": now, "n": tasks, "payload": PAYLOAD},
        )
        conn.execute("VACUUM ANALYZE")


# -- the table ---------------------------------------------------------------------------------


def run(
    url: str,
    tasks: int,
    procrastinate_tasks: int,
    processes: list[int],
    procrastinate_concurrency: list[int] | None = None,
) -> list[Row]:
    """``procrastinate_concurrency``: its worker's concurrency, one row each ([] for none)."""
    concurrencies = [PROCRASTINATE_CONCURRENCY] if procrastinate_concurrency is None else procrastinate_concurrency
    rows = [Row("raw SQL ceiling (batches of 100)", p, tasks, raw_ceiling(url, tasks, p)) for p in processes]
    for p in processes:
        for c in concurrencies:
            rate = procrastinate_drain(url, procrastinate_tasks, p, c)
            rows.append(Row(f"procrastinate (concurrency {c})", p, procrastinate_tasks, rate))
    missing = ferroq_engine_missing(url)
    for p in processes:
        name = f"ferroq drain (concurrency {FERROQ_CONCURRENCY})"
        if missing:
            rows.append(Row(name, p, tasks, None, ENGINE_MISSING))
        else:
            rows.append(Row(name, p, tasks, ferroq_drain(url, tasks, p)))
    return rows


def render(rows: list[Row], server: str) -> str:
    lines = [f"server: {server}", f"{'scenario':<44} {'proc.':>5} {'tasks':>9} {'tasks/s':>10}"]
    for row in rows:
        rate = f"{row.tasks_per_s:>10,.0f}" if row.tasks_per_s is not None else f"{'n/a':>10}"
        note = f"  ({row.note})" if row.note else ""
        lines.append(f"{row.name:<44} {row.processes:>5} {row.tasks:>9,} {rate}{note}")
    return "\n".join(lines)


def server_description(url: str) -> str:
    import psycopg

    with psycopg.connect(url) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        settings = conn.execute(
            "SELECT string_agg(name || '=' || setting, ', ' ORDER BY name) FROM pg_settings "
            "WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes')"
        ).fetchone()
    return f"PostgreSQL {version[0] if version else '?'} ({settings[0] if settings else '?'})"


@contextlib.contextmanager
def server(url: str | None) -> Iterator[str]:
    """``url``, else $FERROQ_TEST_PG_URL, else a throw-away cluster for this run."""
    url = url or os.environ.get("FERROQ_TEST_PG_URL")
    if url:
        yield url
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import pg_cluster

    with pg_cluster.Cluster() as cluster:
        yield cluster.url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a server (a database is created on it per run); default: see above")
    parser.add_argument("--tasks", type=int, default=200_000)
    parser.add_argument("--procrastinate-tasks", type=int, default=20_000, help="it is far slower")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--procrastinate-concurrency",
        type=int,
        nargs="*",
        default=[PROCRASTINATE_CONCURRENCY],
        help="its worker's concurrency, a row each (none: skip procrastinate)",
    )
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table")
    args = parser.parse_args(argv)
    with server(args.url) as url:
        rows = run(url, args.tasks, args.procrastinate_tasks, args.processes, args.procrastinate_concurrency)
        description = server_description(url)
    if args.output == "json":
        print(json.dumps({"server": description, "rows": [asdict(r) for r in rows]}, indent=2))
    else:
        print(render(rows, description))
    return 0


if __name__ == "__main__":
    sys.exit(main())
