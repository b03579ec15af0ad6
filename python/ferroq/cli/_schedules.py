"""``ferroq schedules``: the periodic tasks workers declared on a queue, with their last
and next runs. Read from the file (each worker records its queue's schedules when it
starts), so no module import is needed; a schedule removed from the code stays listed."""

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
def schedules(ctx: click.Context, db: str | None, queue_name: str | None, output: str) -> None:
    """Periodic tasks of the queue: cron, time zone, missed-tick policy, last run (the newest
    tick enqueued, and its task id) and next run."""
    s = settings(ctx, db, queue_name)
    with open_queue(s) as q:
        found = q.schedule_states()
    if output == "json":
        click.echo(dumps([asdict(x) for x in found]))
        return
    if not found:
        console().print(f"no schedules declared on queue {s.queue!r} (workers record them when they start)")
        return
    table = Table(title=f"Schedules of queue {s.queue!r}", title_justify="left")
    for col in ("schedule", "task", "cron", "tz", "missed", "last run", "last task", "next run", "declared"):
        table.add_column(col, justify="right" if col == "last task" else "left")
    for x in found:
        last_task = "-" if x.last_task_id is None else str(x.last_task_id)
        table.add_row(
            escape(x.name),
            escape(x.task),
            escape(x.cron),
            escape(x.tz),
            x.missed,
            stamp(x.last_run),
            last_task,
            stamp(x.next_run),
            ago(x.seen_at),
        )
    console().print(table)
