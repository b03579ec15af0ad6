"""The Rust core. Internal: use the ``ferroq`` package API instead."""

from collections.abc import Callable, Iterable
from os import PathLike
from typing import Any, final

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "NAME_MAX_LEN",
    "PRIORITY_MAX",
    "PRIORITY_MIN",
    "SCHEMA_VERSION",
    "ClaimedTask",
    "FinishedTask",
    "ManualClock",
    "NewTask",
    "Outcomes",
    "RunJournal",
    "RunJournalView",
    "Store",
    "backoff_delay_ms",
    "check_max_attempts",
    "check_name",
    "check_priority",
    "hold_closes",
    "release_closes",
    "__version__",
]

__version__: str
PRIORITY_MIN: int
PRIORITY_MAX: int
NAME_MAX_LEN: int
DEFAULT_MAX_PAYLOAD: int
SCHEMA_VERSION: int

def hold_closes() -> None:
    """Just before fork(): waits for stores closing on their own threads, holds new ones."""

def release_closes() -> None:
    """Right after fork(), in the parent and in the child."""

def backoff_delay_ms(base: float, max: float, jitter: float, attempt: int) -> int:
    """Delay in ms before retrying after the ``attempt``-th failed run (jitter drawn at random)."""

def check_name(kind: str, value: str) -> None:
    """Raises InvalidArgument unless ``value`` is a valid task/queue/group name."""

def check_priority(value: int) -> None:
    """Raises InvalidArgument unless ``value`` is within PRIORITY_MIN..=PRIORITY_MAX."""

def check_max_attempts(value: int) -> None:
    """Raises InvalidArgument unless ``value`` is a valid max_attempts."""

@final
class NewTask:
    """A task to insert."""

    name: str
    group: str
    payload: bytes
    priority: int
    run_at_ms: int | None
    max_attempts: int
    unique_key: str | None
    cache_ttl_ms: int | None
    def __new__(
        cls,
        name: str,
        group: str,
        payload: bytes,
        priority: int,
        run_at_ms: int | None,
        max_attempts: int,
        unique_key: str | None,
        cache_ttl_ms: int | None = None,
    ) -> NewTask: ...

