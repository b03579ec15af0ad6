"""The worker: claims tasks in batches into a small local buffer, runs processors on threads
(sync), an event loop (async) or child processes (``pool="process"``), records outcomes in
batched transactions, heartbeats leases, rescues expired leases of dead workers, applies
retention.

How the package reads: ``Worker`` (``coordinator``) owns the state the worker's threads
share (runs in flight, the local buffer, the stop events, the stats) and its lifecycle;
each concept is a collaborator in its own module, a small class holding the coordinator
(or plain functions taking just what they need), not a mixin: a reader of one concept sees
in one place what it touches of the shared state (``self.worker._inflight`` ...), and the
coordinator's ``__init__`` lists every part.

- ``runs``: a claimed task's ``Run``, a ``Batch`` of them, the ``Outcome`` a run ends with,
  ``WorkerStats``;
- ``claim_loop``: claiming into the buffer (adaptive prefetch), forming batches, idle waits;
- ``runners``: the runner threads, executing sync and batch tasks (the per-task path);
- ``hooks``: ``before_run`` / ``after_run`` and the run's tracing span, around a processor;
- ``async_runner``: the event loop that runs async processors;
- ``process_pool``: ``pool="process"``, each runner thread's child process;
- ``failures``: a run's end into its outcome: retry policy, fatal errors, Retry-After, the
  result's encoding;
- ``completer``: the thread that records outcomes in batches;
- ``maintenance``: heartbeats, timeouts, registration, rescue, priority aging, retention;
- ``journal``: the run journal's notes (started, handed to a child, returned, forgotten);
- ``breaker_view`` and ``group_holds``: a group held by failures seen in this process;
- ``unknown``: claimed tasks with no processor here, given back;
- ``signals``: SIGINT and SIGTERM.

Collaborators import each other only under ``TYPE_CHECKING`` where one refers to the
coordinator, so any module imports on its own. The store is reached only through the
queue (``Queue._engine``). On the per-task path (``ThreadRunners.execute``, the runner
loop, ``Completer.flush``) the code is as it was in one file: no layer of calls was added.
"""

from __future__ import annotations

from .claim_loop import PREFETCH_MAX
from .autoscale import Autoscale
from .coordinator import Worker
from .hooks import RunOutcome
from .maintenance import METRICS_INTERVAL, WORKER_SEEN_INTERVAL
from .runs import WorkerStats

# The constants are public too (tests and user code tune against them).
__all__ = [
    "Autoscale",
    "METRICS_INTERVAL",
    "PREFETCH_MAX",
    "WORKER_SEEN_INTERVAL",
    "RunOutcome",
    "Worker",
    "WorkerStats",
]
