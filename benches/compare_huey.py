"""ferroq next to huey (SqliteHuey), both on a SQLite file in a temp dir, same run, same machine.

    .venv/bin/python benches/compare_huey.py [--n N] [--enqueue-n M] [-o json]

Needs huey in the venv (``.venv/bin/pip install huey``). Scenarios:

1. enqueue rate, one thread, single enqueues of a no-op task;
2. drain rate: N pre-enqueued no-op tasks, one consumer process with 4 threads, timed from
   consumer start (after imports and opening the queue) until all N tasks are done;
3. enqueue -> start latency p50/p95 at a fixed 200 tasks/s, consumer in another process: the
   processor returns ``time.time() - sent`` where ``sent`` is the enqueue timestamp.

Settings (each side in its documented defaults, except where stated):

- huey: ``SqliteHuey(name, filename=...)`` with no storage options. huey 3.x sets
  ``journal_mode=wal`` and leaves ``synchronous`` alone when ``fsync`` is not given, so it is
  SQLite's compiled default (FULL on the stock CPython build; the run reports the value it
  read back). Consumer via ``huey.create_consumer(workers=4, worker_type='thread')``, every
  other option at its default (polling: initial_delay 0.1 s, backoff 1.15, max_delay 10 s;
  scheduler every 1 s, periodic on, health check on). results=True, store_none=False.
  Prefilling the drain queue (untimed) uses ``fsync=False``; the consumer opens it normally.
- ferroq: ``Queue(path, durability="full"|"normal")`` (WAL, synchronous FULL|NORMAL),
  ``Worker(q, concurrency=4)``, other options at their defaults (poll_interval 0.5 s).

huey only offers synchronous FULL (default here) or OFF (``fsync=False``), so only the rows
marked ``full`` compare equal durability; the ``normal`` rows put ferroq at a weaker setting.

huey talks to SQLite through Python's sqlite3 and ferroq through its own bundled SQLite;
two SQLite copies in one process break each other's locks, so every measurement runs in its
own subprocess (this script re-invoked with ``--role``) and the parent imports neither.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

HERE = os.path.abspath(__file__)
QUEUE_NAME = "bench"
WORKERS = 4


# ---------------------------------------------------------------------------------------
# Children: each role prints one JSON object as its last stdout line.
# ---------------------------------------------------------------------------------------


def _noop(i: int) -> None:
    return None


def _stamp(sent: float) -> float:
    return time.time() - sent


def _quantiles(waits_ms: list[float]) -> dict[str, float]:
    qs = statistics.quantiles(waits_ms, n=100)
    return {"p50": qs[49], "p95": qs[94], "p99": qs[98], "max": max(waits_ms), "count": len(waits_ms)}


def _pace(rate: float, n: int, enqueue: Any) -> list[Any]:
    """Enqueues ``n`` stamps at ``rate``/s. Sleeps, never spins (the same loop as ferroq.bench)."""
    handles = []
    interval = 1.0 / rate
    start = time.perf_counter()
    for i in range(n):
        wait = start + i * interval - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        handles.append(enqueue(time.time()))
    return handles


# -- ferroq -------------------------------------------------------------------------------


def _ferroq(path: str, durability: str) -> tuple[Any, Any, Any]:
    import ferroq

    q = ferroq.Queue(path, durability=durability)
    noop = q.task(name="noop")(_noop)
    stamp = q.task(name="stamp")(_stamp)
    return q, noop, stamp


def ferroq_enqueue(path: str, durability: str, n: str) -> dict[str, Any]:
    q, noop, _ = _ferroq(path, durability)
    count = int(n)
    t = time.perf_counter()
    for i in range(count):
        noop.enqueue(i)
    rate = count / (time.perf_counter() - t)
    return {"rate": rate, "pending": q.counts()["pending"]}


def ferroq_fill(path: str, durability: str, n: str) -> dict[str, Any]:
    q, noop, _ = _ferroq(path, durability)
    count = int(n)
    for start in range(0, count, 50_000):
        q.enqueue_many(noop.call(i) for i in range(start, min(count, start + 50_000)))
    return {"pending": q.counts()["pending"]}


def ferroq_drain(path: str, durability: str, n: str) -> dict[str, Any]:
    import ferroq

    q, _, _ = _ferroq(path, durability)
    worker = ferroq.Worker(q, concurrency=WORKERS, handle_signals=False)
    t = time.perf_counter()
    stats = worker.run(until_idle=True)
    elapsed = time.perf_counter() - t
    done_at = time.time()
    counts = q.counts()
    if stats.completed != int(n) or counts["pending"] or counts["running"]:
        raise SystemExit(f"ferroq drain incomplete: {stats} {counts}")
    return {
        "rate": stats.completed / elapsed,
        "elapsed": elapsed,
        "done_at": done_at,
        "poll_interval": worker.poll_interval,
        "concurrency": worker.concurrency,
    }


def ferroq_consume(path: str, durability: str) -> dict[str, Any]:
    """Latency consumer: runs until stdin closes."""
    import ferroq

    q, _, _ = _ferroq(path, durability)
    worker = ferroq.Worker(q, concurrency=WORKERS, handle_signals=False)

    def stop_on_eof() -> None:
        sys.stdin.read()
        worker.stop()

    threading.Thread(target=stop_on_eof, daemon=True).start()
    print("ready", flush=True)
    stats = worker.run()
    return {"completed": stats.completed, "poll_interval": worker.poll_interval}


def ferroq_produce(path: str, durability: str, rate: str, n: str) -> dict[str, Any]:
    _, _, stamp = _ferroq(path, durability)
    handles = _pace(float(rate), int(n), stamp.enqueue)
    return _quantiles([h.result(timeout=60) * 1000 for h in handles])


# -- huey ---------------------------------------------------------------------------------


def _huey(path: str, **storage: Any) -> tuple[Any, Any, Any]:
    from huey import SqliteHuey

    huey = SqliteHuey(QUEUE_NAME, filename=path, **storage)
    noop = huey.task(name="noop")(_noop)
    stamp = huey.task(name="stamp")(_stamp)
    return huey, noop, stamp


def _huey_settings(huey: Any, consumer: Any = None) -> dict[str, Any]:
    import sqlite3

    import huey as huey_pkg

    conn = huey.storage.conn
    out = {
        "huey_version": huey_pkg.__version__,
        "python_sqlite_version": sqlite3.sqlite_version,
        "journal_mode": conn.execute("pragma journal_mode").fetchone()[0],
        "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[conn.execute("pragma synchronous").fetchone()[0]],
        "busy_timeout_ms": conn.execute("pragma busy_timeout").fetchone()[0],
        "cache_size": conn.execute("pragma cache_size").fetchone()[0],
        "results": huey.results,
        "store_none": huey.store_none,
    }
    if consumer is not None:
        out.update(
            workers=consumer.workers,
            worker_type=consumer.worker_type,
            initial_delay=consumer.default_delay,
            backoff=consumer.backoff,
            max_delay=consumer.max_delay,
            scheduler_interval=consumer.scheduler_interval,
            periodic=consumer.periodic,
            check_worker_health=consumer._health_check,
        )
    return out


def _huey_consumer(huey: Any) -> Any:
    return huey.create_consumer(workers=WORKERS, worker_type="thread")


def huey_enqueue(path: str, n: str) -> dict[str, Any]:
    huey, noop, _ = _huey(path)
    count = int(n)
    t = time.perf_counter()
    for i in range(count):
        noop(i)
    rate = count / (time.perf_counter() - t)
    return {"rate": rate, "pending": huey.pending_count(), "settings": _huey_settings(huey)}


def huey_fill(path: str, n: str) -> dict[str, Any]:
    # Untimed setup: synchronous=OFF for this connection only (huey's fsync=False); the
    # setting is per connection, so the consumer below opens the file with huey's defaults.
    huey, noop, _ = _huey(path, fsync=False)
    for i in range(int(n)):
        noop(i)
    return {"pending": huey.pending_count()}


def huey_drain(path: str, n: str) -> dict[str, Any]:
    from huey.signals import SIGNAL_COMPLETE

    huey, _, _ = _huey(path)
    count = int(n)
    done = threading.Event()
    lock = threading.Lock()
    completed = [0]

    @huey.signal(SIGNAL_COMPLETE)
    def on_complete(signal: str, task: Any) -> None:
        with lock:
            completed[0] += 1
            if completed[0] >= count:
                done.set()

    consumer = _huey_consumer(huey)
    t = time.perf_counter()
    consumer.start()
    finished = done.wait(600)
    elapsed = time.perf_counter() - t
    done_at = time.time()
    consumer.stop(graceful=True)
    pending = huey.pending_count()
    if not finished or pending:
        raise SystemExit(f"huey drain incomplete: completed={completed[0]} pending={pending}")
    return {
        "rate": completed[0] / elapsed,
        "elapsed": elapsed,
        "done_at": done_at,
        "settings": _huey_settings(huey, consumer),
    }


def huey_consume(path: str) -> dict[str, Any]:
    """Latency consumer: runs until stdin closes."""
    huey, _, _ = _huey(path)
    consumer = _huey_consumer(huey)
    consumer.start()
    print("ready", flush=True)
    sys.stdin.read()
    consumer.stop(graceful=True)
    return {"settings": _huey_settings(huey, consumer)}


def huey_produce(path: str, rate: str, n: str) -> dict[str, Any]:
    _, _, stamp = _huey(path)
    handles = _pace(float(rate), int(n), stamp)
    return _quantiles([h.get(blocking=True, timeout=60) * 1000 for h in handles])


ROLES = {
    f.__name__: f
    for f in (
        ferroq_enqueue,
        ferroq_fill,
        ferroq_drain,
        ferroq_consume,
        ferroq_produce,
        huey_enqueue,
        huey_fill,
        huey_drain,
        huey_consume,
        huey_produce,
    )
}


# ---------------------------------------------------------------------------------------
# Parent: runs the children, never imports ferroq or huey.
# ---------------------------------------------------------------------------------------


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _cmd(role: str, *args: Any) -> list[str]:
    return [sys.executable, HERE, "--role", role, *map(str, args)]


def _child(role: str, *args: Any) -> dict[str, Any]:
    out = subprocess.run(_cmd(role, *args), capture_output=True, text=True, timeout=600)
    if out.returncode:
        raise RuntimeError(f"{role} failed ({out.returncode}):\n{out.stderr}{out.stdout}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def enqueue_rate(lib: str, durability: str, n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, f"{lib}.db")
        return _child("ferroq_enqueue", path, durability, n) if lib == "ferroq" else _child("huey_enqueue", path, n)


def drain_rate(lib: str, durability: str, n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, f"{lib}.db")
        if lib == "ferroq":
            fill = _child("ferroq_fill", path, durability, n)
            launched = time.time()
            res = _child("ferroq_drain", path, durability, n)
        else:
            fill = _child("huey_fill", path, n)
            launched = time.time()
            res = _child("huey_drain", path, n)
        if fill["pending"] != n:
            raise RuntimeError(f"{lib} prefill left {fill['pending']} pending, expected {n}")
        # Informational: from launching the consumer process (interpreter start, imports,
        # opening the queue included) to the last task done.
        res["launch_to_done_s"] = res.pop("done_at") - launched
        return res


def latency(lib: str, durability: str, rate: float, n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, f"{lib}.db")
        if lib == "ferroq":
            consumer_cmd = _cmd("ferroq_consume", path, durability)
            # The consumer creates the schema on open; start it first, as the producer would.
        else:
            consumer_cmd = _cmd("huey_consume", path)
        err_path = os.path.join(d, "consumer.stderr")
        with open(err_path, "w") as err_file:
            proc = subprocess.Popen(
                consumer_cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err_file, text=True
            )
        assert proc.stdout is not None and proc.stdin is not None

        def consumer_error(what: str) -> RuntimeError:
            with open(err_path) as f:
                return RuntimeError(f"{lib} consumer {what}:\n{f.read()}")

        try:
            if proc.stdout.readline().strip() != "ready":
                raise consumer_error("did not start")
            time.sleep(0.5)
            res = (
                _child("ferroq_produce", path, durability, rate, n)
                if lib == "ferroq"
                else _child("huey_produce", path, rate, n)
            )
            proc.stdin.close()  # EOF on stdin: the consumer stops gracefully and reports
            rest = proc.stdout.read()
            if proc.wait(60):
                raise consumer_error(f"failed ({proc.returncode})")
            res["consumer"] = json.loads(rest.strip().splitlines()[-1])
            return res
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def run(n: int, enqueue_n: int, lat_rate: float, lat_n: int, durabilities: list[str]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {}

    def row(scenario: str, durability: str, f: float, h: float, unit: str, higher_better: bool) -> None:
        ratio = (f / h if higher_better else h / f) if f and h else None
        rows.append(
            {
                "scenario": scenario,
                "ferroq_durability": durability,
                "huey_synchronous": details["huey_settings"]["synchronous"],
                "ferroq": f,
                "huey": h,
                "unit": unit,
                "ratio": ratio,
                "higher_is_better": higher_better,
            }
        )

    _log(f"enqueue rate, 1 thread, {enqueue_n:,} tasks ...")
    h = enqueue_rate("huey", "", enqueue_n)
    details["huey_settings"] = h["settings"]
    details["huey_enqueue"] = h
    for dur in durabilities:
        f = enqueue_rate("ferroq", dur, enqueue_n)
        details[f"ferroq_enqueue_{dur}"] = f
        row("enqueue, 1 thread", dur, f["rate"], h["rate"], "tasks/s", True)

    _log(f"drain {n:,} no-op tasks, 1 consumer process x {WORKERS} threads ...")
    h = drain_rate("huey", "", n)
    details["huey_consumer_settings"] = h.pop("settings")
    details["huey_drain"] = h
    for dur in durabilities:
        f = drain_rate("ferroq", dur, n)
        details[f"ferroq_drain_{dur}"] = f
        row(f"drain {n:,}, 1 proc x {WORKERS} thr", dur, f["rate"], h["rate"], "tasks/s", True)

    _log(f"latency at {lat_rate:,.0f}/s, {lat_n:,} tasks, consumer in another process ...")
    h = latency("huey", "", lat_rate, lat_n)
    details["huey_latency"] = h
    for dur in durabilities:
        f = latency("ferroq", dur, lat_rate, lat_n)
        details[f"ferroq_latency_{dur}"] = f
        details["ferroq_poll_interval"] = f["consumer"]["poll_interval"]
        for p in ("p50", "p95"):
            row(f"latency {p} @{lat_rate:,.0f}/s x-proc", dur, f[p], h[p], "ms", False)
    return {
        "rows": rows,
        "details": details,
        "ratio_meaning": "ferroq/huey for rates, huey/ferroq for latencies: > 1 means ferroq is better",
    }


def render(result: dict[str, Any]) -> str:
    s = result["details"]["huey_settings"]
    c = result["details"]["huey_consumer_settings"]
    lines = [f"{'scenario':<32} {'ferroq dur.':<11} {'ferroq':>10} {'huey':>10} {'ratio':>7}  unit", "-" * 80]
    for r in result["rows"]:
        fmt = (lambda v: f"{v:>10,.0f}") if r["unit"] == "tasks/s" else (lambda v: f"{v:>10.2f}")
        ratio = f"{r['ratio']:>7.2f}" if r["ratio"] is not None else f"{'-':>7}"
        lines.append(
            f"{r['scenario']:<32} {r['ferroq_durability']:<11} {fmt(r['ferroq'])} {fmt(r['huey'])} {ratio}  {r['unit']}"
        )
    lines += [
        "",
        "ratio: ferroq/huey for rates, huey/ferroq for latencies (> 1: ferroq better).",
        f"huey {s['huey_version']} SqliteHuey defaults: journal_mode={s['journal_mode']}, "
        f"synchronous={s['synchronous']}, busy_timeout={s['busy_timeout_ms']} ms, "
        f"cache_size={s['cache_size']} (SQLite {s['python_sqlite_version']} via Python sqlite3)",
        f"huey consumer: workers={c['workers']} worker_type={c['worker_type']} polling "
        f"initial_delay={c['initial_delay']} s backoff={c['backoff']} max_delay={c['max_delay']} s, "
        f"scheduler_interval={c['scheduler_interval']} s, periodic={c['periodic']}",
        f"ferroq: WAL, durability full=synchronous FULL / normal=synchronous NORMAL; "
        f"Worker(concurrency={WORKERS}, poll_interval={result['details'].get('ferroq_poll_interval')} s)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--role"]:
        print(json.dumps(ROLES[argv[1]](*argv[2:])), flush=True)
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="tasks to drain (default 20000)")
    parser.add_argument("--enqueue-n", type=int, default=5_000, help="single enqueues timed (default 5000)")
    parser.add_argument("--latency-rate", type=float, default=200.0, help="tasks/s (default 200)")
    parser.add_argument("--latency-n", type=int, default=1_000, help="tasks (default 1000)")
    parser.add_argument(
        "--durability",
        choices=["both", "full", "normal"],
        default="both",
        help="ferroq durability to run (default both)",
    )
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table")
    args = parser.parse_args(argv)
    import importlib.util

    if importlib.util.find_spec("huey") is None:  # checked without importing it here
        parser.error("huey is not installed: .venv/bin/pip install huey")
    durabilities = ["full", "normal"] if args.durability == "both" else [args.durability]
    t = time.perf_counter()
    result = run(args.n, args.enqueue_n, args.latency_rate, args.latency_n, durabilities)
    result["elapsed_s"] = time.perf_counter() - t
    if args.output == "json":
        print(json.dumps(result, indent=2))
    else:
        print(render(result))
        print(f"(total {result['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
