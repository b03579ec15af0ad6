"""``ferroq workers``: worker processes registered on a queue, live and recently stopped
(registrations of stopped workers are kept a day: ``Observability.workers_age``)."""

from __future__ import annotations

from dataclasses import asdict

import click
from rich.markup import escape
from rich.table import Table

from ._common import ago, console, db_options, dumps, open_queue, output_option, settings, stamp


@click.command()
@db_options
@output_option
@click.pass_context
def workers(ctx: click.Context, db: str | None, queue_name: str | None, output: str) -> None:
    """Workers of the queue: host, pid, concurrency, pool, when started and last seen, tasks
    running now. A worker is alive if it renewed its registration lately and did not stop."""
    s = settings(ctx, db, queue_name)
    with open_queue(s) as q:
        found = q.workers()
    if output == "json":
        click.echo(dumps([asdict(w) for w in found]))
        return
    if not found:
        console().print(f"no workers registered on queue {s.queue!r}")
        return
    table = Table(title=f"Workers of queue {s.queue!r}", title_justify="left")
    for col in ("worker", "state", "host", "pid", "concurrency", "pool", "started", "last seen", "running"):
        table.add_column(col, justify="right" if col in ("pid", "concurrency", "running") else "left")
    for w in found:
        state = "[green]alive[/]" if w.alive else "stopped" if w.stopped_at else "[red]lost[/]"
        table.add_row(
            escape(w.id),
            state,
            escape(w.hostname),
            str(w.pid),
            str(w.concurrency),
            w.pool,
            stamp(w.started_at),
            ago(w.last_seen),
            str(w.running),
        )
    console().print(table)
