"""`make demo` / `python -m ferroq.demo`: a realistic mix on an embedded SQLite file.

Enqueues thumbnails at different priorities, delayed reminder e-mails, a flaky
upstream that succeeds after retries, and a charge that dead-letters; runs a worker
until the queue is empty; prints what happened.
"""

from __future__ import annotations

import argparse
import logging
import asyncio
import os
import random
import tempfile
import time
from collections import Counter
from typing import Any

import ferroq


class UpstreamUnavailable(Exception):
    """A transient error: worth retrying."""


class CardDeclined(Exception):
    """A permanent error: retrying cannot help."""


def build(path: str) -> tuple[ferroq.Queue, dict[str, ferroq.TaskBase[..., Any]]]:
    q = ferroq.Queue(path, durability="full", retention=ferroq.Retention(completed_age=7 * 86400))
    calls: Counter[int] = Counter()
    # The partner API takes at most 2 calls at once and 200 per second, from every worker.
    q.group(
        "partner-api",
        breaker=ferroq.CircuitBreaker(failure_threshold=20, window=60, open_for=5),
        throttle=ferroq.Throttle(rate=200, max_concurrency=2),
    )

    @q.task(name="thumbnail", priority=0)
    def thumbnail(image: str, width: int) -> dict[str, object]:
        time.sleep(random.uniform(0.001, 0.005))  # pretend to resize
        return {"image": image, "width": width, "bytes": width * 37}

    @q.task(name="send_email", priority=5, resource_group="smtp")
    async def send_email(to: str, subject: str) -> str:
        await asyncio.sleep(0.002)
        return f"sent {subject!r} to {to}"

    @q.task(
        name="sync_inventory",
        max_attempts=5,
        retry=ferroq.RetryPolicy(base_delay=0.05, max_delay=1.0),
        resource_group="partner-api",
    )
    def sync_inventory(sku: str) -> int:
        ctx = ferroq.current_task()
        calls[ctx.id] += 1
        if ctx.attempt < 3:  # the partner API is down for the first two tries
            raise UpstreamUnavailable(f"partner API timed out for {sku}")
        return len(sku)

    @q.task(
        name="charge",
        max_attempts=3,
        retry=ferroq.RetryPolicy(base_delay=0.05, fatal=(CardDeclined,)),
        resource_group="payments",
    )
    def charge(order: int, cents: int) -> str:
        if cents > 100_000:
            raise CardDeclined(f"order {order}: card declined for {cents} cents")
        return f"charged {cents}"

    return q, {"thumbnail": thumbnail, "send_email": send_email, "sync_inventory": sync_inventory, "charge": charge}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", help="database file (default: a fresh temporary file)")
    parser.add_argument("--thumbnails", type=int, default=2000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="  [log] %(levelname)s %(message)s")
    path = args.db or os.path.join(tempfile.mkdtemp(prefix="ferroq-demo-"), "demo.db")
    q, t = build(path)

    print(f"ferroq {ferroq.__version__} demo on {path}")
    started = time.perf_counter()
    ids = q.enqueue_many(t["thumbnail"].call(f"img-{i}.png", width=w) for i in range(args.thumbnails) for w in (128,))
    urgent = t["thumbnail"].using(priority=9).enqueue("hero.png", width=1920)
    reminder = t["send_email"].using(delay=0.5).enqueue("ada@example.com", "your order shipped")
    welcome = t["send_email"].enqueue("grace@example.com", "welcome")
    dup = t["send_email"].using(unique_key="welcome:grace").enqueue("grace@example.com", "welcome")
    again = t["send_email"].using(unique_key="welcome:grace").enqueue("grace@example.com", "welcome")
    flaky = t["sync_inventory"].enqueue("SKU-123")
    ok_charge = t["charge"].enqueue(1001, 4_999)
    bad_charge = t["charge"].enqueue(1002, 250_000)
    enqueued = time.perf_counter() - started
    print(
        f"enqueued {len(ids) + 7} tasks ({len(ids)} in one enqueue_many) in {enqueued * 1000:.1f} ms; "
        f"unique key deduplicated: {dup.id == again.id and not again.created}"
    )

    worker = ferroq.Worker(q, concurrency=8, lease=10.0)
    began = time.perf_counter()
    stats = worker.run(until_empty=True)
    took = time.perf_counter() - began
    print(f"worker: {stats} in {took:.2f} s ({stats.claimed / took:,.0f} runs/s)\n")

    print("tasks by status:", q.counts())
    print("urgent thumbnail:", urgent.result(timeout=5))
    print("welcome e-mail:  ", welcome.result(timeout=5))
    sent = q.get(reminder.id)
    waited = (sent.started_at - sent.created_at).total_seconds() if sent.started_at else float("nan")
    print("delayed reminder:", reminder.result(timeout=5), f"(ran {waited:.2f} s after enqueue)")
    info = q.get(flaky.id)
    print(f"flaky inventory sync: {info.status} after {info.attempts} attempts -> {info.result}")
    print("good charge:", ok_charge.result(timeout=5))
    try:
        bad_charge.result(timeout=5)
    except ferroq.TaskFailed as e:
        print(f"declined charge dead-lettered: {e.error.type}: {e.error.message}")
    print("\nhistory of the flaky task:")
    for step in q.history(flaky.id):
        error = f"  ({step.error.type}: {step.error.message})" if step.error else ""
        print(f"  {step.at:%H:%M:%S.%f} {step.from_status or '-':>9} -> {step.to_status:<9}{error}")
    counts = q.counts()
    expected_completed = len(ids) + 6
    assert counts["completed"] == expected_completed and counts["dead"] == 1, counts
    print("\nper resource group (q.metrics), times in ms:")
    for group, m in q.metrics(window=300).items():
        print(
            f"  {group:<12} completed {m.completed:>4}  retried {m.retried:>2}  dead {m.dead}  "
            f"wait p95 {m.wait.p95 * 1000:6.1f}  run p50 {m.run.p50 * 1000:5.2f}  p99 {m.run.p99 * 1000:5.2f}"
        )
    partner = q.group("partner-api").state()
    print(f"partner-api circuit: {partner.circuit}, concurrency cap {partner.concurrency_limit}")
    print("\nok: nothing lost, one dead letter, everything else completed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
