"""Reading what the queue did: ``ferroq stats`` (rates and percentiles), ``ferroq health``
(exit 0/1), ``ferroq events`` (tail lifecycle events, from any process) and ``ferroq
profile`` (where profiling workers' time goes)."""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import datetime
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from .._units import duration
from ..groups import Event
from ..observe import GroupMetrics, Percentiles
from ._common import (
    Duration,
    Exit,
    console,
    db_options,
    dumps,
    open_queue,
    option,
    output_option,
    settings,
    split_list,
    stamp,
)


def stats_data(m: GroupMetrics) -> dict[str, Any]:
    data = asdict(m)
    data.update(
        failed=m.failed,
        error_rate=m.error_rate,
        rates={c: m.rate(c) for c in ("enqueued", "started", "completed", "retried", "dead")},
    )
    return data


def _percentile_cells(p: Percentiles) -> list[str]:
    return [duration(p.p50), duration(p.p95), duration(p.p99), duration(p.max)] if p.count else ["-"] * 4


@click.command()
@db_options
@output_option
@option(
    "--window",
    type=Duration(),
    default="1h",
    show_default=True,
    help="How far back: 90s, 15m, 1h, 7d (beyond a day: hourly figures).",
)
@click.pass_context
def stats(ctx: click.Context, db: str | None, queue_name: str | None, output: str, window: float) -> None:
    """Throughput, error rate and wait/run percentiles per resource group, summed over every
    worker (workers flush their figures every 10 s and when they stop)."""
    s = settings(ctx, db, queue_name)
    with open_queue(s) as q:
        by_group = q.metrics(window=window)
    if output == "json":
        click.echo(
            dumps({"queue": s.queue, "window": window, "groups": {g: stats_data(m) for g, m in by_group.items()}})
        )
        return
    table = Table(title=f"Queue {s.queue!r}, last {duration(window)}", title_justify="left")
    for col in (
        "group",
        "completed",
        "done/s",
        "retried",
        "dead",
        "errors",
        "wait p50",
        "p95",
        "p99",
        "max",
        "run p50",
        "p95",
        "p99",
        "max",
    ):
        table.add_column(col, justify="left" if col == "group" else "right")
    for g, m in by_group.items():
        table.add_row(
            escape(g),
            f"{m.completed:,}",
            f"{m.rate('completed'):,.1f}",
            f"{m.retried:,}",
            f"{m.dead:,}",
            f"{m.error_rate:.1%}",
            *_percentile_cells(m.wait),
            *_percentile_cells(m.run),
        )
    if not by_group:
        console().print(f"no figures for queue {s.queue!r} in the last {duration(window)}")
        return
    console().print(table)


@click.command()
@db_options
@output_option
@option(
    "--max-pending-age",
    type=Duration(),
    default="5m",
    show_default=True,
    help="Unhealthy if a due task has waited longer.",
)
@option("--dead-window", type=Duration(), default="1h", show_default=True, help="Window for --max-dead.")
@option("--max-dead", type=click.IntRange(0), default=None, help="Unhealthy if more tasks went dead in the window.")
@option(
    "--require-workers/--no-require-workers", default=True, show_default=True, help="Unhealthy without a live worker."
)
@click.pass_context
def health(
    ctx: click.Context,
    db: str | None,
    queue_name: str | None,
    output: str,
    max_pending_age: float,
    dead_window: float,
    max_dead: int | None,
    require_workers: bool,
) -> None:
    """Database intact, workers alive, nothing waiting too long: exit 0 if healthy, 1 if not."""
    s = settings(ctx, db, queue_name)
    with open_queue(s) as q:
        h = q.health(
            max_pending_age=max_pending_age, dead_window=dead_window, max_dead=max_dead, require_workers=require_workers
        )
    if output == "json":
        click.echo(dumps(asdict(h)))
    else:
        for c in h.checks:
            mark = "[green]ok[/]" if c.ok else "[red]FAIL[/]"
            console().print(f"{mark} {c.name}: {escape(c.detail)}")
        console().print("[green]healthy[/]" if h.ok else "[red]unhealthy[/]")
    if not h.ok:
        ctx.exit(Exit.FAILED)


