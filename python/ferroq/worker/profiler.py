"""The worker's profiler (``Worker(profile=True)``): where its time goes, per stage (claim,
decode, wait for a runner, run, encode, record, commit) and per task name (wall and CPU
time, peak memory delta), added to the metrics table every second so ``ferroq profile``
reads it from another process while the worker runs.

Off, nothing here is used: the worker builds its usual collaborators and its per-task path
has no profiling branch. On, profiled subclasses time each stage around the same code."""

from __future__ import annotations

import threading
import time
import tracemalloc
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from .claim_loop import ClaimLoop
from .completer import Completer
from .runners import ThreadRunners

if TYPE_CHECKING:
    from .._core import ClaimedTask, Outcomes, Store
    from ..queue import Queue
    from .coordinator import Worker
    from .runs import Outcome, Run

#: Metric names in the metrics table (values in µs; memory in bytes). Each stage sample is
#: one task's share of that stage, so a stage's sum is its total time and its count the
#: tasks that went through it.
STAGE = "profile:stage:"
TASK = "profile:task:"
STAGES = ("claim", "decode", "wait", "run", "encode", "record", "commit")

_perf = time.perf_counter


def _us(seconds: float) -> int:
    return max(0, int(seconds * 1_000_000))


class Profiler:
    """Samples buffered in this process until ``push`` hands them to the store."""

    def __init__(self, memory: bool = True) -> None:
        #: Peak memory per run by tracemalloc (most of the profiler's cost: every allocation
        #: in the process is traced while it is on).
        self.memory = memory
        self._lock = threading.Lock()
        self._samples: defaultdict[str, list[int]] = defaultdict(list)
        #: perf_counter() when each claimed run was handed over (for the wait for a runner).
        self.handed: dict[int, float] = {}
        self.local = threading.local()
        self._started_tracing = False

    def start(self) -> None:
        if self.memory and not tracemalloc.is_tracing():
            tracemalloc.start()
            self._started_tracing = True

    def stop(self) -> None:
        if self._started_tracing:
            tracemalloc.stop()
            self._started_tracing = False

    def add(self, name: str, value: int) -> None:
        with self._lock:
            self._samples[name].append(value)

    def stage(self, stage: str, seconds: float) -> None:
        self.add(STAGE + stage, _us(seconds))

    def push(self, queue: Queue) -> None:
        """Hands the buffered samples to the store (the next metrics flush writes them)."""
        with self._lock:
            samples, self._samples = self._samples, defaultdict(list)
        store = queue._engine
        for name, values in samples.items():
            store.record_samples(queue.name, "", name, values)


class TimedSerializer:
    """The queue's serializer, timing each call into this thread's last decode/encode."""

    def __init__(self, inner: Any, profiler: Profiler) -> None:
        self.inner = inner
        self.profiler = profiler

    def loads(self, data: bytes) -> Any:
        t = _perf()
        try:
            return self.inner.loads(data)
        finally:
            self.profiler.local.decode = _perf() - t

    def dumps(self, value: Any) -> bytes:
        t = _perf()
        try:
            return bytes(self.inner.dumps(value))
        finally:
            self.profiler.local.encode = _perf() - t

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class QueueView:
    """The queue as the profiled runners see it: its serializer timed."""

    def __init__(self, queue: Queue, serializer: TimedSerializer) -> None:
        self._queue = queue
        self.serializer = serializer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)


class ProfiledClaimLoop(ClaimLoop):
    def __init__(self, worker: Worker, profiler: Profiler) -> None:
        super().__init__(worker)
        self.profiler = profiler

    def claim(self, store: Store, name: str, free: int, lease_ms: int) -> list[ClaimedTask]:
        t = _perf()
        rows = super().claim(store, name, free, lease_ms)
        seconds = _perf() - t
        for _ in rows:  # each task's share (an empty claim is idle time, not a stage)
            self.profiler.stage("claim", seconds / len(rows))
        return rows

    def start(self, rows: list[ClaimedTask]) -> None:
        handed, now = self.profiler.handed, _perf()
        for row in rows:
            handed[row.id] = now
        super().start(rows)


class ProfiledRunners(ThreadRunners):
    def __init__(self, worker: Worker, profiler: Profiler) -> None:
        super().__init__(worker)
        self.profiler = profiler
        self.queue = QueueView(worker.queue, TimedSerializer(worker.queue.serializer, profiler))  # type: ignore[assignment]

    def execute(self, run: Run) -> Outcome | None:
        p, local = self.profiler, self.profiler.local
        start = _perf()
        handed = p.handed.pop(run.ctx.id, None)
        if handed is not None:
            p.stage("wait", start - handed)
        local.decode = local.encode = 0.0
        cpu = time.thread_time()
        tracing = p.memory and tracemalloc.is_tracing()
        if tracing:
            memory = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()  # process-wide: with several threads, peaks overlap
        try:
            return super().execute(run)
        finally:
            wall = _perf() - start
            cpu = time.thread_time() - cpu
            decode, encode = local.decode, local.encode
            p.stage("decode", decode)
            if encode:
                p.stage("encode", encode)
            if run.run_us is not None:
                p.add(STAGE + "run", max(0, run.run_us - _us(encode)))
            name = TASK + run.ctx.name
            p.add(name + ":wall", _us(wall))
            p.add(name + ":cpu", _us(cpu))
            if tracing:
                p.add(name + ":mem", max(0, tracemalloc.get_traced_memory()[1] - memory))


class ProfiledCompleter(Completer):
    def __init__(self, worker: Worker, profiler: Profiler) -> None:
        super().__init__(worker)
        self.profiler = profiler

    def commit(self, rows: Outcomes) -> list[str | None]:
        t = _perf()
        try:
            return super().commit(rows)
        finally:
            self.profiler.local.commit = _perf() - t

    def flush(self, batch: list[Outcome]) -> None:
        local, handed = self.profiler.local, self.profiler.handed
        local.commit = 0.0
        start = _perf()
        super().flush(batch)
        total = _perf() - start
        for run, *_ in batch:  # runs that never reached a runner thread (async, batch, process pool)
            handed.pop(run.ctx.id, None)
        # Per task: the batch's time shared by its runs.
        share = 1 / max(1, len(batch))
        for _ in batch:
            self.profiler.stage("commit", local.commit * share)
            self.profiler.stage("record", (total - local.commit) * share)
