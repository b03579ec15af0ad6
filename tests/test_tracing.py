"""OpenTelemetry: the enqueuer's trace context travels with the task and each run is a
``process`` span, child of the ``publish`` span. Each test runs ferroq in scripts of its
own (a tracer provider is global to a process: the test process keeps none), with the SDK's
in-memory exporter, or a file exporter where spans are made in several processes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

import ferroq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import Procs, procs  # noqa: F401

# Real worker processes: seconds each (`pytest -m 'not slow'` skips them).
pytestmark = [pytest.mark.slow, pytest.mark.both_engines]

pytest.importorskip("opentelemetry.sdk")

SCRIPT = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

db, role, spans_path = sys.argv[1], sys.argv[2], sys.argv[3]


class FileExporter(SpanExporter):
    # One JSON line per span, from any process (O_APPEND).
    def export(self, spans):
        for s in spans:
            fd = os.open(spans_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.write(fd, (json.dumps(summary(s)) + "\\n").encode())
            os.close(fd)
        return SpanExportResult.SUCCESS


def summary(s):
    return {"name": s.name, "kind": s.kind.name, "trace": f"{s.context.trace_id:032x}",
            "id": f"{s.context.span_id:016x}", "parent": None if s.parent is None else f"{s.parent.span_id:016x}",
            "attrs": dict(s.attributes), "status": s.status.status_code.name,
            "events": [e.name for e in s.events], "pid": os.getpid()}


# At import, so a process-pool child (which imports this script) traces too.
memory = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(memory if role == "app" else FileExporter()))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("test")

q = ferroq.Queue(db)

@q.task(name="ok", max_attempts=1)
def ok(n):
    # The run's span is current in the processor: its own spans are children of it.
    with tracer.start_as_current_span("inner"):
        return n

@q.task(name="boom", max_attempts=1)
def boom(n):
    raise ValueError("boom")

if __name__ == "__main__":
    if role == "app":  # enqueue and run in one process, threads
        with tracer.start_as_current_span("request"):
            traced = q.enqueue("ok", 1).id
            failing = q.enqueue("boom", 2).id
        untraced = q.enqueue("ok", 3).id
        ferroq.Worker(q, concurrency=2, handle_signals=False, poll_interval=0.05).run(until_empty=True)
        emit({"ids": [traced, failing, untraced], "spans": [summary(s) for s in memory.get_finished_spans()]})
    elif role == "enqueue":
        with tracer.start_as_current_span("request"):
            emit({"ids": [q.enqueue("ok", 1).id]})
    else:  # role == "process": a process-pool worker
        ferroq.Worker(q, concurrency=1, pool="process", handle_signals=False, poll_interval=0.05).run(until_empty=True)
"""


def _one(spans: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    found = [s for s in spans if all(s.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (match, spans)
    return found[0]


def _process_span(spans: list[dict[str, Any]], task_id: int) -> dict[str, Any]:
    found = [s for s in spans if s["kind"] == "CONSUMER" and s["attrs"].get("messaging.message.id") == str(task_id)]
    assert len(found) == 1, (task_id, spans)
    return found[0]


def test_runs_are_spans_children_of_the_enqueue_span(tmp_path: Path, queue_location: Path | str, procs: Procs) -> None:
    app = procs.run(procs.script("app.py", SCRIPT), queue_location, "app", tmp_path / "unused", timeout=60)
    out = app.last()
    traced, failing, untraced = out["ids"]
    spans = out["spans"]
    request = _one(spans, name="request")
    publish = _one(spans, name="ok publish")
    assert publish["kind"] == "PRODUCER" and publish["parent"] == request["id"]
    assert publish["attrs"]["messaging.system"] == "ferroq"
    assert publish["attrs"]["messaging.operation.name"] == "publish"
    assert publish["attrs"]["messaging.message.id"] == str(traced)

    run = _process_span(spans, traced)
    assert run["name"] == "ok process"
    assert (run["trace"], run["parent"]) == (publish["trace"], publish["id"])
    assert run["attrs"]["messaging.system"] == "ferroq"
    assert run["attrs"]["messaging.operation.name"] == "process"
    assert run["attrs"]["ferroq.attempt"] == 1
    assert run["status"] == "UNSET"
    assert _one(spans, name="inner", trace=run["trace"])["parent"] == run["id"]

    failed = _process_span(spans, failing)
    assert failed["trace"] == request["trace"] and failed["parent"] == _one(spans, name="boom publish")["id"]
    assert failed["status"] == "ERROR" and "exception" in failed["events"]

    # Enqueued outside any span: no publish span, the run is a root span of its own.
    alone = _process_span(spans, untraced)
    assert alone["parent"] is None and alone["trace"] != request["trace"]
    assert len([s for s in spans if s["kind"] == "PRODUCER"]) == 2


def test_the_trace_context_crosses_to_a_process_pool_child(
    tmp_path: Path, queue_location: Path | str, procs: Procs
) -> None:
    """Enqueued in one process, run by a worker process's child: the run's span (made in
    the child) is a child of the publish span made by the enqueuer."""
    db, spans_path = queue_location, tmp_path / "spans.jsonl"
    script = procs.script("app.py", SCRIPT)
    (task_id,) = procs.run(script, db, "enqueue", spans_path, timeout=60).last()["ids"]
    worker = procs.run(script, db, "process", spans_path, timeout=120)
    spans = [__import__("json").loads(line) for line in spans_path.read_text().splitlines()]
    publish = _one(spans, name="ok publish")
    run = _process_span(spans, task_id)
    assert (run["trace"], run["parent"]) == (publish["trace"], publish["id"])
    assert run["pid"] not in (publish["pid"], worker.pid)  # the worker's child made it
    q = ferroq.Queue(db)
    q.task(name="ok")(lambda n: n)
    assert q.handle(task_id).result(timeout=0) == 1
