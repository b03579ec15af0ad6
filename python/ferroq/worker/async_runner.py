"""Async processors: one event loop on its own thread runs up to ``concurrency`` of them at
once, each with its own timeout timer (so a ``TimeoutError`` a processor raises itself stays
its own error)."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import TYPE_CHECKING

from ..context import _current
from ..tracebacks import format_traceback
from .journal import note_return, note_start
from .runs import Outcome, Run

if TYPE_CHECKING:
    from .coordinator import Worker


class AsyncRunner:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: Claimed async runs not started yet: at most ``concurrency`` run at once.
        self.waiting: deque[Run] = deque()

    def start(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
                # Runs still pending were released by the drain; cancel them and clean up.
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()

        self._thread = threading.Thread(target=serve, name="ferroq-asyncio", daemon=True)
        self._thread.start()
        ready.wait()
        self.loop = loop

    def stop(self) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            # A processor stuck in blocking code cannot be cancelled; do not wait forever.
            if self._thread is not None:
                self._thread.join(timeout=5)
            self.loop = None

    def submit(self, runs: list[Run]) -> None:
        """From the claim loop: queues runs for the event loop."""
        assert self.loop is not None
        self.waiting.extend(runs)
        # One wake-up of the loop per claim, not per task: each is a write to its pipe.
        self.loop.call_soon_threadsafe(self._start_waiting)

    def _start_waiting(self) -> None:
        """In the event loop: starts waiting async runs while fewer than ``concurrency`` run,
        each a task held until it ends (the loop itself keeps only weak references)."""
        assert self.loop is not None
        waiting, running = self.waiting, self._tasks
        while len(running) < self.worker.concurrency:
            try:
                run = waiting.popleft()
            except IndexError:
                return
            task = self.loop.create_task(self._run(run))
            running.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._start_waiting()

    async def _run(self, run: Run) -> None:
        assert run.task is not None
        w = self.worker
        if run.ctx.stopped and w._skip_stopped(run):
            return  # given back (or its lease lost) while it waited for a free slot
        loop = asyncio.get_running_loop()
        if w._breakers.held and w._breakers.holds(run.ctx.resource_group):
            await loop.run_in_executor(None, w._release, [run])
            return
        _current.set(run.ctx)
        timeout = run.task.options.timeout
        timed_out = False
        me = asyncio.current_task()
        assert me is not None

        def expire() -> None:
            nonlocal timed_out
            timed_out = True
            me.cancel()

        # Our own timer, so a TimeoutError the processor raises itself stays its own error.
        timer = None if timeout is None else asyncio.get_running_loop().call_later(timeout, expire)
        outcome: Outcome | None
        try:
            data = w.queue.serializer.loads(run.payload)
            note_start(w._journal, run)
            try:
                hooks = w._hooks
                if hooks is None:
                    result = await run.task.fn(*data["args"], **data["kwargs"])
                else:
                    result = await hooks.acall(run.task.fn, run.ctx, data)
            finally:
                note_return(w._journal, run)
        except asyncio.CancelledError:
            if not timed_out:
                raise  # the worker is shutting down; the run was already released
            w._count("timed_out")
            exc = TimeoutError(f"task {run.ctx.name!r} exceeded its timeout of {timeout}s and was cancelled")
            outcome = w._outcomes.settled_failure(run, exc, None)
        except BaseException as exc:  # noqa: BLE001
            outcome = w._outcomes.settled_failure(run, exc, format_traceback(exc))
        else:
            outcome = w._outcomes.settled_success(run, result)
        finally:
            if timer is not None:
                timer.cancel()
        if outcome is not None:
            w._to_record.put([outcome])
        if w._breakers.tripped:
            loop.run_in_executor(None, w._holds.give_back_tripped)  # not on the loop: it writes
