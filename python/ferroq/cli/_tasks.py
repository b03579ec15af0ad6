"""Reading tasks: ``ferroq list``, ``ferroq inspect ID``, ``ferroq export``."""

from __future__ import annotations

import base64
import os
import sys
from dataclasses import fields
from datetime import datetime
from typing import Any, BinaryIO

import click
import orjson
from rich.cells import cell_len
from rich.markup import escape
from rich.table import Table

from ..errors import CorruptTask
from ..info import STATUSES, TaskInfo
from ..queue import LIST_LIMIT, Queue
from ._common import (
    ago,
    console,
    db_options,
    dumps,
    open_queue,
    option,
    output_option,
    progress_bar,
    resolve_name,
    settings,
    split_list,
    stamp,
)

STATUS_OPTION = option(
    "--status",
    multiple=True,
    metavar="STATUS",
    help=f"Only these statuses ({', '.join(STATUSES)}); repeat or comma-separate.",
)


def _error_line(t: TaskInfo, width: int = 60) -> str:
    if t.last_error is not None:
        text = f"{t.last_error.type}: {t.last_error.message}"
    elif t.corrupt is not None:
        text = f"CorruptTask: {t.corrupt}"
    else:
        return ""
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _record(info: TaskInfo) -> Any:
    """A task as ``-o json`` and ``export`` write it: the TaskInfo, or for one that cannot be
    read, what can be, its raw bytes (``raw_base64``) and an ``error``."""
    bad = info.corrupt
    if bad is None:
        return info
    data: dict[str, Any] = {}
    for f in fields(info):
        if f.name != "corrupt":
            try:
                data[f.name] = getattr(info, f.name)
            except CorruptTask:
                pass  # unreadable: its bytes are below
    data["error"] = {"type": "CorruptTask", "column": bad.column, "message": str(bad)}
    data["raw_base64"] = base64.b64encode(bad.raw or b"").decode()
    return data


def _readable(read: Any) -> Any:
    """``read()``, or a note if what it reads cannot be decoded."""
    try:
        return dumps(read(), pretty=False)
    except CorruptTask:
        return "(cannot be decoded: see below)"


def _get(q: Queue, task_id: int) -> TaskInfo:
    """The task, also when ``get`` cannot read its row: a listing shows such a row."""
    try:
        return q.get(task_id)
    except CorruptTask as e:
        listed = q.list(after_id=task_id - 1, limit=1) if task_id > -(2**63) else []
        if listed and listed[0].id == task_id:
            return listed[0]
        raise e from None


#: ``list`` columns always shown, then the others in the order they are dropped when the
#: terminal is too narrow (first dropped first). Said in ``ferroq list --help`` and the README.
LIST_ALWAYS = ("id", "name", "status")
LIST_DROPPED = ("last error", "finished", "created", "prio", "tries", "group", "run at")
_NAME_MIN = 12  # a name is cut (with …) down to this before any column is dropped
_ERROR_MIN = 20  # a last error is shown only with this much room


def _run_at(t: TaskInfo) -> str:
    """When a pending task will run (``in 59m``), or since when it has been due."""
    if t.status != "pending" or t.run_at is None:
        return "-"
    text = ago(t.run_at)
    return text if text.startswith("in ") else "due " + text


def _list_cells(t: TaskInfo) -> dict[str, str]:
    # A row that cannot be read (t.corrupt) may lack any field but its id and status: "?".
    return {
        "id": str(t.id),
        "name": t.name or "?",
        "status": t.status,
        "run at": _run_at(t),
        "group": t.resource_group or "?",
        "tries": f"{t.attempts}/{t.max_attempts}",
        "prio": str(t.priority),
        "created": ago(t.created_at),
        "finished": ago(t.finished_at),
        "last error": _error_line(t, 200),
    }


