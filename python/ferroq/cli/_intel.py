"""Looking ahead: ``ferroq forecast`` (predicted arrivals with a 95% band, and how the
forecast was made) and ``ferroq alerts`` (what fired and resolved)."""

from __future__ import annotations

from dataclasses import asdict

import click
from rich.markup import escape
from rich.table import Table

from .._units import duration
from ..forecast import Forecast
from ._common import Duration, console, db_options, dumps, open_queue, option, output_option, settings, stamp


def _forecast_table(f: Forecast) -> Table:
    who = "every group" if f.group is None else f"group {f.group!r}"
    table = Table(
        title=f"Arrivals per {duration(f.interval)}, {who}, next {duration(f.horizon)}",
        title_justify="left",
        caption=escape(f"{f.method}: {f.explanation}"),
        caption_justify="left",
    )
    for col in ("from", "expected", "low (95%)", "high (95%)"):
        table.add_column(col, justify="left" if col == "from" else "right")
    for p in f.points:
        table.add_row(stamp(p.start), f"{p.expected:,.1f}", f"{p.low:,.1f}", f"{p.high:,.1f}")
    return table


@click.command()
@db_options
@output_option
@option("--group", default=None, help="One resource group (default: the whole queue).")
@option("--horizon", type=Duration(), default="10m", show_default=True, help="How far ahead: 10m, 1h, 1d.")
@option(
    "--interval",
    type=Duration(),
    default="1m",
    show_default=True,
    help="Width of each predicted interval (a multiple of 10 s).",
)
@click.pass_context
def forecast(
    ctx: click.Context,
    db: str | None,
    queue_name: str | None,
    output: str,
    group: str | None,
    horizon: float,
    interval: float,
) -> None:
    """Predicted arrivals per interval with a 95% band, from the stored metrics: a daily or
    weekly season when the history shows one, a damped-trend level from the last day; the
    caption says what was chosen and why."""
    s = settings(ctx, db, queue_name)
    with open_queue(s) as q:
        f = q.forecast(group, horizon=horizon, interval=interval)
    if output == "json":
        click.echo(dumps(dict(asdict(f), total=f.total, peak_rate=f.peak_rate)))
        return
    console().print(_forecast_table(f))


@click.command()
@db_options
@output_option
@click.pass_context
def alerts(ctx: click.Context, db: str | None, queue_name: str | None, output: str) -> None:
    """Alerts as their latest event left them, firing first (declared in code with
    ``Queue.alert``; workers evaluate them every 10 s and record each fire and resolve)."""
    s = settings(ctx, db, queue_name)
    with open_queue(s) as q:
        found = q.alerts()
    if output == "json":
        click.echo(dumps({"queue": s.queue, "alerts": [asdict(a) for a in found]}))
        return
    if not found:
        console().print(f"no alert has fired on queue {s.queue!r}")
        return
    table = Table(title=f"Alerts of queue {s.queue!r}", title_justify="left")
    for col in ("alert", "state", "group", "since", "detail"):
        table.add_column(col)
    for a in found:
        table.add_row(
            escape(a.name),
            "[red]firing[/red]" if a.firing else "resolved",
            escape(a.group or "-"),
            stamp(a.since),
            escape(a.detail),
        )
    console().print(table)
