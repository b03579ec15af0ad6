"""Autoscaling on a replayed bursty, cyclic trace: p95 wait and worker-seconds, autoscaled
(``Autoscale(min=1, max=32)``) against a fixed ``min`` and a fixed ``max``.

One real worker (thread pool) runs I/O-bound tasks (``--run-ms``, default 50 ms of sleep)
that a producer thread enqueues along a compressed cycle: the rate swings between 5/s and
70/s (one cycle per ``--seconds``), with bursts of 150 tasks at a quarter and at two
thirds of it. Wait = from enqueue to the processor starting (measured in the task);
worker-seconds = runner threads provisioned, integrated over the run; busy-seconds = the
run time the load needed. After the cycle, half a cycle more is given to clear the backlog;
tasks still waiting then count with their wait so far (a lower bound: fixed ``min``).

The trace is compressed to minutes, so the forecast has no daily season to lead with: here
the autoscaler works from arrivals, backlog and run times (the forecast's lead is measured
apart: benches/forecast_accuracy.py). Metrics are flushed every second instead of 10 for the
same reason (time is compressed 10-fold).

    python benches/autoscale.py [--seconds 120] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import ferroq
from ferroq.worker import maintenance


@dataclass
class Result:
    name: str
    p50: float
    p95: float
    worker_seconds: float
    busy_seconds: float
    peak: int
    changes: int


def rate_at(t: float, cycle: float) -> float:
    return 5 + 65 * (0.5 - 0.5 * math.cos(2 * math.pi * t / cycle))


def run(
    name: str,
    workdir: Path,
    seconds: float,
    run_s: float,
    seed: int,
    *,
    concurrency: int = 1,
    autoscale: ferroq.Autoscale | None = None,
) -> Result:
    q = ferroq.Queue(workdir / f"{name}.db", durability="normal")
    waits: list[float] = []
    enqueued: list[float] = []
    lock = threading.Lock()

    @q.task
    def job(enqueued_at: float) -> None:
        started = time.time()
        with lock:
            waits.append(started - enqueued_at)
        time.sleep(run_s)

    w = ferroq.Worker(q, concurrency=concurrency, autoscale=autoscale, handle_signals=False)
    worker = threading.Thread(target=w.run, daemon=True)
    worker.start()
    rng = random.Random(seed)
    begin = time.monotonic()
    bursts = {round(seconds / 4, 1), round(seconds * 2 / 3, 1)}
    provisioned, peak, step = 0.0, 0, 0.1
    tick = 0
    while (t := time.monotonic() - begin) < seconds:
        n = sum(1 for _ in range(int(rate_at(t, seconds) * step * 4)) if rng.random() < 0.25)
        if round(tick * step, 1) in bursts:
            n += 150
        if n:
            now = time.time()
            q.enqueue_many(job.call(now) for _ in range(n))
            enqueued.extend([now] * n)
        provisioned += w.concurrency * step
        peak = max(peak, w.concurrency)
        tick += 1
        time.sleep(max(0.0, begin + tick * step - time.monotonic()))
    tail_end = time.monotonic() + seconds / 2
    while (q.counts()["pending"] or q.counts()["running"]) and time.monotonic() < tail_end:
        provisioned += w.concurrency * step  # the tail: still provisioned
        time.sleep(step)
    end = time.time()
    w.stop()
    worker.join(60)
    with lock:
        # Tasks never started: the last enqueued (claims are oldest first), at their wait so far.
        waits.extend(end - at for at in enqueued[len(waits) :])
    changes = sum(1 for e in q.events() if e.kind == "concurrency_changed")
    q.close()
    waits.sort()
    return Result(
        name, statistics.median(waits), waits[int(len(waits) * 0.95)], provisioned, len(waits) * run_s, peak, changes
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120.0, help="length of the replayed cycle")
    parser.add_argument("--run-ms", type=float, default=50.0, help="each task's run time")
    parser.add_argument("--quick", action="store_true", help="a 12-second cycle (make test)")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    seconds = 12.0 if args.quick else args.seconds
    maintenance.METRICS_INTERVAL = 1.0  # time is compressed: see the docstring
    scaling = ferroq.Autoscale(min=1, max=32, every=1.0, cooldown=5.0, drain=5.0)
    configs: list[tuple[str, dict[str, object]]] = [
        ("fixed min (1)", {"concurrency": 1}),
        ("fixed max (32)", {"concurrency": 32}),
        ("autoscale 1:32", {"autoscale": scaling}),
    ]
    if not args.quick:  # the backlog term's knob: a burst is sized to clear within `drain`
        configs.append(("  drain 1 s", {"autoscale": dataclasses.replace(scaling, drain=1.0)}))
    results = []
    with tempfile.TemporaryDirectory(prefix="ferroq-autoscale-") as tmp:
        for name, kw in configs:
            results.append(run(name, Path(tmp), seconds, args.run_ms / 1000, args.seed, **kw))  # type: ignore[arg-type]
            print(f"  {name}: done", flush=True)
    print(f"\n{seconds:g} s cycle, tasks of {args.run_ms:g} ms; waits from enqueue to start")
    print(f"{'worker':16}{'p50 wait':>10}{'p95 wait':>10}{'worker-s':>10}{'busy-s':>8}{'peak':>6}{'changes':>9}")
    for r in results:
        print(
            f"{r.name:16}{r.p50:>9.3f}s{r.p95:>9.3f}s{r.worker_seconds:>10.0f}{r.busy_seconds:>8.0f}{r.peak:>6}"
            f"{r.changes:>9}"
        )
    fixed_max, auto = results[1], results[2]  # (the drain variant is reported only)
    # Sanity (not a speed assert): the autoscaled worker must provision less than fixed max
    # and wait far less than fixed min.
    ok = auto.worker_seconds < fixed_max.worker_seconds and auto.p95 < results[0].p95
    if not ok:
        print("FAIL: autoscaling neither saved worker-seconds nor cut the wait", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