def list_columns(rows: list[dict[str, str]], width: int) -> dict[str, int]:
    """The columns that fit in ``width`` and their widths, in display order. The id and the
    status are never cut; the name is cut down to _NAME_MIN; then columns are dropped in
    LIST_DROPPED order; a last error takes what room is left."""
    natural = {c: max([cell_len(c)] + [cell_len(r[c]) for r in rows]) for c in LIST_ALWAYS + LIST_DROPPED}

    def total(cols: dict[str, int]) -> int:
        return sum(cols.values()) + 2 * (len(cols) - 1)  # one space either side between columns

    shown = {c: natural[c] for c in LIST_ALWAYS}
    shown["name"] = min(natural["name"], max(_NAME_MIN, width - total(shown) + natural["name"]))
    for col in reversed(LIST_DROPPED):
        need = min(natural[col], _ERROR_MIN) if col == "last error" else natural[col]
        if total({**shown, col: need}) <= width:
            shown[col] = natural[col]
    if "last error" in shown:
        shown["last error"] = min(natural["last error"], width - total(shown) + shown["last error"])
    order = ("id", "name", "status", "run at", "group", "prio", "tries", "created", "finished", "last error")
    return {c: shown[c] for c in order if c in shown}


@click.command(
    "list",
    epilog="Columns: id, name and status always; in a narrow terminal the others are "
    f"dropped in this order: {', '.join(LIST_DROPPED)} (the name is cut first). "
    '"run at" is when a pending task will run, or since when it has been due.',
)
@db_options
@output_option
@STATUS_OPTION
@option("--group", default=None, help="Only this resource group.")
@option(
    "--name", default=None, help="Only this task name, or a unique suffix of one at a dot (charge: shop.tasks.charge)."
)
@option("--limit", type=click.IntRange(1, 100_000), default=LIST_LIMIT, show_default=True, help="At most this many.")
@option(
    "--after",
    "after_id",
    type=int,
    default=None,
    help="Page on: tasks after this id in the listing order (the last id of the previous page).",
)
@option("--oldest-first", is_flag=True, help="Oldest first (default: newest first).")
@click.pass_context
def list_command(
    ctx: click.Context,
    db: str | None,
    queue_name: str | None,
    output: str,
    status: tuple[str, ...],
    group: str | None,
    name: str | None,
    limit: int,
    after_id: int | None,
    oldest_first: bool,
) -> None:
    """Tasks by id, newest first, filtered by status, group and name."""
    with open_queue(settings(ctx, db, queue_name)) as q:
        tasks = q.list(
            status=split_list(status),
            group=group,
            name=resolve_name(q, name),
            limit=limit,
            after_id=after_id,
            newest_first=not oldest_first,
        )
    if output == "json":
        click.echo(dumps([_record(t) for t in tasks]))
        return
    out = console()
    rows = [_list_cells(t) for t in tasks]
    table = Table(box=None, pad_edge=False)
    columns = list_columns(rows, out.width)
    for col, width in columns.items():
        table.add_column(
            col,
            justify="right" if col in ("id", "prio", "tries") else "left",
            no_wrap=True,
            width=width,
            overflow="ellipsis",
        )
    for row in rows:
        table.add_row(*(escape(row[c]) for c in columns))
    out.print(table)
    if len(tasks) == limit:
        out.print(f"[dim]more: --after {tasks[-1].id}[/dim]")
    elif not tasks:
        out.print("no tasks match")


