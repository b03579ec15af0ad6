"""``ferroq circuit open|close|reset GROUP``: steer a resource group's circuit breaker by
hand (every worker on the file obeys: the state is stored in it)."""

from __future__ import annotations

import click

from ._common import Duration, db_options, dumps, open_queue, option, output_option, settings
from ._groups import require_group

_REASON = {"open": "opened by hand", "close": "closed by hand", "reset": "reset by hand"}


@click.command()
@db_options
@output_option
@click.argument("action", type=click.Choice(["open", "close", "reset"]))
@click.argument("group", metavar="GROUP")
@option(
    "--for",
    "duration",
    type=Duration(),
    default=None,
    help="With open: turn half-open after this long (30s, 15m, 1h). Default: open until closed.",
)
@option("--reason", default=None, help="Recorded with the transition (ferroq events).")
@option("--create", is_flag=True, help="Act on a group that has no settings and no unfinished tasks yet.")
@click.pass_context
def circuit(
    ctx: click.Context,
    db: str | None,
    queue_name: str | None,
    output: str,
    action: str,
    group: str,
    duration: float | None,
    reason: str | None,
    create: bool,
) -> None:
    """Open, close or reset the circuit breaker of GROUP. open: its tasks stay pending (with
    --for, it turns half-open after that long, as a tripped breaker does); close: they run
    again; reset: close and forget the failure count and open-time backoff."""
    if duration is not None and action != "open":
        raise click.UsageError("--for applies to open")
    s = settings(ctx, db, queue_name)
    with open_queue(s) as q:
        require_group(q, group, create, f"{action} the circuit of")
        c = q.circuit(group)
        why = reason or _REASON[action]
        if action == "open":
            c.open(duration, reason=why)
        elif action == "close":
            c.close(reason=why)
        else:
            c.reset(reason=why)
        state = c.state
    text = f"circuit of group {group!r} (queue {s.queue!r}) is {state}"
    click.echo(
        dumps({"queue": s.queue, "group": group, "action": action, "state": state}) if output == "json" else text
    )
