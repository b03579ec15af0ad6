"""Process-pool mode, ``Worker(queue, pool="process")``: each runner thread of the worker
owns one child process and runs its tasks there, so a run over its timeout can be killed
and a crashing run (a segfault, ``os._exit``, the OOM killer) costs one attempt, never the
worker.

The parent keeps all storage work (claims, heartbeats, outcomes). A child never touches
the store: it receives (task reference, payload bytes, context fields) over a pipe and
sends back the encoded result or a description of the error; ``progress()``,
``heartbeat()`` and ``cancelled()`` inside a child are requests the parent answers.
Children live across tasks; one is replaced only when it dies or is killed.
"""

from __future__ import annotations

import asyncio
import ctypes
import inspect
import multiprocessing
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any, Iterable

from .. import _core
from .. import errors as _errors
from ..context import TaskContext, _current
from ..errors import Fail, FerroqError, InvalidArgument, PayloadError, ProcessCrashed, Retry, TaskNotImportable
from ..info import TaskError
from ..policies import RetryPolicy
from ..serializers import Serializer
from ..task import TaskBase, by_reference
from ..tracebacks import format_traceback
from .hooks import RunHooks, check_batch_results
from .journal import note_handed, note_return

if TYPE_CHECKING:
    from .coordinator import Worker
    from .runs import Batch, Outcome, Run

__all__ = ["START_METHOD", "ChildError", "ProcessPool", "Slot", "check_importable"]

# Start method: "spawn", a fresh interpreter per child. Not "fork": the worker process has
# threads (runners, completer, maintenance) and a Rust store with its own locks, and
# children are replaced while those threads are busy; a fork copies any lock another
# thread holds at that instant (Python 3.12 warns about forking a multi-threaded process
# for this reason). Not "forkserver" either: it would save only the interpreter start (a
# child still imports ferroq and the user's module, ~0.1 s either way: before 3.14 the
# server does not preload __main__), for a long-lived helper process and global settings
# shared with user code, with __main__ handling that differs between Python versions.
# Spawn costs ~0.15 s per child, paid at worker start (all children at once) and after a
# crash or a timeout. Children find processors by reference (module + qualified name), and
# a script must start its worker under `if __name__ == "__main__":` (the child re-imports
# the script under another name).
START_METHOD = "spawn"
_mp = multiprocessing.get_context("spawn")

STARTUP_TIMEOUT = 60.0  # a child imports the user's modules, which may be slow
_TICK = 0.1  # how often a runner waiting on its child checks for a stop or a lost lease
_REQUESTS = ("progress", "heartbeat", "cancelled")
_MAIN_GUARD_HINT = (
    'a script that runs a process-pool worker must start it under `if __name__ == "__main__":` '
    "(the child re-imports the script), and its imports must work in a fresh process"
)

# Context fields sent with each run: id, name, resource group, attempt, max attempts, created (ms).
_Fields = tuple[int, str, str, int, int, int]
# An error as a child describes it: kind ("error", "retry", "fail", "refused"), type name,
# message, traceback, the names of the type's classes (MRO), the Retry delay.
_ErrorInfo = tuple[str, str, str, "str | None", list[str], "float | None"]


def _class_name(cls: type) -> str:
    module = cls.__module__
    if module == "__mp_main__":  # a child imports the script under this name; the parent calls it __main__
        module = "__main__"
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _reference(task: TaskBase[Any, Any]) -> tuple[str, str, str]:
    return (task.__module__, task.__qualname__, task.name)


def check_importable(tasks: Iterable[TaskBase[Any, Any]]) -> None:
    """Raises ``TaskNotImportable`` for a task no child could find by reference (a lambda,
    a nested function), before the worker claims anything. A task defined under the
    script's ``__main__`` guard passes here and fails in the child, as a dead task."""
    for task in tasks:
        module, qualname, name = _reference(task)
        found = by_reference(module, qualname, name)
        if found is not task and found is not task.fn:
            raise TaskNotImportable(f"task {name!r}: {module}.{qualname} is {found!r}, not this task's processor")


# -- the child -----------------------------------------------------------------------------


def _child_main(
    conn: Connection, serializer: Serializer, journal_path: str | None, hooks: RunHooks | None = None
) -> None:
    # The parent manages shutdown: a Ctrl-C or a SIGTERM sent to the whole process group
    # (systemd does that) must not kill a task the parent means to let finish.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    runner = _ChildRunner(conn, serializer, _attach_journal(journal_path), hooks)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the parent closed the pipe
            return
        if message[0] == "stop":
            return
        conn.send(runner.handle(message))


