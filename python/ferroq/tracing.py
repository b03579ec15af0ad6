"""Optional OpenTelemetry tracing. Imported once: without ``opentelemetry-api`` every name
here is None or False and ferroq makes no tracing call at all.

- Enqueue: ``Task.enqueue`` inside an active span opens a ``<task> publish`` span
  (PRODUCER); the W3C ``traceparent`` of the span current when the call is encoded rides in
  the payload envelope as ``{"args": .., "kwargs": .., "trace": "00-..."}`` (only when a
  span is active; ``enqueue_many`` carries the caller's span).
- Run: if a tracer provider is set when the ``Worker`` is made (in a process-pool child:
  when the child starts, e.g. set where the tasks' module is imported), each run is a
  ``<task> process`` span (CONSUMER), a child of that context (a root span for a task
  enqueued without one), with the messaging attributes
  ``messaging.system=ferroq``, ``messaging.operation.name=process``,
  ``messaging.message.id`` (the task id) and ``ferroq.attempt``; an exception the processor
  raises is recorded on it and sets its status to error.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .context import TaskContext

__all__ = ["available", "enabled", "process_span", "publish_span", "traceparent"]

try:
    from opentelemetry import trace as _trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # tracing off: no cost anywhere
    _trace = None  # type: ignore[assignment]

_SYSTEM = "ferroq"


def available() -> bool:
    """Whether OpenTelemetry's API is installed (then runs are spans)."""
    return _trace is not None


def enabled() -> bool:
    """Whether runs are spans: OpenTelemetry is installed and the application has set a
    tracer provider (the API's default one records nothing, so a span would be pure cost)."""
    if _trace is None:
        return False
    return not isinstance(_trace.get_tracer_provider(), (_trace.ProxyTracerProvider, _trace.NoOpTracerProvider))


if _trace is not None:
    _tracer = _trace.get_tracer("ferroq")  # a proxy until the application sets its provider
    _propagator = TraceContextTextMapPropagator()
    _PRODUCER, _CONSUMER = _trace.SpanKind.PRODUCER, _trace.SpanKind.CONSUMER

    def _traceparent() -> str | None:
        """The W3C traceparent of the current span, or None if no (sampled or not) span is active."""
        sc = _trace.get_current_span().get_span_context()
        if not sc.is_valid:
            return None
        return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"

    def _publish_span(queue: str, task: str) -> AbstractContextManager[Any]:
        """A ``publish`` span around an enqueue made inside an active span (else nothing)."""
        if not _trace.get_current_span().get_span_context().is_valid:
            return nullcontext(None)
        return _tracer.start_as_current_span(
            f"{task} publish",
            kind=_PRODUCER,
            attributes={
                "messaging.system": _SYSTEM,
                "messaging.operation.name": "publish",
                "messaging.operation.type": "publish",
                "messaging.destination.name": queue,
                "ferroq.task.name": task,
            },
        )

    def _process_span(ctx: TaskContext, parent: Any) -> AbstractContextManager[Any]:
        context = _propagator.extract({"traceparent": parent}) if isinstance(parent, str) else None
        return _tracer.start_as_current_span(
            f"{ctx.name} process",
            context=context,
            kind=_CONSUMER,
            attributes={
                "messaging.system": _SYSTEM,
                "messaging.operation.name": "process",
                "messaging.operation.type": "process",
                "messaging.message.id": str(ctx.id),
                "ferroq.task.name": ctx.name,
                "ferroq.attempt": ctx.attempt,
            },
        )


#: Each None without OpenTelemetry (callers test for None once, not call a no-op).
traceparent: Callable[[], str | None] | None = _traceparent if _trace is not None else None
publish_span: Callable[[str, str], AbstractContextManager[Any]] | None = _publish_span if _trace is not None else None


def process_span(ctx: TaskContext, parent: Any) -> AbstractContextManager[Any]:
    """The span of one run (only called when ``available()``)."""
    return _process_span(ctx, parent)
