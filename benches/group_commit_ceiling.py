"""The ceiling for fsync'd single enqueues from many Python threads, without ferroq.

Each thread sends a one-byte request down a pipe and blocks until it is answered, as a
caller of ``Task.enqueue`` blocks until its group is committed. The committer is a
separate process (no GIL shared with the callers): it takes every request waiting, appends
``--bytes`` to a file and fsyncs it (as a WAL commit appends pages), then answers the group.
So the figure is what N Python threads can do against a perfect group commit on this disk:
their turnaround through the GIL after each wake-up is the only cost left.

    .venv/bin/python benches/group_commit_ceiling.py [--threads 16] [--seconds 3] [--bytes 12288]

Compare with ``enqueue, 16 thread(s), full`` in ``python -m ferroq.bench``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import select
import tempfile
import threading
import time
from typing import NamedTuple


class Ceiling(NamedTuple):
    threads: int
    commits_per_s: float
    callers_per_fsync: float


def _committer(requests: int, answers: list[int], stop: int, path: str, size: int, out: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    block, offset, groups, served = b"x" * size, 0, 0, 0
    while True:
        ready, _, _ = select.select([requests, stop], [], [])
        if stop in ready:
            break
        group = os.read(requests, 4096)  # every request waiting now: one byte per caller
        os.pwrite(fd, block, offset)
        offset += size
        os.fsync(fd)
        for caller in group:
            os.write(answers[caller], b"k")
        groups += 1
        served += len(group)
    os.write(out, f"{served} {groups}".encode())


def measure(threads: int = 16, seconds: float = 3.0, size: int = 12288) -> Ceiling:
    if not 1 <= threads <= 255:
        raise ValueError("threads must be between 1 and 255 (one byte names a caller)")
    request_r, request_w = os.pipe()
    answer_pipes = [os.pipe() for _ in range(threads)]
    stop_r, stop_w = os.pipe()
    out_r, out_w = os.pipe()
    with tempfile.TemporaryDirectory(dir=os.getcwd()) as d:
        committer = multiprocessing.get_context("fork").Process(
            target=_committer,
            args=(request_r, [w for _, w in answer_pipes], stop_r, os.path.join(d, "wal"), size, out_w),
        )
        committer.start()
        done = threading.Event()
        counts = [0] * threads

        def caller(i: int) -> None:
            me, answer, n = bytes([i]), answer_pipes[i][0], 0
            while not done.is_set():
                os.write(request_w, me)
                os.read(answer, 1)
                n += 1
            counts[i] = n

        pool = [threading.Thread(target=caller, args=(i,)) for i in range(threads)]
        start = time.perf_counter()
        for t in pool:
            t.start()
        time.sleep(seconds)
        done.set()
        for t in pool:
            t.join()
        elapsed = time.perf_counter() - start
        os.write(stop_w, b"x")
        committer.join()
        served, groups = map(int, os.read(out_r, 64).split())
    for fd in (request_r, request_w, stop_r, stop_w, out_r, out_w, *(f for p in answer_pipes for f in p)):
        os.close(fd)
    return Ceiling(threads, sum(counts) / elapsed, served / max(groups, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--bytes", type=int, default=12288, help="appended and fsync'd per group")
    args = parser.parse_args()
    for n in sorted({1, args.threads}):
        c = measure(n, args.seconds, args.bytes)
        print(
            f"{c.threads:>3} thread(s): {c.commits_per_s:>9,.0f} commits/s returned, "
            f"{c.callers_per_fsync:.1f} callers per fsync"
        )


if __name__ == "__main__":
    main()