@click.command()
@db_options
@output_option
@option(
    "--after",
    "after_id",
    type=click.IntRange(0),
    default=None,
    help="Start after this event id (default: the last 20 events).",
)
@option(
    "--kind",
    "kinds",
    multiple=True,
    metavar="KIND",
    help="Only these kinds (failed, dead, circuit_opened, ...); repeat or comma-separate.",
)
@option("--follow", "-f", is_flag=True, help="Keep printing new events until Ctrl-C.")
@click.pass_context
def events(
    ctx: click.Context,
    db: str | None,
    queue_name: str | None,
    output: str,
    after_id: int | None,
    kinds: tuple[str, ...],
    follow: bool,
) -> None:
    """Lifecycle events in commit order, from every process: task failures, retries, dead
    tasks, cancels, progress (all transitions with Queue(events="all")), circuit and
    throttle changes, pauses. One JSON line per event with -o json."""
    s = settings(ctx, db, queue_name)
    wanted = split_list(kinds) or None
    with open_queue(s) as q:
        try:
            if after_id is None:
                # The last 20 of the wanted kinds (filtered in the query), then what comes next.
                after_id = q.last_event_id()
                for e in q.latest_events(20, kinds=wanted, up_to=after_id):
                    _print_event(e, output)
                if not follow:
                    return
            for e in q.watch_events(after=after_id, kinds=wanted, timeout=None if follow else 0):
                _print_event(e, output)
        except KeyboardInterrupt:
            return


def _print_event(e: Event, output: str) -> None:
    if output == "json":
        click.echo(dumps(asdict(e), pretty=False))
        return
    where = f"task {e.task_id}" if e.task_id is not None else f"group {e.group}" if e.group else "queue"
    console().print(f"{e.id:>8} {stamp(e.at)} [bold]{e.kind}[/] {escape(where)} {escape(_detail_text(e.detail))}")


def _detail_text(detail: dict[str, Any]) -> str:
    """``key=value`` pairs: times as stamps, a failure's error as ``Type: message``."""
    parts = []
    for key, value in detail.items():
        if isinstance(value, datetime):
            text = stamp(value)
        elif key == "error" and isinstance(value, dict):
            text = f"{value.get('type')}: {value.get('message')}".replace("\n", " ")
        else:
            text = dumps(value, pretty=False)
        parts.append(f"{key}={text}")
    return " ".join(parts)


@click.command()
@db_options
@output_option
@option(
    "--seconds",
    type=click.FloatRange(1, 86_400),
    default=10.0,
    show_default=True,
    help="How long to watch (or, with --no-wait, how far back to look).",
)
@option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Watch for --seconds, then show them; --no-wait: show the last --seconds at once.",
)
@click.pass_context
def profile(
    ctx: click.Context, db: str | None, queue_name: str | None, output: str, seconds: float, wait: bool
) -> None:
    """Where profiling workers' time goes (workers run with --profile, or Worker(profile=True)):
    per stage (claim, decode, wait for a runner, run, encode, record, commit) and per task
    name (wall and CPU time, peak memory delta), read live from the metrics table (they add
    their figures every second), to the 10-second interval."""
    s = settings(ctx, db, queue_name)
    with open_queue(s) as q:
        if wait:
            time.sleep(seconds + 1.5)  # a profiling worker adds its figures every second
        prof = q.profile(window=seconds)
    if output == "json":
        click.echo(
            dumps(
                {
                    "queue": s.queue,
                    "window": seconds,
                    "stages": [asdict(x) for x in prof.stages],
                    "tasks": [asdict(x) for x in prof.tasks],
                }
            )
        )
        return
    if prof.empty:
        console().print(
            f"no profile recorded on queue {s.queue!r} in the last {duration(seconds)}: run a worker "
            f"with --profile (or Worker(profile=True))"
        )
        return
    click.echo(f"Queue {s.queue!r}, last {duration(seconds)} (profiling workers)")
    click.echo(prof.table())
