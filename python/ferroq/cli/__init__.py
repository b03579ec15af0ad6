"""The ``ferroq`` command line: one module per command family, registered below.

A new command family (e.g. ``stats``, ``health``) is a module with click commands taking
``Settings`` through ``_common.settings`` and ``open_queue``; add it to ``_COMMANDS``.
Errors are translated once, in ``FerroqGroup.invoke``: a one-line message and an exit code.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from .. import __version__
from ..errors import FerroqError
from . import (
    _bench,
    _circuit,
    _control,
    _dashboard,
    _groups,
    _intel,
    _migrate,
    _observe,
    _schedules,
    _status,
    _tasks,
    _worker,
    _workers,
)
from ._common import ERROR_PREFIX, EXIT_CODES_HELP, CliError, Exit, Settings, option, show_error, translate

__all__ = ["main"]


class FerroqGroup(click.Group):
    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """click's standalone mode, with our ``error:`` prefix on every failure (click
        writes ``Error:``) and the documented exit codes."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.ClickException as e:
            show_error(e)
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo(f"{ERROR_PREFIX} aborted", err=True)
            sys.exit(Exit.FAILED)
        except BrokenPipeError:
            # `ferroq list | head`: the reader has what it wanted.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(Exit.OK)
        sys.exit(code if isinstance(code, int) else Exit.OK)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FerroqError as e:
            s = ctx.find_object(Settings) or Settings()
            raise translate(e, s.busy_timeout) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(Exit.INTERRUPTED)


@click.group(
    cls=FerroqGroup,
    epilog=EXIT_CODES_HELP,
    context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "FERROQ", "max_content_width": 100},
)
@click.version_option(__version__, prog_name="ferroq")
@option("--db", type=click.Path(dir_okay=False), envvar="FERROQ_DB", help="The queue's SQLite file.")
@option(
    "--queue",
    "queue_name",
    default="default",
    show_default=True,
    envvar="FERROQ_QUEUE",
    help="Queue name within the file.",
)
@option(
    "--busy-timeout",
    type=float,
    default=5.0,
    show_default=True,
    envvar="FERROQ_BUSY_TIMEOUT",
    help="Seconds to wait for a database another process holds locked.",
)
@click.pass_context
def main(ctx: click.Context, db: str | None, queue_name: str, busy_timeout: float) -> None:
    """ferroq: a durable, embedded task queue (one SQLite file, Rust engine).

    Every option can also be set by the environment variable shown next to it
    (e.g. FERROQ_DB=app.db ferroq status).
    """
    source = ctx.get_parameter_source("queue_name")
    given = source is not None and source is not click.core.ParameterSource.DEFAULT
    ctx.obj = Settings(db=db, queue=queue_name, queue_given=given, busy_timeout=busy_timeout)


_COMMANDS = [
    _worker.worker,
    _status.status,
    _tasks.list_command,
    _tasks.inspect,
    _tasks.export,
    _control.retry,
    _control.cancel,
    _control.purge,
    _control.pause,
    _control.resume,
    _observe.stats,
    _observe.health,
    _observe.events,
    _observe.profile,
    _intel.forecast,
    _intel.alerts,
    _bench.bench_command,
    _workers.workers,
    _schedules.schedules,
    _circuit.circuit,
    _groups.group,
    _dashboard.dashboard,
    _migrate.migrate_command,
]
for _command in _COMMANDS:
    main.add_command(_command)

__all__ += ["CliError", "Exit"]
