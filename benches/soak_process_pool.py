"""Soak: a process-pool worker on a steady stream of mixed tasks (most succeed, some raise
and retry, some crash their child with os._exit, some overrun their timeout and get their
child killed); reports the worker's and its children's memory and open descriptors over
time, then stops the worker with SIGTERM and checks that nothing was lost or completed
twice.

    .venv/bin/python benches/soak_process_pool.py --seconds 600            # the long run
    .venv/bin/python benches/soak_process_pool.py --seconds 6 --json       # tests/test_process_pool.py

The worker runs in its own process (this script with --worker), as in production; this
process enqueues ``--rate`` tasks per second and samples /proc.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ferroq

# The worker's children re-import this script and find the processor by reference
# (``__main__._mix``); they never open the queue.
LOG = Path(os.environ.get("FERROQ_SOAK_DIR", ".")) / "done.log"


def _mix(i: int) -> dict[str, Any]:
    attempt = ferroq.current_task().attempt
    if attempt == 1:
        if i % 500 == 0:
            os._exit(3)  # the child dies: one attempt, a fresh child
        if i % 1000 == 1:
            time.sleep(5)  # over the timeout: the child is killed
        if i % 10 == 2:
            raise ValueError(f"flaky {i}")
    with open(LOG, "a") as f:  # one short append per line: lines never interleave
        f.write(f"{i}\n")
    return {"i": i, "blob": "x" * (i % 2000)}  # results of varying size


def open_queue(directory: Path) -> tuple[ferroq.Queue, ferroq.Task[[int], dict[str, Any]]]:
    q = ferroq.Queue(directory / "soak.db", durability="normal")
    mix = q.task(name="mix", max_attempts=3, timeout=0.3, retry=ferroq.RetryPolicy(base_delay=0.01, max_delay=0.05))(
        _mix
    )
    return q, mix


def worker() -> None:
    import multiprocessing

    q, _ = open_queue(Path(os.environ["FERROQ_SOAK_DIR"]))
    stats = ferroq.Worker(q, concurrency=2, pool="process", lease=10.0, shutdown_grace=30.0).run()
    print(json.dumps({"stats": stats.__dict__, "children": [p.pid for p in multiprocessing.active_children()]}))


def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "PPid"):
            out[key] = int(value.split()[0])
    return out


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                kids.append(int(entry))
    return kids


def sample(pid: int, t0: float, enqueued: int) -> dict[str, Any]:
    kids = _children(pid)
    children_kib = 0
    for kid in kids:
        try:
            children_kib += _status(kid).get("VmRSS", 0)
        except OSError:
            pass
    return {
        "t": round(time.monotonic() - t0, 1),
        "enqueued": enqueued,
        "rss_kib": _status(pid)["VmRSS"],
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "children": len(kids),
        "children_rss_kib": children_kib,
    }


def drive(directory: Path, seconds: float, rate: int, every: float, as_json: bool) -> int:
    q, mix = open_queue(directory)
    log = directory / "done.log"
    env = dict(os.environ, FERROQ_SOAK_DIR=str(directory))
    proc = subprocess.Popen([sys.executable, __file__, "--worker"], env=env, stdout=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    enqueued, samples, step = 0, [], 0.1
    next_sample = t0 + every
    try:
        while time.monotonic() - t0 < seconds:
            tick = time.monotonic()
            batch = max(1, int(rate * step))
            q.enqueue_many([mix.call(i) for i in range(enqueued, enqueued + batch)])
            enqueued += batch
            if tick >= next_sample:
                samples.append(sample(proc.pid, t0, enqueued))
                next_sample += every
                if not as_json:
                    s = samples[-1]
                    print(
                        f"{s['t']:>7.1f}s  enqueued {s['enqueued']:>9,}  worker RSS {s['rss_kib'] / 1024:7.1f} MiB  "
                        f"fds {s['fds']:>4}  children {s['children']}  children RSS "
                        f"{s['children_rss_kib'] / 1024:6.1f} MiB",
                        flush=True,
                    )
            if proc.poll() is not None:
                raise SystemExit(f"the worker exited early with {proc.returncode}")
            time.sleep(max(0.0, step - (time.monotonic() - tick)))
        # Let the backlog drain, then stop gracefully.
        deadline = time.monotonic() + 60
        while q.counts()["pending"] and time.monotonic() < deadline:
            time.sleep(0.1)
        samples.append(sample(proc.pid, t0, enqueued))
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    result = json.loads(out.splitlines()[-1])
    counts = q.counts()
    done = [int(line) for line in log.read_text().split()] if log.exists() else []
    seen: set[int] = set()
    twice = sum(1 for i in done if i in seen or seen.add(i))  # type: ignore[func-returns-value]
    stats = result["stats"]
    report = {
        "seconds": seconds,
        "rate": rate,
        "enqueued": enqueued,
        **counts,
        "lost": enqueued - sum(counts.values()) + (counts["completed"] - len(seen)),
        "completed_twice": twice,
        "crashed": stats["crashed"],
        "timed_out": stats["timed_out"],
        "respawned": stats["respawned"],
        "worker_exit": proc.returncode,
        "children_left": result["children"],
        "samples": samples,
    }
    if as_json:
        print(json.dumps(report))
    else:
        first, last = samples[min(1, len(samples) - 1)], samples[-1]
        print(
            f"completed {counts['completed']:,} of {enqueued:,} "
            f"(dead {counts['dead']}, pending {counts['pending']}); "
            f"lost {report['lost']}, completed twice {twice}; child crashes {stats['crashed']}, "
            f"timeouts {stats['timed_out']}, respawns {stats['respawned']}; worker exit {proc.returncode}"
        )
        print(
            f"worker RSS {first['rss_kib'] / 1024:.1f} MiB at {first['t']}s -> {last['rss_kib'] / 1024:.1f} MiB "
            f"at {last['t']}s; fds {first['fds']} -> {last['fds']}"
        )
    return 0 if proc.returncode == 0 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--rate", type=int, default=1000, help="tasks enqueued per second")
    parser.add_argument("--every", type=float, default=None, help="seconds between samples")
    parser.add_argument("--dir", default=None, help="where the queue file goes (default: a new temp dir)")
    parser.add_argument("--json", action="store_true", help="one JSON report on stdout")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker()
        return
    directory = Path(args.dir or tempfile.mkdtemp(prefix="ferroq-soak-"))
    every = args.every or max(0.5, min(10.0, args.seconds / 60))
    raise SystemExit(drive(directory, args.seconds, args.rate, every, args.json))


if __name__ == "__main__":
    main()