@final
class FinishedTask:
    """A finished task with its history, read by ``export_finished`` (opaque to Python)."""

    @property
    def id(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def corrupt(self) -> str | None: ...
    @staticmethod
    def checkpoint(name: str, payload: bytes, unique_key: str, at_ms: int) -> FinishedTask: ...

@final
class ClaimedTask:
    """A task a claim leased to a worker; outcomes of its run are fenced by ``token``."""

    id: int
    token: int
    name: str
    group: str
    payload: bytes
    priority: int
    attempt: int
    max_attempts: int
    created_at_ms: int
    def __new__(
        cls,
        id: int,
        token: int,
        name: str,
        group: str,
        payload: bytes,
        priority: int,
        attempt: int,
        max_attempts: int,
        created_at_ms: int,
    ) -> ClaimedTask: ...

@final
class Outcomes:
    """The outcomes of runs for one ``finish_many``."""
    def __new__(cls) -> Outcomes: ...
    def completed(self, id: int, token: int, result: bytes | None, run_us: int | None = None) -> None:
        """The run returned ``result`` (serialized; None: null)."""
    def failed(
        self,
        id: int,
        token: int,
        error: str,
        retry_delay_ms: int | None,
        counts: bool = False,
        hold_ms: int | None = None,
        run_us: int | None = None,
    ) -> None:
        """The run failed: retried after ``retry_delay_ms``, or dead when None; ``counts``: toward
        the group's breaker; ``hold_ms``: holds the group that long."""
    def __len__(self) -> int: ...

@final
class RunJournal:
    """A worker's run journal: which claimed tasks it started (see rust/run_journal.rs)."""
    @property
    def path(self) -> str: ...
    def started(self, id: int, token: int) -> int:
        """Notes a run about to start; its slot, or -1 if the journal is full."""
    def handed(self, id: int, token: int) -> int:
        """Notes a run handed to a child process, which notes its start; its slot or -1."""
    def returned(self, slot: int, id: int) -> None:
        """Notes that the run in ``slot`` returned."""
    def forget(self, slots: list[int]) -> None:
        """Frees the slots of runs recorded or given back (-1s skipped)."""

@final
class RunJournalView:
    """A worker's run journal as its child processes write it."""
    def __new__(cls, path: str) -> RunJournalView: ...
    def started(self, slot: int, id: int) -> None:
        """The processor of the run handed in ``slot`` is about to be called."""
    def returned(self, slot: int, id: int) -> None:
        """The processor of the run in ``slot`` returned."""

@final
class ManualClock:
    """A clock that moves only when told to (tests, replayed benchmarks)."""

    def __new__(cls, start_ms: int) -> ManualClock: ...
    def advance(self, ms: int) -> None: ...
    def now_ms(self) -> int: ...

@final
class Store:
    """One SQLite task store file; every method releases the GIL around storage work."""

    def __new__(
        cls,
        path: str | PathLike[str],
        *,
        durability: str = "full",
        busy_timeout: float = 30.0,
        max_payload: int = ...,
        task_events: str = "failures",
        clock: ManualClock | None = None,
    ) -> Store: ...
    @property
    def path(self) -> str:
        """The database file, or a PostgreSQL URL without its password."""
    @property
    def max_payload(self) -> int:
        """Largest accepted payload or result, in bytes."""
    def close(self) -> None:
        """Closes this process's connections; they reopen on next use."""
    def before_fork(self) -> None:
        """Just before fork(): waits for calls in flight, closes connections, holds the locks."""
    def after_fork_in_parent(self) -> None:
        """Right after fork(), in the parent: releases what ``before_fork`` holds."""
    def change_token(self) -> tuple[int, int]:
        """Where the file stands now, for ``wait_for_change``."""
    def wait_for_change(self, token: tuple[int, int], timeout: float) -> bool:
        """Waits until anything commits after ``token`` (this process: at once; another: ~1 ms)."""
    def notify(self) -> None:
        """Wakes every ``wait_for_change`` in this process."""
    def now_ms(self) -> int:
        """Current time in epoch milliseconds by the store's clock."""
    def enqueue(self, queue: str, tasks: list[NewTask]) -> list[tuple[int, bool]]:
        """Inserts tasks in one transaction; (id, created) per task."""
    def enqueue_calls(
        self, queue: str, calls: Iterable[Any], call_type: type, encoded_type: type, check: Callable[[bytes], None]
    ) -> list[int]:
        """Inserts ``calls`` (instances of ``call_type``: name, payload, options) in one
        transaction, reading their attributes directly; their ids, in order. Calls that are
        not exactly ``encoded_type`` (hand-built) have their payload passed to ``check``."""
    def claim(self, queue: str, worker: str, limit: int, lease_ms: int) -> list[ClaimedTask]:
        """Leases up to ``limit`` ready tasks."""
    def complete(self, id: int, token: int, result: bytes) -> None:
        """running -> completed; LeaseLost if the lease is gone."""
    def fail(self, id: int, token: int, error: str, retry_delay_ms: int | None) -> str:
        """running -> pending (retry) or dead; returns the new status."""
    def finish_many(self, outcomes: Outcomes) -> list[str | None]:
        """Records outcomes in one transaction; per outcome the new status, or None if the lease
        was lost."""
    def heartbeat(self, leases: list[tuple[int, int]], lease_ms: int) -> list[bool]:
        """Extends leases; whether each was still held."""
    def progress(self, id: int, token: int, progress: float, message: str | None = None) -> None:
        """Stores progress (0..1) and a message on a running task; a "progress" event."""
    def release(self, id: int, token: int) -> None:
        """running -> pending, giving the attempt back."""
    def defer(self, tasks: list[tuple[int, int, str]], grace_ms: int) -> list[tuple[str, int, int] | None]:
        """Gives back (id, token, error json) claims the worker has no processor for: pending
        again with the attempt given back, claimable after a delay doubling with each
        deferral in a row (1 s .. 5 min); dead with the error once grace_ms has passed since
        the first. Per task (status, deferrals in a row, run_at ms), None if the lease was lost."""
    def rescue(self, queue: str) -> list[tuple[int, str]]:
        """One rescuer pass: leases whose holder stopped renewing them back to pending (or
        dead): (id, new status)."""
    def run_journal(self, worker: str, capacity: int) -> RunJournal:
        """Opens the run journal of ``worker``."""
    def clock_lead_ms(self) -> int:
        """How far the store's clock runs ahead of the wall clock after a backward step."""
    def get(self, queue: str, id: int) -> dict[str, Any]:
        """One task as a dict of its columns plus ``result``."""
    def cancel(self, queue: str, id: int) -> None:
        """pending -> cancelled."""
    def requeue(self, queue: str, id: int) -> None:
        """dead or cancelled -> pending."""
    def history(self, queue: str, id: int) -> list[tuple[str | None, str, int, str | None, str | None]]:
        """(from, to, at_ms, worker, error) per transition."""
    def counts(self, queue: str) -> list[tuple[str, int]]:
        """(status, count) for every status."""
    def prune(
        self,
        queue: str,
        completed_age_ms: int | None = None,
        completed_count: int | None = None,
        dead_age_ms: int | None = None,
        dead_count: int | None = None,
    ) -> int:
        """Deletes finished tasks beyond the limits; how many."""
    def next_run_at(self, queue: str) -> int | None:
        """Earliest run_at (ms) among pending tasks."""
    def pragmas(self) -> list[tuple[str, str]]:
        """(name, value) of the pragmas that matter, as read back."""
    def schema_versions(self) -> list[int]:
        """Migrations recorded in the file."""
    def quick_check(self) -> list[str]:
        """SQLite quick_check findings; ["ok"] when intact."""
    def configure_group(
        self,
        queue: str,
        group: str,
        breaker: tuple[int, int, int, int, int] | None,
        throttle: tuple[float | None, float, int | None, tuple[int, int | None, float, int] | None] | None,
    ) -> None:
        """Stores a group's breaker (threshold, window_ms, open_ms, max_open_ms, probes) and
        throttle (rate, burst, max_concurrency, adaptive (min, target_latency_ms, error_rate,
        cooldown_ms))."""
    def set_group_paused(self, queue: str, group: str, paused: bool) -> bool:
        """Pauses or resumes a group; whether it changed."""
    def forget_group(self, queue: str, group: str, force: bool) -> bool:
        """Forgets a group's settings, pause and breaker; whether it had any (InvalidTransition
        while it has unfinished tasks, unless force)."""
    def set_queue_paused(self, queue: str, paused: bool) -> bool:
        """Pauses or resumes a queue (resuming deletes its row); whether it changed."""
    def queue_paused(self, queue: str) -> bool:
        """Whether the queue is paused."""
    def circuit(self, queue: str, group: str, command: str, duration_ms: int | None = None, reason: str = "") -> str:
        """Opens, closes or resets a group's breaker; its state after."""
    def group_info(self, queue: str, group: str) -> dict[str, Any]:
        """A group's pause, breaker, throttle and task counts."""
    def circuit_state(self, queue: str, group: str) -> str:
        """The group's circuit ("closed", "open", "half_open") without counting its tasks."""
    def circuit_view(self, queue: str, group: str) -> tuple[str, int | None, tuple[int, int] | None]:
        """(circuit, ms until half-open while open with an end, (failure_threshold, window_ms)
        of its breaker or None), without counting its tasks."""
    def group_names(self, queue: str) -> list[str]:
        """Groups with settings or unfinished tasks."""
    def events(
        self, queue: str, group: str | None = None, after: int = 0, limit: int = 1000
    ) -> list[tuple[int, int, str, str | None, int | None, str, str | None]]:
        """(id, at_ms, queue, group, task_id, kind, detail_json) after id ``after``."""
    def latest_events(
        self, queue: str, kinds: list[str], up_to: int, limit: int
    ) -> list[tuple[int, int, str, str | None, int | None, str, str | None]]:
        """The newest ``limit`` events up to id ``up_to`` of these kinds (all if empty), oldest first."""
    def next_unblock_at(self, queue: str) -> int | None:
        """Earliest future time (ms) a group held by time may start a task again."""
    def age_priorities(self, queue: str, every_ms: int, step: int, max: int) -> int:
        """Raises the priority of pending tasks that waited; how many."""
    def last_event_id(self) -> int:
        """The newest event's id (0 if none)."""
    def flush_metrics(self) -> None:
        """Adds this process's figures since the last flush into the metrics table."""
    def metrics(self, queue: str, since_ms: int, raw_keep_ms: int) -> dict[str, dict[str, Any]]:
        """{group: {counter: n, "wait"/"run": (count, sum_us, max_us, p50_us, p95_us, p99_us)}}."""
    def metric_histograms(
        self, queue: str, group: str | None, name: str, bucket_ms: int, since_ms: int
    ) -> list[tuple[int, tuple[int, int, int, int, int, int]]]:
        """[(interval start ms, (count, sum_us, max_us, p50_us, p95_us, p99_us))], oldest first."""
    def record_events(self, queue: str, happened: list[tuple[str | None, str, str]]) -> None:
        """Records (group, kind, detail JSON) events of ``queue``."""
    def take_turn(self, queue: str, duty: str, every_ms: int) -> tuple[int, str] | None:
        """A shared duty's turn: (fence, saved state JSON), or None if another's is recent."""
    def end_turn(
        self, queue: str, duty: str, fence: int, state: str, happened: list[tuple[str | None, str, str]]
    ) -> bool:
        """Saves the turn's state and records its events unless a later turn was taken."""
    def metric_series(
        self, queue: str, group: str | None, name: str, bucket_ms: int, since_ms: int
    ) -> list[tuple[int, float]]:
        """[(interval start ms, value)] of one stored counter, oldest first."""
    def metrics_totals(
        self, bounds_us: list[int]
    ) -> list[tuple[str, str, dict[str, int], tuple[int, int, list[int]], tuple[int, int, list[int]]]]:
        """This process's totals: (queue, group, counters, wait buckets, run buckets)."""
    def prune_observability(self, events_ms: int, raw_metrics_ms: int, hourly_metrics_ms: int, workers_ms: int) -> int:
        """Deletes events, metrics and worker rows past their ages; how many."""
    def worker_seen(self, id: str, queue: str, hostname: str, pid: int, concurrency: int, pool: str) -> None:
        """Registers or renews a worker."""
    def declare_schedule(
        self,
        queue: str,
        name: str,
        task: str,
        cron: str,
        tz: str,
        missed: str,
        now_ms: int,
    ) -> dict[str, Any]:
        """Records or renews a schedule; returns it as stored."""
    def enqueue_tick(
        self,
        queue: str,
        name: str,
        tick_ms: int,
        task: NewTask,
    ) -> tuple[int, bool] | None:
        """Enqueues a schedule's tick unless it (or a later one) was; raises its last tick."""
    def schedules(self, queue: str) -> list[dict[str, Any]]:
        """The schedules declared on a queue, by name."""
    def worker_stopped(self, id: str) -> None:
        """Marks a worker stopped."""
    def workers(self, queue: str) -> list[dict[str, Any]]:
        """Registered workers, most recently seen first."""
    def oldest_due(self, queue: str) -> int | None:
        """When (ms) the longest-waiting due task became due."""
    def dead_since(self, queue: str, since_ms: int) -> int:
        """Tasks that went dead since since_ms."""
    def no_processor(self, queue: str, alive_since_ms: int) -> list[tuple[str, list[str], int]]:
        """(task name, workers seen since alive_since_ms without a processor for it, pending
        tasks of that name)."""
    # -- operations (rust/py/listing.rs) --
    def list_tasks(
        self,
        queue: str,
        statuses: list[str],
        group: str | None,
        name: str | None,
        after: int | None,
        newest_first: bool,
        limit: int,
        until: int | None = None,
    ) -> list[dict[str, Any]]:
        """One page of tasks (dicts like ``get``) by id after ``after`` (descending if ``newest_first``),
        reading no id beyond ``until``."""
    def count_finished(
        self, queue: str, status: str, finished_before: int | None, group: str | None, name: str | None
    ) -> int:
        """Finished tasks of ``status`` matching, finished before the time (ms)."""
    def purge_batch(
        self,
        queue: str,
        status: str,
        finished_before: int | None,
        group: str | None,
        name: str | None,
        after: tuple[int, int] | None,
        limit: int,
    ) -> tuple[int, list[int], tuple[int, int] | None]:
        """Deletes one batch in one transaction: (deleted, [], next cursor or None when done)."""
    def requeue_batch(
        self,
        queue: str,
        status: str,
        finished_before: int | None,
        group: str | None,
        name: str | None,
        after: tuple[int, int] | None,
        limit: int,
    ) -> tuple[int, list[int], tuple[int, int] | None]:
        """Requeues one batch of dead/cancelled tasks: (requeued, skipped ids, next cursor or None)."""
    def count_pending(self, queue: str, group: str | None, name: str | None) -> int:
        """Pending tasks (ready or delayed) matching."""
    def cancel_batch(
        self, queue: str, group: str | None, name: str | None, at: tuple[int, int] | None, limit: int
    ) -> tuple[int, tuple[int, int] | None]:
        """Cancels one batch of matching pending tasks: (cancelled, next cursor or None)."""
    def claim_in_groups(
        self, queue: str, groups: list[str], worker: str, limit: int, lease_ms: int
    ) -> list[ClaimedTask]:
        """``claim``, from these resource groups' tasks only."""
    def queue_names(self) -> list[str]:
        """Queues with tasks, settings or a pause in the file."""
    def task_names_like(self, queue: str, name: str) -> list[str]:
        """Stored task names equal to ``name`` or ending in ``.name``, sorted."""
    def record_samples(self, queue: str, group: str, name: str, values: list[int]) -> None:
        """Adds values to this process's histogram ``name`` (flushed with the metrics)."""
    def named_metrics(
        self, queue: str, prefix: str, since_ms: int, raw_keep_ms: int
    ) -> list[tuple[str, str, tuple[int, int, int, int, int, int]]]:
        """(group, name, (count, sum, max, p50, p95, p99)) of stored histograms named prefix..."""
    def task_run_times(
        self, queue: str, since_ms: int, raw_keep_ms: int
    ) -> list[tuple[str, tuple[int, int, int, int, int, int]]]:
        """(task name, (count, sum, max, p50, p95, p99) µs) of run times since since_ms."""
    def clear_cache(self, queue: str, name: str, key: str | None = None) -> int:
        """Ends the cache entries of task ``name`` (one key, or all); how many."""
    def export_finished(self, queue: str, after: int, until: int, limit: int) -> list[FinishedTask]:
        """Up to ``limit`` finished tasks with ids in (after, until], with their histories."""
    def import_finished(self, queue: str, tasks: list[FinishedTask]) -> list[int]:
        """Stores finished tasks of another store in one transaction; their new ids."""
