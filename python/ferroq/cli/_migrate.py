"""``ferroq migrate SRC DST``: moves unfinished tasks between stores (SQLite <-> PostgreSQL)."""

from __future__ import annotations

import click

from .. import migrate as migration
from ._common import Settings, open_queue, option


@click.command("migrate")
@click.argument("src")
@click.argument("dst")
@option(
    "--batch",
    type=click.IntRange(1, 100_000),
    default=1000,
    show_default=True,
    help="Tasks per DST transaction (each with its checkpoint).",
)
@option("--dry-run", is_flag=True, help="Count what would move; change nothing.")
@option("--force", is_flag=True, help="Run even while workers are alive on SRC.")
@option(
    "--history",
    is_flag=True,
    help="First copy the finished tasks too (results, errors, histories); SRC keeps them. "
    "Only on the first run of a migration.",
)
@click.pass_context
def migrate_command(
    ctx: click.Context, src: str, dst: str, batch: int, dry_run: bool, force: bool, history: bool
) -> None:
    """Moves the unfinished tasks (pending, delayed, running -> pending) of every queue of SRC
    to DST, a SQLite file or a postgresql:// URL each. Safe to re-run after an interruption:
    it resumes where it stopped and copies nothing twice. With --queue, that queue only."""
    s = ctx.find_object(Settings) or Settings()
    # SRC must exist (a typo must not migrate an empty file it created); --queue must be there.
    open_queue(Settings(db=src, queue=s.queue, queue_given=s.queue_given, busy_timeout=s.busy_timeout)).close()
    queues = [s.queue] if s.queue_given else None
    reports = migration.migrate(src, dst, batch=batch, dry_run=dry_run, force=force, history=history, queues=queues)
    for r in reports:
        verb = "would copy" if dry_run else "copied"
        line = f"queue {r.queue}: {verb} {r.copied} task(s)"
        if history:
            line += f" and {r.history} finished"
            if r.history_already:
                line += f" (history resumed after SRC id {r.history_already})"
        if r.deduped:
            line += f", {r.deduped} already on DST by unique key"
        if r.already:
            line += f" (resumed after SRC id {r.already})"
        if r.cancelled_on_src:
            line += f"; cancelled {r.cancelled_on_src} on SRC (its queue stays paused)"
        if r.groups:
            line += f"; paused groups: {', '.join(r.groups)}"
        click.echo(line)
        if r.history_damaged:
            shown = ", ".join(map(str, r.history_damaged[:10]))
            click.echo(
                f"queue {r.queue}: {len(r.history_damaged)} damaged finished task(s) not copied: {shown}", err=True
            )
