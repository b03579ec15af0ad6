"""asyncio producers: the machinery behind ``aenqueue``, ``aresult``, ``aget`` and ``aevents``.

Storage calls block (a commit waits for its fsync), so a coroutine runs them on a small
dedicated thread pool; the core releases the GIL around storage work, so the event loop
keeps running meanwhile. Concurrent calls from many coroutines reach the store from many
threads at once, which is what its group commit merges into shared transactions (one fsync
for the lot), exactly as for many producer threads.

Waiting for a change (``aresult``, ``aevents``) never sleeps on the loop: one watcher thread
per queue waits for the store's change notifications, in slices of at most 50 ms, and wakes
the coroutines waiting on it. A cancelled coroutine only leaves its registration, which it
removes; the watcher exits shortly after nobody waits.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from .errors import InvalidArgument

if TYPE_CHECKING:
    from .queue import Queue
    from ._core import NewTask

T = TypeVar("T")

#: Threads running storage calls for coroutines (per process). Concurrent enqueues share
#: commits in groups of up to this many; more threads add GIL contention, not throughput
#: (see benches/async_enqueue.py).
EXECUTOR_THREADS = 32
#: The longest the watcher waits on the store in one call: how late it notices that nobody
#: waits any more.
WAIT_SLICE = 0.05
#: How long a watcher with no waiters stays before its thread exits (a waiter re-registers
#: after each read; a thread started anew would cost each of them a spurious re-read).
WATCHER_LINGER = 1.0
#: A waiter re-reads at least this often even without a notification (as ``result()`` does).
RECHECK = 1.0

_lock = threading.Lock()
_watchers_lock = threading.Lock()
_all_watchers: weakref.WeakSet[ChangeWatcher] = weakref.WeakSet()
_executor: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(EXECUTOR_THREADS, thread_name_prefix="ferroq-aio")
        return _executor


async def run(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on the storage thread pool, awaited. Cancelling the await does not stop
    a call already running (an enqueue may still commit)."""
    return await asyncio.get_running_loop().run_in_executor(_pool(), fn, *args)


class Batcher:
    """Coalesces the ``aenqueue`` calls one event loop makes for one queue.

    Every call made in one pass of the loop joins one ``store.enqueue`` on the thread pool
    (one transaction, one fsync), and batches from several loops or threads still share
    commits through the store's group commit. A call pays a future on the loop, not a
    thread hand-off each: coroutines keep up with producer threads (see
    benches/async_enqueue.py). Each caller still gets its own answer: a call the store
    refuses (validation runs before the transaction, so nothing of the batch was written)
    sends the batch again one call at a time, and only that caller gets the error.
    """

    __slots__ = ("queue", "loop", "calls", "futures")

    def __init__(self, queue: Queue, loop: asyncio.AbstractEventLoop) -> None:
        self.queue = queue
        self.loop = loop
        self.calls: list[NewTask] = []
        self.futures: list[asyncio.Future[tuple[int, bool]]] = []

    def submit(self, core: NewTask) -> asyncio.Future[tuple[int, bool]]:
        future: asyncio.Future[tuple[int, bool]] = self.loop.create_future()
        if not self.calls:
            self.loop.call_soon(self.flush)  # after the calls the other ready coroutines make
        self.calls.append(core)
        self.futures.append(future)
        return future

    def flush(self) -> None:
        _forget(self)  # the next call of this loop starts a new batch
        calls, futures = self.calls, self.futures
        for i in range(0, len(calls), MAX_BATCH):
            chunk = futures[i : i + MAX_BATCH]
            try:
                done = self.loop.run_in_executor(_pool(), _enqueue_batch, self.queue, calls[i : i + MAX_BATCH])
            except RuntimeError as e:  # the pool is shut down (the interpreter is exiting)
                for future in chunk:
                    if not future.done():
                        future.set_exception(e)
                continue
            done.add_done_callback(functools.partial(_deliver, chunk))


#: The most calls one store.enqueue of a batcher carries (its tuples are read holding the GIL).
MAX_BATCH = 500


def _enqueue_batch(queue: Queue, calls: list[NewTask]) -> list[tuple[int, bool] | BaseException]:
    try:
        return list(queue._store.enqueue(queue.name, calls))
    except InvalidArgument:
        if len(calls) == 1:
            raise
    answers: list[tuple[int, bool] | BaseException] = []
    for call in calls:
        try:
            answers.append(queue._store.enqueue(queue.name, [call])[0])
        except InvalidArgument as e:
            answers.append(e)
    return answers