def _attach_journal(path: str | None) -> _core.RunJournalView | None:
    """The worker's run journal, where this child notes the runs it starts (see
    ``journal.note_handed``); None if the worker has none."""
    if path is None:
        return None
    try:
        return _core.RunJournalView(path)
    except FerroqError:
        return None  # the worker then counts its handed runs as not started if it dies


def _die_with_parent() -> None:
    """A child must not outlive its worker, even one SIGKILLed mid-task: on Linux the kernel
    kills it (PR_SET_PDEATHSIG, which works even while a task holds the GIL); elsewhere a
    thread watching the worker's end of the launch pipe exits the process."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        else:
            if os.getppid() == parent.pid:
                return  # (else the worker died before the prctl: the watcher sees it at once)
    sentinel = parent.sentinel

    def watch() -> None:
        wait([sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="ferroq-parent-watch", daemon=True).start()


class _ChildContext(TaskContext):
    """``current_task()`` inside a child: the same fields; progress, heartbeat and
    cancelled are asked of the parent, which holds the lease."""

    __slots__ = ("_conn", "_ask_lock")

    def __init__(self, conn: Connection, fields: _Fields, lock: threading.Lock) -> None:
        task_id, name, group, attempt, max_attempts, created_ms = fields
        super().__init__(task_id, name, group, attempt, max_attempts, created_ms, 0, None)  # type: ignore[arg-type]
        self._conn = conn
        self._ask_lock = lock

    def _ask(self, *request: Any) -> Any:
        with self._ask_lock:  # a processor's own threads may ask too
            self._conn.send(request)
            reply = self._conn.recv()
        if reply[0] == "raise":
            kind = getattr(_errors, reply[1], FerroqError)
            raise (kind if isinstance(kind, type) and issubclass(kind, FerroqError) else FerroqError)(reply[2])
        return reply[1]

    def progress(self, fraction: float, message: str | None = None) -> None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            raise InvalidArgument(f"progress must be a number between 0 and 1, got {fraction!r}")
        if message is not None and not isinstance(message, str):
            raise InvalidArgument(f"progress message must be a str, got {message!r}")
        self._ask("progress", float(fraction), message)

    def heartbeat(self) -> None:
        self._ask("heartbeat")

    def cancelled(self) -> bool:
        return bool(self._ask("cancelled"))


def _describe(exc: BaseException, tb: str | None) -> _ErrorInfo:
    if isinstance(exc, Retry):
        kind = "retry"
    elif isinstance(exc, Fail):
        kind = "fail"
    elif isinstance(exc, (PayloadError, TaskNotImportable)):
        kind = "refused"  # our own refusals: no attempt could go differently
    else:
        kind = "error"
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not lose the error
        message = f"<unprintable {type(exc).__name__}>"
    mro = [_class_name(c) for c in type(exc).__mro__]
    return (kind, _class_name(type(exc)), message, tb, mro, exc.delay if isinstance(exc, Retry) else None)


class _ChildRunner:
    def __init__(
        self,
        conn: Connection,
        serializer: Serializer,
        journal: _core.RunJournalView | None,
        hooks: RunHooks | None = None,
    ) -> None:
        self.conn = conn
        self.hooks = hooks  # before_run, after_run, tracing: around each run here, in the child
        self.serializer = serializer
        self.journal = journal
        self.lock = threading.Lock()
        self.functions: dict[tuple[str, str, str], Any] = {}
        self.loop: asyncio.AbstractEventLoop | None = None  # one per child, reused by every async run

    def handle(self, message: tuple[Any, ...]) -> tuple[Any, ...]:
        # marks: the (journal slot, task id) of each run, noted started and returned here.
        kind, ref, payload, fields, marks = message
        try:
            fn = self.function(ref)
        except TaskNotImportable as e:
            return ("err", _describe(e, None))
        if kind == "batch":
            return self.batch(fn, ref[2], payload, fields, marks)
        return self.one(fn, ref[2], payload, fields, marks)

    def _started(self, marks: list[tuple[int, int]]) -> None:
        if self.journal is not None:
            for slot, task_id in marks:
                self.journal.started(slot, task_id)

    def _returned(self, marks: list[tuple[int, int]]) -> None:
        if self.journal is not None:
            for slot, task_id in marks:
                self.journal.returned(slot, task_id)

    def function(self, ref: tuple[str, str, str]) -> Any:
        fn = self.functions.get(ref)
        if fn is None:
            found = by_reference(*ref)
            fn = found.fn if isinstance(found, TaskBase) else found
            if not callable(fn):
                raise TaskNotImportable(f"task {ref[2]!r}: {ref[0]}.{ref[1]} is {found!r}, not a function")
            self.functions[ref] = fn
        return fn

    def one(self, fn: Any, name: str, payload: bytes, fields: _Fields, marks: list[tuple[int, int]]) -> tuple[Any, ...]:
        ctx = _ChildContext(self.conn, fields, self.lock)
        reset = _current.set(ctx)
        try:
            data = self.serializer.loads(payload)
            self._started(marks)
            if inspect.iscoroutinefunction(fn):
                if self.loop is None:
                    self.loop = asyncio.new_event_loop()
                if self.hooks is None:
                    result = self.loop.run_until_complete(fn(*data["args"], **data["kwargs"]))
                else:
                    result = self.loop.run_until_complete(self.hooks.acall(fn, ctx, data))
            elif self.hooks is None:
                result = fn(*data["args"], **data["kwargs"])
            else:
                result = self.hooks.call(fn, ctx, data)
        except BaseException as exc:  # noqa: BLE001 - a processor's failure is data, not a crash
            return ("err", _describe(exc, format_traceback(exc)))
        finally:
            self._returned(marks)
            _current.reset(reset)
        return self.encode(name, result)

    def batch(
        self, fn: Any, name: str, payloads: list[bytes], fields: list[_Fields], marks: list[tuple[int, int]]
    ) -> tuple[Any, ...]:
        try:
            items = []
            for payload in payloads:
                data = self.serializer.loads(payload)
                items.append(data["args"][0] if data["args"] else data["kwargs"]["item"])
            self._started(marks)
            try:
                if self.hooks is None:
                    results = fn(items)
                else:  # each run's before_run and after_run, here in the child
                    contexts: list[TaskContext] = [_ChildContext(self.conn, f, self.lock) for f in fields]
                    results = self.hooks.call_batch(fn, name, contexts, items)
            finally:
                self._returned(marks)
            check_batch_results(name, results, len(items))
        except BaseException as exc:  # noqa: BLE001 - the whole batch failed
            return ("err", _describe(exc, format_traceback(exc)))
        out: list[tuple[Any, ...]] = []
        for result in results:
            if isinstance(result, BaseException):
                tb = format_traceback(result) if result.__traceback__ else None
                out.append(("err", _describe(result, tb)))
            else:
                out.append(self.encode(name, result))
        return ("batch", out)

    def encode(self, name: str, result: Any) -> tuple[Any, ...]:
        try:
            return ("ok", self.serializer.dumps(result))
        except Exception as e:  # noqa: BLE001 - PayloadError, or whatever a custom serializer raises
            return ("err", _describe(PayloadError(f"result of task {name!r} cannot be stored: {e}"), None))


# -- the parent ----------------------------------------------------------------------------


class ChildError(Exception):
    """A processor's exception as its child process described it: the exception object
    stays in the child (its class may not even be importable here)."""

    def __init__(self, info: _ErrorInfo) -> None:
        self.kind, self.type_name, self.message, self.traceback, self.mro, self.delay = info
        super().__init__(f"{self.type_name}: {self.message}")

    def is_fatal(self, policy: RetryPolicy) -> bool:
        """``policy.is_fatal`` decided on the class names the child sent."""
        if self.kind in ("fail", "refused"):
            return True
        if self.kind == "retry":
            return False
        if any(_class_name(c) in self.mro for c in policy.fatal):
            return True
        return policy.retry_on is not None and not any(_class_name(c) in self.mro for c in policy.retry_on)

    def matches(self, classes: tuple[type[BaseException], ...]) -> bool:
        """Whether the child's exception was an instance of any of ``classes``."""
        return any(_class_name(c) in self.mro for c in classes)

    def task_error(self) -> TaskError:
        return TaskError(self.type_name, self.message, self.traceback)


