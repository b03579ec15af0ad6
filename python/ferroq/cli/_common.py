"""What every command shares: options, opening the database safely, output, exit codes."""

from __future__ import annotations

import functools
import os
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import IntEnum
from typing import Any, Callable, TypeVar

import click
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import (
    CorruptDatabase,
    DatabasePathError,
    FerroqError,
    ForeignDatabase,
    InvalidArgument,
    InvalidTransition,
    SchemaTooNew,
    StorageError,
    UnknownTask,
)
from .._units import duration
from ..queue import Queue, is_database_url

F = TypeVar("F", bound=Callable[..., Any])


class Exit(IntEnum):
    """Exit codes (documented in ``ferroq --help`` and the README)."""

    OK = 0
    FAILED = 1  # an action was refused or failed (e.g. cancelling a running task), or unhealthy
    USAGE = 2  # bad arguments (click's own code)
    DATABASE = 3  # the database is missing, locked, corrupt, or not usable by this ferroq
    NOT_FOUND = 4  # no task with that id, no queue (--queue) or group of that name
    INTERRUPTED = 130


EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 an action was refused or failed (or unhealthy); 2 usage error; "
    "3 database missing, locked, corrupt, too new or not ferroq's; 4 no such task, queue or group; "
    "130 interrupted."
)


#: Every message the CLI prints for a failure starts with this (click's own "Error:" too).
ERROR_PREFIX = "error:"


def show_error(e: click.ClickException) -> None:
    """``error: message`` on stderr; a usage error first shows the usage and where help is."""
    ctx = getattr(e, "ctx", None)
    if isinstance(e, click.UsageError) and ctx is not None:
        click.echo(f"{ctx.get_usage()}\nTry '{ctx.command_path} --help' for help.\n", err=True)
    click.echo(f"{ERROR_PREFIX} {e.format_message()}", err=True)


class CliError(click.ClickException):
    """A one-line message on stderr and an exit code; never a traceback."""

    def __init__(self, message: str, code: Exit = Exit.FAILED) -> None:
        super().__init__(message)
        self.code = int(code)

    @property
    def exit_code(self) -> int:  # click reads it when it exits; a class attribute there
        return self.code

    @exit_code.setter
    def exit_code(self, value: int) -> None:
        self.code = value


class EnvOption(click.Option):
    """Every option also reads a ``FERROQ_*`` variable, and ``--help`` lists it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("show_envvar", True)
        super().__init__(*args, **kwargs)


option = functools.partial(click.option, cls=EnvOption)


@dataclass
class Settings:
    """The group's options, for the commands (each may override --db and --queue)."""

    db: str | None = None
    queue: str = "default"
    queue_given: bool = False
    busy_timeout: float = 5.0