def _deliver(
    futures: list[asyncio.Future[tuple[int, bool]]], done: asyncio.Future[list[tuple[int, bool] | BaseException]]
) -> None:
    error = done.exception()
    for i, future in enumerate(futures):
        if future.done():  # its coroutine was cancelled (the task may still be stored)
            continue
        answer = error if error is not None else done.result()[i]
        if isinstance(answer, BaseException):
            future.set_exception(answer)
        else:
            future.set_result(answer)


def batcher(queue: Queue) -> Batcher:
    """The running loop's open batch for ``queue``. It is kept (in a plain dict: not every
    loop class takes weak references) only from its first call until its flush."""
    loop = asyncio.get_running_loop()
    with _watchers_lock:
        batchers: dict[asyncio.AbstractEventLoop, Batcher] = queue.__dict__.setdefault("_aio_batchers", {})
        found = batchers.get(loop)
        if found is None:
            found = batchers[loop] = Batcher(queue, loop)
    return found


def _forget(batch: Batcher) -> None:
    with _watchers_lock:
        batchers: dict[asyncio.AbstractEventLoop, Batcher] = batch.queue.__dict__["_aio_batchers"]
        if batchers.get(batch.loop) is batch:
            del batchers[batch.loop]


class Waiter:
    """One coroutine's registration with a watcher: set when anything commits after it."""

    __slots__ = ("loop", "future")

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[None] = self.loop.create_future()

    def wake(self) -> None:
        try:
            self.loop.call_soon_threadsafe(_set, self.future)
        except RuntimeError:  # its loop is closed: nobody is waiting any more
            pass


def _set(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class ChangeWatcher:
    """Wakes coroutines when the queue's file changes (a commit by this or any process).

    Correctness: a waiter registers *before* it reads the store. The watcher, after each
    change, takes a fresh token and only then wakes the waiters registered at that moment;
    a waiter registered later read after that token, so the next commit wakes it. A new
    thread wakes every waiter once at its start, having no token older than their reads.
    """

    def __init__(self, queue: Queue) -> None:
        self._store = queue._store
        self._path = queue.path
        self._lock = threading.Lock()
        self._waiters: set[Waiter] = set()
        self._thread: threading.Thread | None = None
        _all_watchers.add(self)

    def register(self) -> Waiter:
        waiter = Waiter()
        with self._lock:
            self._waiters.add(waiter)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"ferroq-aio-watch {self._path}", daemon=True)
                self._thread.start()
        return waiter

    def unregister(self, waiter: Waiter) -> None:
        with self._lock:
            self._waiters.discard(waiter)

    async def wait(self, waiter: Waiter, timeout: float) -> None:
        """Until ``waiter`` is woken or ``timeout`` seconds pass (never raises on timeout)."""
        await asyncio.wait((waiter.future,), timeout=timeout)

    def _wake_all(self) -> None:
        with self._lock:
            woken, self._waiters = self._waiters, set()
        for waiter in woken:
            waiter.wake()

    def _run(self) -> None:
        idle_since: float | None = None
        try:
            token = self._store.change_token()
            self._wake_all()
            while True:
                with self._lock:
                    if self._waiters:
                        idle_since = None
                    elif idle_since is None:
                        idle_since = time.monotonic()
                    elif time.monotonic() - idle_since >= WATCHER_LINGER:
                        self._thread = None
                        return
                if self._store.wait_for_change(token, WAIT_SLICE):
                    token = self._store.change_token()
                    self._wake_all()
        except Exception:  # noqa: BLE001 - whatever it is, the waiters must not wait on a dead thread
            # The store failed (or the process is going down): waiters re-read and meet the
            # error themselves, as a typed exception; the next registration starts anew.
            time.sleep(WAIT_SLICE)  # a store failing at once must not spin the waiters
            with self._lock:
                self._thread = None
            self._wake_all()


def watcher(queue: Queue) -> ChangeWatcher:
    """The queue's watcher (made on first use; it holds no thread while nobody waits)."""
    found: ChangeWatcher | None = queue.__dict__.get("_aio_watcher")
    if found is None:
        with _watchers_lock:
            found = queue.__dict__.setdefault("_aio_watcher", ChangeWatcher(queue))
    return found


def _after_fork_in_child() -> None:
    # Threads do not survive fork(): a pool or watcher copied from the parent would believe
    # its threads still run and never run anything. The child starts afresh.
    global _executor, _lock, _watchers_lock
    _executor = None
    _lock = threading.Lock()
    _watchers_lock = threading.Lock()
    for w in list(_all_watchers):
        w._lock = threading.Lock()
        w._waiters = set()
        w._thread = None


os.register_at_fork(after_in_child=_after_fork_in_child)
