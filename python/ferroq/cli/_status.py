"""``ferroq status``: depths per status, pauses and resource groups, once or live."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import click
from rich.console import Group as Stack
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .._units import duration
from ..info import STATUSES
from ..queue import Queue
from ._observe import stats_data
from ._common import Settings, ago, console, db_options, dumps, open_queue, option, output_option, settings


#: The window of the rates and percentiles ``status`` shows.
STATUS_WINDOW = 60.0


def collect(s: Settings) -> dict[str, Any]:
    """What ``status`` shows, as plain data (the JSON output): per queue, depths, pauses,
    groups, and per group the last minute's rates and wait/run percentiles (as workers
    flushed them: every 10 s)."""
    with open_queue(s) as q:
        names = [s.queue] if s.queue_given else (q.queue_names() or [s.queue])
        return {"queues": [_queue_entry(q._reopen(n, busy_timeout=s.busy_timeout)) for n in names]}


def _queue_entry(q: Queue) -> dict[str, Any]:
    with q:
        metrics = q.metrics(window=STATUS_WINDOW)
        states = q.groups()
        # Groups that only ran tasks lately (no settings, nothing left) still show their rates.
        known = {g.name for g in states}
        states += [q.group(name).state() for name in sorted(set(metrics) - known)]
        return {
            "name": q.name,
            "paused": q.paused,
            "counts": q.counts(),
            "groups": [asdict(g) for g in states],
            "metrics": {g: stats_data(m) for g, m in metrics.items()},
            "alive_workers": sum(w.alive for w in q.workers()),
            "missing_processors": [asdict(m) for m in q.missing_processors()],
            "alerts_firing": [asdict(a) for a in q.alerts() if a.firing],
        }


def _rates(m: dict[str, Any] | None) -> list[str]:
    """done/s, failed/s, wait p95 and run p95 (ms) over the status window."""
    if m is None:
        return ["-"] * 4
    window = m["window"]
    wait, run = m["wait"], m["run"]
    return [
        f"{m['completed'] / window:,.1f}",
        f"{m['failed'] / window:,.1f}",
        duration(wait["p95"]) if wait["count"] else "-",
        duration(run["p95"]) if run["count"] else "-",
    ]


def _limit(g: dict[str, Any]) -> str:
    if g["concurrency_limit"] is None:
        return f"{g['running']}"
    return f"{g['running']}/{g['concurrency_limit']}" + (" (adaptive)" if g["adaptive"] else "")


def _circuit(g: dict[str, Any]) -> str:
    if not g["has_breaker"] and g["circuit"] == "closed":
        return "-"
    text = str(g["circuit"])
    if g["circuit"] == "open":
        text += f" (half-open {ago(g['open_until'])})" if g["open_until"] else " (until closed)"
    elif g["recent_failures"]:
        text += f" ({g['recent_failures']} failures)"
    return text


#: Below this many columns ``status`` draws no borders and drops the groups' rate, tokens
#: and hold columns, and the queue column when the file has one queue (the full table
#: needs about 140).
COMPACT_BELOW = 120
_GROUP_COLUMNS = (
    "queue",
    "group",
    "state",
    "pending",
    "running/limit",
    "done/s",
    "failed/s",
    "wait p95",
    "run p95",
    "rate",
    "tokens",
    "circuit",
    "held until",
)
_COMPACT_DROPS = ("rate", "tokens", "held until")
_NUMERIC = ("pending", "running/limit", "tokens", "done/s", "failed/s", "wait p95", "run p95")


#: Shorter headers in the compact layout.
_COMPACT_HEADERS = {"running/limit": "run/cap", "failed/s": "fail/s"}


def _table(title: str, compact: bool) -> Table:
    if compact:  # no borders: they cost 3 columns a column
        return Table(title=title, title_justify="left", box=None, pad_edge=False)
    return Table(title=title, title_justify="left")


def render(data: dict[str, Any], width: int = 200) -> Stack:
    compact = width < COMPACT_BELOW
    queues = _table("Queues", compact)
    for col in ("queue", "state", *STATUSES):
        queues.add_column(col, justify="left" if col in ("queue", "state") else "right")
    groups = _table("Resource groups", compact)
    dropped = set(_COMPACT_DROPS if compact else ())
    if compact and len(data["queues"]) == 1:
        dropped.add("queue")
    shown = [c for c in _GROUP_COLUMNS if c not in dropped]
    for col in shown:
        groups.add_column(
            _COMPACT_HEADERS.get(col, col) if compact else col,
            justify="right" if col in _NUMERIC else "left",
            no_wrap=True,
        )
    for entry in data["queues"]:
        counts = entry["counts"]
        queues.add_row(
            entry["name"], "paused" if entry["paused"] else "running", *(f"{counts[st]:,}" for st in STATUSES)
        )
        for g in entry["groups"]:
            cells = dict(zip(_GROUP_COLUMNS, _group_cells(entry, g)))
            groups.add_row(*(cells[c] for c in shown))
    lines = [_missing_line(entry, m) for entry in data["queues"] for m in entry["missing_processors"] if m["pending"]]
    lines += [
        Text(
            f"alert {a['name']!r} firing on queue {entry['name']!r}"
            f"{'' if a['group'] is None else ', group ' + repr(a['group'])}: {a['detail']}",
            style="red",
        )
        for entry in data["queues"]
        for a in entry["alerts_firing"]
    ]
    return Stack(queues, *([groups] if groups.row_count else []), *lines)


def _missing_line(entry: dict[str, Any], m: dict[str, Any]) -> Text:
    """A task name running workers cannot run: in a rolling deploy, until new workers run."""
    workers = list(m["workers"])
    which = (
        "the running workers"
        if len(workers) >= entry["alive_workers"]
        else f"{len(workers)} of {entry['alive_workers']} running workers"
    )
    shown = ", ".join(workers[:3]) + (f" and {len(workers) - 3} more" if len(workers) > 3 else "")
    tasks = "1 task" if m["pending"] == 1 else f"{m['pending']:,} tasks"
    verb = "has" if m["pending"] == 1 else "have"
    return Text(
        f"{tasks} of {m['task']!r} in queue {entry['name']!r} {verb} no processor in {which} ({shown}), "
        f"which give such tasks back until a worker that has it runs them",
        style="yellow",
    )


def _group_cells(entry: dict[str, Any], g: dict[str, Any]) -> list[str]:
    m = entry["metrics"].get(g["name"])
    return [
        entry["name"],
        g["name"],
        "paused" if g["paused"] else "active",
        f"{g['pending']:,}",
        _limit(g),
        *_rates(m),
        "-" if g["rate"] is None else f"{g['rate']:g}/s",
        "-" if g["tokens"] is None else f"{g['tokens']:.1f}",
        _circuit(g),
        ago(g["blocked_until"]) if g["blocked_until"] else "-",
    ]


@click.command()
@db_options
@output_option
@option("--watch", is_flag=True, help="Refresh live until Ctrl-C (with -o json: one JSON line per refresh).")
@option(
    "--interval",
    type=click.FloatRange(0.1, 3600),
    default=1.0,
    show_default=True,
    help="Seconds between refreshes with --watch.",
)
@click.pass_context
def status(
    ctx: click.Context, db: str | None, queue_name: str | None, output: str, watch: bool, interval: float
) -> None:
    """Depths per status, pauses, and each resource group's limits and circuit.

    Every queue in the file, or only --queue when given. Under 120 columns the groups'
    rate, tokens and held-until columns are left out (and the queue column, for one queue).
    """
    s = settings(ctx, db, queue_name)
    if not watch:
        data = collect(s)
        if output == "json":
            click.echo(dumps(data))
        else:
            out = console()
            out.print(render(data, out.width))
        return
    try:
        if output == "json":
            while True:
                click.echo(dumps(collect(s), pretty=False))
                time.sleep(interval)
        out = console()
        with Live(render(collect(s), out.width), console=out, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(render(collect(s), out.width), refresh=True)
    except KeyboardInterrupt:
        return
