"""Resource groups by name: ``ferroq group forget GROUP``, and the check that a group named
on the command line exists (so a typo does not leave a phantom group behind)."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import click

from ..queue import Queue
from ._common import CliError, Exit, db_options, dumps, open_queue, option, output_option, settings

F = TypeVar("F", bound=Callable[..., Any])


def require_group(q: Queue, group: str, create: bool, what: str | None) -> None:
    """Refuses a group that has no stored settings and no pending or running task, unless
    ``create``: pausing (or opening the circuit of) a misspelt group would store a new one
    that nothing uses, shown by ``status`` and Prometheus until forgotten. ``what``: the
    action --create allows (None: no --create for it, e.g. resume)."""
    if create:
        return
    names = q._store.group_names(q.name)
    if group in names:
        return
    known = ", ".join(repr(n) for n in names[:10]) or "none"
    hint = f"; pass --create to {what} it anyway" if what else ""
    raise CliError(
        f"no group {group!r} in queue {q.name!r} (groups with settings or unfinished tasks: {known}){hint}",
        Exit.NOT_FOUND,
    )


def create_option(what: str) -> Callable[[F], F]:
    return option(
        "--create", is_flag=True, help=f"{what} a group (or --queue) that has no settings and no unfinished tasks yet."
    )


@click.group()
def group() -> None:
    """Resource groups' stored settings."""


@group.command()
@db_options
@output_option
@click.argument("name", metavar="GROUP")
@option("--force", is_flag=True, help="Forget even while the group has pending or running tasks.")
@click.pass_context
def forget(ctx: click.Context, db: str | None, queue_name: str | None, output: str, name: str, force: bool) -> None:
    """Delete a group's stored settings (breaker, throttle), pause and circuit state; its
    events stay. Refused (exit 1) while it has pending or running tasks, which would then run
    without its limits, unless --force. A process that declares the group again in code
    (q.group(name, breaker=...)) stores its settings anew."""
    s = settings(ctx, db, queue_name)
    with open_queue(s) as q:
        forgot = q.group(name).forget(force=force)
    text = (
        f"forgot group {name!r} of queue {s.queue!r}"
        if forgot
        else f"group {name!r} of queue {s.queue!r} had nothing stored"
    )
    click.echo(dumps({"queue": s.queue, "group": name, "forgotten": forgot}) if output == "json" else text)