@click.command()
@db_options
@output_option
@click.argument("task_id", metavar="ID", type=int)
@click.pass_context
def inspect(ctx: click.Context, db: str | None, queue_name: str | None, output: str, task_id: int) -> None:
    """One task: its fields, arguments, result, last error with traceback, and history."""
    with open_queue(settings(ctx, db, queue_name)) as q:
        info, history = _get(q, task_id), q.history(task_id)
    if output == "json":
        click.echo(dumps({"task": _record(info), "history": history}))
        return
    out = console()
    table_of_fields = Table.grid(padding=(0, 2))
    table_of_fields.add_column(style="bold")
    table_of_fields.add_column()
    rows: list[tuple[str, Any]] = [
        ("id", info.id),
        ("queue", info.queue),
        ("name", info.name),
        ("status", info.status),
        ("resource group", info.resource_group),
        ("routed", info.route),
        ("priority", info.priority),
        ("attempts", f"{info.attempts}/{info.max_attempts}"),
        ("unique key", info.unique_key),
        ("progress", info.progress),
        ("progress message", info.progress_message),
        ("created", info.created_at),
        ("run at", info.run_at),
        ("started", info.started_at),
        ("finished", info.finished_at),
        ("lease owner", info.lease_owner),
        ("lease expires", info.lease_expires_at),
        ("args", _readable(lambda: info.args)),
        ("kwargs", _readable(lambda: info.kwargs)),
        ("result", _readable(lambda: info.result)),
    ]
    for key, value in rows:
        if value is not None:
            table_of_fields.add_row(key, escape(stamp(value) if isinstance(value, datetime) else str(value)))
    out.print(table_of_fields)
    if info.corrupt is not None:
        raw = base64.b64encode(info.corrupt.raw or b"").decode()
        out.print(
            f"\n[bold]cannot be read[/bold]: {escape(str(info.corrupt))}\n"
            f"column {escape(str(info.corrupt.column))}, raw bytes (base64): {raw}",
            soft_wrap=True,
        )
    if info.last_error is not None:
        out.print(f"\n[bold]last error[/bold]: {escape(info.last_error.type)}: {escape(info.last_error.message)}")
        if info.last_error.traceback:
            out.print(escape(info.last_error.traceback.rstrip()), soft_wrap=True)
    table = Table(title="history", title_justify="left", box=None, pad_edge=False)
    for col in ("at", "from", "to", "worker", "error"):
        table.add_column(col, no_wrap=col != "error")
    for tr in history:
        error = "" if tr.error is None else f"{tr.error.type}: {tr.error.message}"
        table.add_row(stamp(tr.at), tr.from_status or "-", tr.to_status, escape(tr.worker or "-"), escape(error))
    out.print()
    out.print(table)


@click.command()
@db_options
@STATUS_OPTION
@option("--group", default=None, help="Only this resource group.")
@option("--name", default=None, help="Only this task name (or a unique suffix of one at a dot).")
@option(
    "--page-size",
    type=click.IntRange(1, 100_000),
    default=1000,
    show_default=True,
    help="Tasks read per query (memory is bounded by one page).",
)
@click.pass_context
def export(
    ctx: click.Context,
    db: str | None,
    queue_name: str | None,
    status: tuple[str, ...],
    group: str | None,
    name: str | None,
    page_size: int,
) -> None:
    """Every matching task as JSON lines on stdout, oldest first (ferroq export > tasks.jsonl).

    Streams page by page: memory stays flat whatever the number of tasks.
    """
    statuses = split_list(status)
    out = sys.stdout.buffer
    try:
        _export(ctx, db, queue_name, statuses, group, name, page_size, out)
    except BrokenPipeError:
        # `ferroq export | head`: the reader has what it wanted; not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _export(
    ctx: click.Context,
    db: str | None,
    queue_name: str | None,
    statuses: list[str],
    group: str | None,
    name: str | None,
    page_size: int,
    out: BinaryIO,
) -> None:
    with open_queue(settings(ctx, db, queue_name)) as q:
        name = resolve_name(q, name)
        # The total is known cheaply only per status (counts use the status indexes).
        total = None if group or name else sum(n for st, n in q.counts().items() if not statuses or st in statuses)
        with progress_bar("exporting") as progress:
            bar = progress.add_task("exporting", total=total)
            for i, info in enumerate(q.iter_tasks(status=statuses, group=group, name=name, page_size=page_size), 1):
                out.write(orjson.dumps(_record(info), default=str) + b"\n")
                if i % page_size == 0:
                    progress.update(bar, completed=i)
    out.flush()
