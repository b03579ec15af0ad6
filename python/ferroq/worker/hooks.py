"""Per-run hooks: ``before_run(ctx)`` and ``after_run(ctx, outcome)`` around each
processor call, in the thread (or child process) that runs it, and the run's tracing span
when OpenTelemetry is installed (see ``ferroq.tracing``).

A batch task's runs each get their hooks too: ``before_run`` for every run before the batch
function is called (a run whose hook raises fails with that error and is left out of the
batch), ``after_run`` for every run after it, each with its own item's outcome.

A worker with neither hooks nor tracing has no ``RunHooks`` at all (``Worker._hooks`` is
None) and its per-task path calls the processor directly. Failures: a ``before_run`` that
raises fails the run with its error (the processor is not called; the retry policy applies
as for any failure); an ``after_run`` that raises is logged and changes nothing.
"""

from __future__ import annotations

import logging
import pickle
from typing import Any, Callable, NamedTuple

from .. import tracing
from ..context import TaskContext, _current
from ..errors import InvalidArgument

log = logging.getLogger("ferroq.worker")

__all__ = ["RunHooks", "RunOutcome", "check_hook"]


class RunOutcome(NamedTuple):
    """What ``after_run`` is told: whether the processor returned (``ok``), what it
    returned, or what it raised. (Whether a failure is retried is decided afterwards.)"""

    ok: bool
    result: Any = None
    error: BaseException | None = None


def check_hook(name: str, hook: Any, pool: str) -> None:
    """Raises ``InvalidArgument`` unless ``hook`` is None or a callable that (with
    ``pool="process"``, where per-run hooks run in the children) a child can import."""
    if hook is None:
        return
    if not callable(hook):
        raise InvalidArgument(f"{name} must be a callable, got {hook!r}")
    if pool != "process" or name in ("on_start", "on_stop"):
        return
    try:  # what a spawned child receives: a reference it imports by module and name
        same = pickle.loads(pickle.dumps(hook))
    except Exception as e:  # noqa: BLE001 - pickling can fail in many ways
        raise InvalidArgument(
            f'{name}={hook!r}: with pool="process" it runs in the child processes, so it must be '
            f"importable by reference (a module-level function, not a lambda or a nested "
            f"function): {e}"
        ) from None
    if not callable(same):
        raise InvalidArgument(f"{name}={hook!r} does not come back callable in a child process")


class RunHooks:
    """The hooks (and tracing) around one processor call. Picklable: a process pool's
    children each get a copy."""

    __slots__ = ("before", "after", "traced")

    def __init__(
        self,
        before: Callable[[TaskContext], Any] | None,
        after: Callable[[TaskContext, RunOutcome], Any] | None,
        traced: bool,
    ) -> None:
        self.before = before
        self.after = after
        self.traced = traced

    @classmethod
    def make(cls, before: Any, after: Any) -> RunHooks | None:
        """None (no hook, no tracing): the worker's per-task path calls processors directly."""
        traced = tracing.enabled()
        return None if before is None and after is None and not traced else cls(before, after, traced)

    def __getstate__(self) -> tuple[Any, Any]:
        return (self.before, self.after)

    def __setstate__(self, state: tuple[Any, Any]) -> None:
        self.before, self.after = state
        self.traced = tracing.enabled()  # the child's own tracer provider, if it set one

    def call(self, fn: Callable[..., Any], ctx: TaskContext, data: dict[str, Any]) -> Any:
        """``fn(*args, **kwargs)`` between the hooks, in a span if tracing."""
        if not self.traced:
            return self._call(fn, ctx, data)
        # (the span records an exception raised through it and sets its status to error)
        with tracing.process_span(ctx, data.get("trace")):
            return self._call(fn, ctx, data)

    def _call(self, fn: Callable[..., Any], ctx: TaskContext, data: dict[str, Any]) -> Any:
        if self.before is not None:
            self.before(ctx)  # raises: the run fails with this error, the processor is not called
        try:
            result = fn(*data["args"], **data["kwargs"])
        except BaseException as exc:
            self._after(ctx, RunOutcome(False, None, exc))
            raise
        self._after(ctx, RunOutcome(True, result, None))
        return result

    async def acall(self, fn: Callable[..., Any], ctx: TaskContext, data: dict[str, Any]) -> Any:
        """The same for an async processor (the hooks are plain functions, called on the loop)."""
        if not self.traced:
            return await self._acall(fn, ctx, data)
        # (the span records an exception raised through it and sets its status to error)
        with tracing.process_span(ctx, data.get("trace")):
            return await self._acall(fn, ctx, data)

    async def _acall(self, fn: Callable[..., Any], ctx: TaskContext, data: dict[str, Any]) -> Any:
        if self.before is not None:
            self.before(ctx)
        try:
            result = await fn(*data["args"], **data["kwargs"])
        except BaseException as exc:
            self._after(ctx, RunOutcome(False, None, exc))
            raise
        self._after(ctx, RunOutcome(True, result, None))
        return result

    def call_batch(
        self, fn: Callable[[list[Any]], Any], name: str, contexts: list[TaskContext], items: list[Any]
    ) -> list[Any]:
        """``fn(items)`` between each run's hooks. Returns one result per item, as a batch
        function does: an exception instance fails only its item (a run whose
        ``before_run`` raised gets that error). A batch function that raises or returns
        the wrong number of results fails every item it was given."""
        results: list[Any] = [None] * len(items)
        given: list[int] = []
        for i, ctx in enumerate(contexts):
            if self.before is None:
                given.append(i)
                continue
            reset = _current.set(ctx)  # current in the hook, as around a single run
            try:
                self.before(ctx)
                given.append(i)
            except BaseException as exc:  # noqa: BLE001 - this run fails with the hook's error
                results[i] = exc
            finally:
                _current.reset(reset)
        if not given:
            return results
        try:
            got = fn([items[i] for i in given])
            check_batch_results(name, got, len(given))
        except BaseException as exc:  # noqa: BLE001 - the whole batch failed: each item, with this error
            got = [exc] * len(given)
        for i, result in zip(given, got):
            results[i] = result
            failed = isinstance(result, BaseException)
            reset = _current.set(contexts[i])
            try:
                self._after(contexts[i], RunOutcome(not failed, None if failed else result, result if failed else None))
            finally:
                _current.reset(reset)
        return results

    def _after(self, ctx: TaskContext, outcome: RunOutcome) -> None:
        if self.after is None:
            return
        try:
            self.after(ctx, outcome)
        except Exception:
            log.exception(
                "after_run hook %r failed for task %d (%s); the run's outcome is unchanged",
                self.after,
                ctx.id,
                ctx.name,
            )


def check_batch_results(name: str, results: Any, n: int) -> None:
    """Raises TypeError unless a batch function returned a list (or tuple) of ``n`` results."""
    if not isinstance(results, (list, tuple)) or len(results) != n:
        got = (
            f"{type(results).__name__} of length {len(results)}"
            if isinstance(results, (list, tuple))
            else type(results).__name__
        )
        raise TypeError(f"batch task {name!r} must return a list of {n} results, got {got}")
