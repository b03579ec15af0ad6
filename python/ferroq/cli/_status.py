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
        return {"queues": [_queue_entry(Queue(q.path, name=n, busy_timeout=s.busy_timeout)) for n in names]}


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
        }


def _rates(m: dict[str, Any] | None) -> list[str]:
    """done/s, failed/s, wait p95 and run p95 (ms) over the status window."""
    if m is None:
        return ["-"] * 4
    window = m["window"]
    wait, run = m["wait"], m["run"]
    return [f"{m['completed'] / window:,.1f}", f"{m['failed'] / window:,.1f}",
            f"{wait['p95'] * 1000:,.1f}ms" if wait["count"] else "-",
            f"{run['p95'] * 1000:,.1f}ms" if run["count"] else "-"]


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


def render(data: dict[str, Any]) -> Stack:
    queues = Table(title="Queues", title_justify="left")
    for col in ("queue", "state", *STATUSES):
        queues.add_column(col, justify="left" if col in ("queue", "state") else "right")
    groups = Table(title="Resource groups", title_justify="left")
    numeric = ("pending", "running/limit", "tokens", "done/s", "failed/s", "wait p95", "run p95")
    for col in ("queue", "group", "state", "pending", "running/limit", "done/s", "failed/s", "wait p95",
                "run p95", "rate", "tokens", "circuit", "held until"):
        groups.add_column(col, justify="right" if col in numeric else "left")
    for entry in data["queues"]:
        counts = entry["counts"]
        queues.add_row(entry["name"], "paused" if entry["paused"] else "running",
                       *(f"{counts[st]:,}" for st in STATUSES))
        for g in entry["groups"]:
            m = entry["metrics"].get(g["name"])
            groups.add_row(
                entry["name"], g["name"], "paused" if g["paused"] else "active", f"{g['pending']:,}", _limit(g),
                *_rates(m),
                "-" if g["rate"] is None else f"{g['rate']:g}/s",
                "-" if g["tokens"] is None else f"{g['tokens']:.1f}",
                _circuit(g), ago(g["blocked_until"]) if g["blocked_until"] else "-",
            )
    lines = [_missing_line(entry, m) for entry in data["queues"] for m in entry["missing_processors"] if m["pending"]]
    return Stack(queues, *([groups] if groups.row_count else []), *lines)


def _missing_line(entry: dict[str, Any], m: dict[str, Any]) -> Text:
    """A task name running workers cannot run: in a rolling deploy, until new workers run."""
    workers = list(m["workers"])
    which = ("the running workers" if len(workers) >= entry["alive_workers"]
             else f"{len(workers)} of {entry['alive_workers']} running workers")
    shown = ", ".join(workers[:3]) + (f" and {len(workers) - 3} more" if len(workers) > 3 else "")
    tasks = "1 task" if m["pending"] == 1 else f"{m['pending']:,} tasks"
    verb = "has" if m["pending"] == 1 else "have"
    return Text(f"{tasks} of {m['task']!r} in queue {entry['name']!r} {verb} no processor in {which} ({shown}), "
                f"which give such tasks back until a worker that has it runs them", style="yellow")


@click.command()
@db_options
@output_option
@option("--watch", is_flag=True, help="Refresh live until Ctrl-C (with -o json: one JSON line per refresh).")
@option("--interval", type=click.FloatRange(0.1, 3600), default=1.0, show_default=True,
        help="Seconds between refreshes with --watch.")
@click.pass_context
def status(ctx: click.Context, db: str | None, queue_name: str | None, output: str, watch: bool,
           interval: float) -> None:
    """Depths per status, pauses, and each resource group's limits and circuit.

    Every queue in the file, or only --queue when given.
    """
    s = settings(ctx, db, queue_name)
    if not watch:
        data = collect(s)
        if output == "json":
            click.echo(dumps(data))
        else:
            console().print(render(data))
        return
    try:
        if output == "json":
            while True:
                click.echo(dumps(collect(s), pretty=False))
                time.sleep(interval)
        with Live(render(collect(s)), console=console(), auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(render(collect(s)), refresh=True)
    except KeyboardInterrupt:
        return