class _Child:
    __slots__ = ("process", "conn", "pid")

    def __init__(self, process: Any, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.pid: int = process.pid


_STOPPED = "stopped"  # every run of the call was released or lost its lease; the child was killed
_TIMED_OUT = "timed out"


class Slot:
    """One runner thread's child process. Used by that thread only."""

    def __init__(self, worker: Worker, index: int) -> None:
        self.worker = worker
        self.index = index
        self.child: _Child | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def spawn(self) -> None:
        parent_end, child_end = _mp.Pipe(duplex=True)
        journal = self.worker._journal
        process = _mp.Process(
            target=_child_main,
            args=(
                child_end,
                self.worker.queue.serializer,
                None if journal is None else journal.path,
                self.worker._hooks,
            ),
            name=f"ferroq-child-{self.index}",
        )
        try:
            process.start()
        finally:
            child_end.close()
        self.child = _Child(process, parent_end)

    def await_ready(self) -> None:
        child = self.child
        assert child is not None
        try:
            if child.conn.poll(STARTUP_TIMEOUT) and child.conn.recv()[0] == "ready":
                return
            what = f"did not start within {STARTUP_TIMEOUT:.0f}s"
        except (EOFError, OSError):
            what = "died while starting"
        code = self.kill()
        raise ProcessCrashed(
            f"the worker's child process (pid {child.pid}) {what} ({_exit_text(code)}); "
            f"see its output above; {_MAIN_GUARD_HINT}"
        )

    def ensure(self) -> _Child:
        if self.child is None:
            try:
                self.spawn()
            except OSError as e:  # out of processes or memory: the run fails, the worker lives on
                raise ProcessCrashed(f"could not start a child process: {e}") from None
            self.await_ready()
            self.worker._count("respawned")
        assert self.child is not None
        return self.child

    def kill(self) -> int | None:
        """SIGKILLs and reaps the child; returns its exit code."""
        child, self.child = self.child, None
        if child is None:
            return None
        try:
            child.process.kill()
        except (OSError, ValueError):
            pass
        return self._reap(child)

    def stop(self) -> None:
        """Asks an idle child to exit (it has no task to finish)."""
        child = self.child
        if child is not None:
            try:
                child.conn.send(("stop",))
            except OSError:
                pass

    def reap(self, timeout: float) -> None:
        """Waits up to ``timeout`` for a stopped child to exit, then kills it."""
        child = self.child
        if child is not None:
            child.process.join(timeout)
            self.kill()

    def close(self, timeout: float = 5.0) -> None:
        """Stops the child. The runner thread calls this before it exits: the kernel kills a
        child whose spawning thread exits (PR_SET_PDEATHSIG is per thread)."""
        self.stop()
        self.reap(timeout)

    @staticmethod
    def _reap(child: _Child) -> int | None:
        child.process.join(5.0)
        code: int | None = child.process.exitcode
        child.conn.close()
        if code is not None:
            child.process.close()  # frees its sentinel and pipe now, not at garbage collection
        return code

    # -- running -----------------------------------------------------------------------

    def run(self, run: Run) -> Outcome | None:
        w = self.worker
        if w._skip_stopped(run):
            return None
        task = run.task
        assert task is not None
        c = run.ctx
        fields: _Fields = (c.id, c.name, c.resource_group, c.attempt, c.max_attempts, c._created_ms)
        note_handed(w._journal, run)
        marks = [(run.slot, c.id)]
        try:
            reply = self._call(("run", _reference(task), run.payload, fields, marks), [run], task.options.timeout)
        finally:
            note_return(w._journal, run)
        outcomes = w._outcomes
        if isinstance(reply, BaseException):
            return outcomes.settled_failure(run, reply, None)
        if reply == _STOPPED:
            w._skip_stopped(run)
            return None
        if reply == _TIMED_OUT:
            w._count("timed_out")
            exc = TimeoutError(
                f"task {c.name!r} exceeded its timeout of {task.options.timeout}s; its process was killed"
            )
            return outcomes.settled_failure(run, exc, None)
        if reply[0] == "ok":
            return outcomes.settled_encoded(run, reply[1])
        return outcomes.settled_failure(run, ChildError(reply[1]), None)

    def run_batch(self, batch: Batch) -> list[Outcome]:
        w = self.worker
        runs = [run for run in batch.runs if not w._skip_stopped(run)]
        if not runs:
            return []
        task = batch.task
        for run in runs:
            note_handed(w._journal, run)
        marks = [(run.slot, run.ctx.id) for run in runs]
        try:
            fields = [
                (r.ctx.id, r.ctx.name, r.ctx.resource_group, r.ctx.attempt, r.ctx.max_attempts, r.ctx._created_ms)
                for r in runs
            ]
            reply = self._call(
                ("batch", _reference(task), [r.payload for r in runs], fields, marks), runs, task.options.timeout
            )
        finally:
            for run in runs:
                note_return(w._journal, run)
        made = w._outcomes
        outcomes: list[Outcome | None]
        if isinstance(reply, BaseException):
            outcomes = [made.settled_failure(run, reply, None) for run in runs]
        elif reply == _STOPPED:
            for run in runs:
                w._skip_stopped(run)
            return []
        elif reply == _TIMED_OUT:
            w._count("timed_out")
            exc = TimeoutError(
                f"batch task {task.name!r} exceeded its timeout of {task.options.timeout}s; its process was killed"
            )
            outcomes = [made.settled_failure(run, exc, None) for run in runs]
        elif reply[0] == "err":
            outcomes = [made.settled_failure(run, ChildError(reply[1]), None) for run in runs]
        else:
            outcomes = [
                made.settled_encoded(run, item[1])
                if item[0] == "ok"
                else made.settled_failure(run, ChildError(item[1]), None)
                for run, item in zip(runs, reply[1])
            ]
        return [o for o in outcomes if o is not None]

    def _call(self, message: tuple[Any, ...], runs: list[Run], timeout: float | None) -> Any:
        """Sends one run (or batch) to the child and waits for its reply, answering its
        requests meanwhile. Returns the reply, a ProcessCrashed, _TIMED_OUT or _STOPPED."""
        try:
            child = self._send(message)
        except ProcessCrashed as exc:
            return exc
        deadline = None if timeout is None else time.monotonic() + timeout
        conn, sentinel = child.conn, child.process.sentinel
        while True:
            tick = _TICK if deadline is None else max(0.0, min(_TICK, deadline - time.monotonic()))
            ready = wait([conn, sentinel], tick)
            if conn in ready:
                try:
                    reply = conn.recv()
                except (EOFError, OSError):
                    return self._crashed(runs)
                if reply[0] in _REQUESTS:
                    self._answer(conn, reply, runs[0])
                    continue
                return reply
            if ready:  # the child died without a word
                return self._crashed(runs)
            if all(run.ctx.stopped for run in runs):
                # Released at shutdown or its lease was lost: another run owns the task now.
                self.kill()
                return _STOPPED
            if deadline is not None and time.monotonic() >= deadline:
                self.kill()
                return _TIMED_OUT

    def _send(self, message: tuple[Any, ...]) -> _Child:
        # A child that died while idle (killed from outside) is replaced without costing
        # the task an attempt: it never saw it.
        for _ in range(2):
            child = self.ensure()
            try:
                child.conn.send(message)
                return child
            except OSError:
                self.kill()
        raise ProcessCrashed("the worker's child process died twice before it could receive the task")

    def _crashed(self, runs: list[Run]) -> ProcessCrashed:
        child = self.child
        assert child is not None
        self.child = None
        code = self._reap(child)
        if code is None:  # the pipe broke but the process lives on: it is of no use any more
            self.child = child
            code = self.kill()
        self.worker._count("crashed")
        what = f"task {runs[0].ctx.name!r}" if len(runs) == 1 else f"a batch of {len(runs)} {runs[0].ctx.name!r} tasks"
        return ProcessCrashed(f"the child process (pid {child.pid}) running {what} {_exit_text(code)}")

    def _answer(self, conn: Connection, request: tuple[Any, ...], run: Run) -> None:
        ctx = run.ctx
        try:
            if request[0] == "progress":
                self.worker.queue._engine.progress(ctx.id, ctx.token, request[1], request[2])
                value: Any = None
            elif request[0] == "heartbeat":
                self.worker._heartbeat([ctx])
                value = None
            else:
                value = ctx.stopped
        except FerroqError as e:
            conn.send(("raise", type(e).__name__, str(e)))
            return
        conn.send(("reply", value))


def _exit_text(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "an unknown signal"
        hint = " (killed from outside; the kernel's OOM killer does this)" if -code == signal.SIGKILL else ""
        return f"was killed by signal {-code} ({name}){hint}"
    return f"exited with code {code}"


class ProcessPool:
    """The children of one ``Worker.run``: one ``Slot`` per runner thread."""

    def __init__(self, worker: Worker, size: int) -> None:
        self.slots = [Slot(worker, i) for i in range(size)]

    def start(self) -> None:
        """Starts every child and waits until each is ready, so a script whose children
        cannot start (e.g. no ``__main__`` guard) fails here, before anything is claimed."""
        try:
            for slot in self.slots:
                slot.spawn()
            for slot in self.slots:
                slot.await_ready()
        except BaseException:
            self.close()
            raise

    def close(self, grace: float = 5.0) -> None:
        """Stops idle children and reaps them; kills any that do not exit within ``grace``.
        (Each runner closes its own child as it exits; this is for the rest.)"""
        for slot in self.slots:
            slot.stop()
        deadline = time.monotonic() + grace
        for slot in self.slots:
            slot.reap(max(0.0, deadline - time.monotonic()))