def _on_command_line(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE


def db_options(fn: F) -> F:
    """``--db`` and ``--queue`` on a command too (``ferroq list --db x.db`` reads naturally)."""
    fn = option(
        "--queue",
        "queue_name",
        envvar="FERROQ_QUEUE",
        default=None,
        help="Queue name [default: the group's --queue, or 'default'].",
    )(fn)
    return option(
        "--db",
        "db",
        envvar="FERROQ_DB",
        type=click.Path(dir_okay=False),
        default=None,
        help="Database file [default: the group's --db].",
    )(fn)


def settings(ctx: click.Context, db: str | None = None, queue: str | None = None) -> Settings:
    """The group's settings (options or environment) with this command's own --db/--queue
    applied when given on its command line: ``ferroq --db a.db list`` must not lose to
    FERROQ_DB, which both levels read."""
    base: Settings = ctx.find_object(Settings) or Settings()
    out = Settings(base.db, base.queue, base.queue_given, base.busy_timeout)
    if db is not None and (_on_command_line(ctx, "db") or out.db is None):
        out.db = db
    if queue is not None and (_on_command_line(ctx, "queue_name") or not out.queue_given):
        out.queue, out.queue_given = queue, True
    return out


SQLITE_HEADER = b"SQLite format 3\x00"


def open_queue(s: Settings, *, new_queue: bool = False) -> Queue:
    """Opens an existing database. Never creates one: ``Queue(path)`` would, and a typo in
    ``--db`` must not leave an empty database behind. A queue named with --queue must exist
    (exit 4) unless ``new_queue`` (``pause --create``)."""
    if not s.db:
        raise CliError("no database given: pass --db PATH or set FERROQ_DB", Exit.USAGE)
    path = s.db
    if is_database_url(path):
        # A server: Queue never creates a database there, only its schema's tables.
        return _open_checked(path, s, new_queue)
    if not os.path.exists(path):
        raise CliError(f"no database at {path} (check --db or FERROQ_DB)", Exit.DATABASE)
    if not os.path.isfile(path):
        raise CliError(f"{path} is not a file", Exit.DATABASE)
    try:
        with open(path, "rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror}", Exit.DATABASE) from None
    if header != SQLITE_HEADER:
        raise CliError(f"{path} is not a ferroq database (not SQLite, or damaged)", Exit.DATABASE)
    return _open_checked(path, s, new_queue)


def _open_checked(path: str, s: Settings, new_queue: bool) -> Queue:
    q = Queue(path, name=s.queue, busy_timeout=s.busy_timeout)
    if s.queue_given and not new_queue:
        _require_queue(q)
    return q


def _require_queue(q: Queue) -> None:
    """A queue exists once it has tasks, group settings, a pause or a registered worker."""
    names = q.queue_names()
    if q.name in names or q.workers():
        return
    q.close()
    known = ", ".join(repr(n) for n in names[:10]) or "none"
    raise CliError(
        f"no queue {q.name!r} in {q.path} (queues there: {known}); check --queue or FERROQ_QUEUE", Exit.NOT_FOUND
    )


def translate(e: FerroqError, busy_timeout: float) -> CliError:
    """A ferroq error as the one-line message and exit code the CLI reports."""
    text = str(e)
    if isinstance(e, UnknownTask):
        return CliError(text, Exit.NOT_FOUND)
    if isinstance(e, InvalidTransition):
        return CliError(text, Exit.FAILED)
    if isinstance(e, InvalidArgument):
        return CliError(text, Exit.USAGE)
    if isinstance(e, (CorruptDatabase, SchemaTooNew, DatabasePathError, ForeignDatabase)):
        return CliError(text, Exit.DATABASE)
    if isinstance(e, StorageError):
        if re.search(r"locked|busy", text, re.IGNORECASE):
            return CliError(
                f"the database is locked by another process (waited {busy_timeout:g}s; "
                f"raise --busy-timeout or try again): {text}",
                Exit.DATABASE,
            )
        return CliError(text, Exit.DATABASE)
    return CliError(text, Exit.FAILED)


# -- output ------------------------------------------------------------------------------


def output_option(fn: F) -> F:
    return option(
        "-o",
        "--output",
        envvar="FERROQ_OUTPUT",
        type=click.Choice(["table", "json"]),
        default="table",
        show_default=True,
        help="Output format.",
    )(fn)


def console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    # The terminal's width, or COLUMNS when set (rich reads it); not a terminal and no
    # COLUMNS (a pipe, a log): wide enough that tables are not cut.
    wide = not stream.isatty() and not os.environ.get("COLUMNS", "").strip().isdigit()
    return Console(file=stream, width=200 if wide else None, highlight=False)


def dumps(obj: Any, *, pretty: bool = True) -> str:
    """JSON for ``-o json``: dataclasses and datetimes as orjson writes them (RFC 3339);
    anything else a custom serializer decoded, as its ``str``."""
    return orjson.dumps(obj, default=str, option=orjson.OPT_INDENT_2 if pretty else 0).decode()


def stamp(at: datetime | None) -> str:
    """A time for a table: UTC to the millisecond."""
    return "-" if at is None else at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def ago(at: datetime | None, now: datetime | None = None) -> str:
    """A time for a table: how long ago (or from now), e.g. ``3m ago``."""
    if at is None:
        return "-"
    seconds = ((now or datetime.now(timezone.utc)) - at).total_seconds()
    text = duration(abs(seconds))
    return f"in {text}" if seconds < 0 else f"{text} ago"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


class Duration(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click
    """``90``, ``90s``, ``15m``, ``1h``, ``7d``, ``2w`` -> seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        m = _DURATION.match(str(value))
        if not m:
            self.fail(f"{value!r} is not a duration (e.g. 30s, 15m, 1h, 7d)", param, ctx)
        return float(m.group(1)) * _UNITS[m.group(2)]


def split_list(values: tuple[str, ...]) -> list[str]:
    """``--status dead --status cancelled`` and ``--status dead,cancelled`` alike."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def progress_bar(what: str) -> Progress:
    """A bar on stderr for long operations, only when stderr is a terminal (pipes, logs and
    ``-o json`` stay clean)."""
    return Progress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console(stderr=True),
        disable=not sys.stderr.isatty(),
        transient=True,
    )


def resolve_name(q: Queue, name: str | None) -> str | None:
    """``--name``: a stored task name, or a unique suffix of one at a dot boundary
    (``charge`` for ``shop.tasks.charge``). Ambiguous: a usage error naming the matches."""
    if name is None:
        return None
    found = q.task_names(name)
    if name in found or not found:
        return name
    if len(found) == 1:
        return found[0]
    shown = ", ".join(found[:10]) + (f" (and {len(found) - 10} more)" if len(found) > 10 else "")
    raise CliError(f"--name {name!r} matches several task names: {shown}; give the full name", Exit.USAGE)
