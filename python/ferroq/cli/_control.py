"""Changing tasks and queues: ``retry``, ``cancel``, ``purge``, ``pause``, ``resume``."""

from __future__ import annotations

from typing import Any, Callable

import click

from ..errors import InvalidTransition, UnknownTask
from ..queue import Queue
from .._units import duration
from ._common import (
    ERROR_PREFIX,
    CliError,
    Duration,
    Exit,
    Settings,
    db_options,
    dumps,
    open_queue,
    option,
    output_option,
    progress_bar,
    resolve_name,
    settings,
    split_list,
)
from ._groups import create_option, require_group

FINISHED = ("completed", "dead", "cancelled")


def _report(output: str, data: dict[str, Any], text: str) -> None:
    click.echo(dumps(data) if output == "json" else text)


def _each(q: Queue, ids: tuple[int, ...], action: Callable[[int], None]) -> tuple[list[int], dict[int, str]]:
    """Applies ``action`` to every id; the ids done, and the failures by id."""
    done, failed = [], {}
    for task_id in ids:
        try:
            action(task_id)
            done.append(task_id)
        except (InvalidTransition, UnknownTask) as e:
            failed[task_id] = str(e)
    return done, failed


def _finish_each(output: str, verb: str, done: list[int], failed: dict[int, str], extra: dict[str, Any]) -> None:
    """``{verb: how many, "failed": {id: message}, **extra}``; exit 1 if any was refused,
    4 if every failure is a missing task."""
    if output == "json":
        click.echo(dumps({verb: len(done), **extra, "failed": {str(k): v for k, v in failed.items()}}))
    else:
        for task_id in done:
            click.echo(f"{verb} task {task_id}")
        for msg in failed.values():
            click.echo(f"{ERROR_PREFIX} {msg}", err=True)
    if failed:
        missing = all(msg.startswith("no task") for msg in failed.values())
        raise click.exceptions.Exit(Exit.NOT_FOUND if missing else Exit.FAILED)


@click.command()
@db_options
@output_option
@click.argument("task_ids", metavar="[ID]...", nargs=-1, type=int)
@option("--all-dead", is_flag=True, help="Every dead task (with --group/--name: those only).")
@option("--group", default=None, help="With --all-dead: only this resource group.")
@option("--name", default=None, help="With --all-dead: only this task name.")
@click.pass_context
def retry(
    ctx: click.Context,
    db: str | None,
    queue_name: str | None,
    output: str,
    task_ids: tuple[int, ...],
    all_dead: bool,
    group: str | None,
    name: str | None,
) -> None:
    """Send dead (or cancelled) tasks back to pending with fresh attempts: the IDs given,
    or --all-dead."""
    if bool(task_ids) == all_dead:
        raise CliError("give task IDs or --all-dead (one of them)", Exit.USAGE)
    if (group or name) and not all_dead:
        raise CliError("--group and --name apply to --all-dead", Exit.USAGE)
    with open_queue(settings(ctx, db, queue_name)) as q:
        if task_ids:
            done, failed = _each(q, task_ids, q.requeue)
            _finish_each(output, "requeued", done, failed, {"skipped": []})
            return
        name = resolve_name(q, name)
        total = q.count_finished("dead", group=group, name=name)
        with progress_bar("requeueing") as progress:
            bar = progress.add_task("requeueing", total=total)
            result = q.retry_dead(group=group, name=name, progress=lambda n: progress.update(bar, completed=n))
    text = f"requeued {result.count:,} dead task(s)"
    if result.skipped:
        text += (
            f"; {len(result.skipped)} left dead, their unique key is held by an unfinished task: "
            + ", ".join(map(str, result.skipped[:20]))
            + (" ..." if len(result.skipped) > 20 else "")
        )
    # One shape for both forms (see _finish_each): a count, the ids left dead, the failures by id.
    _report(output, {"requeued": result.count, "skipped": result.skipped, "failed": {}}, text)


@click.command()
@db_options
@output_option
@click.argument("task_ids", metavar="[ID]...", nargs=-1, type=int)
@option(
    "--all-pending", is_flag=True, help="Every pending task, delayed ones included (with --group/--name: those only)."
)
@option("--group", default=None, help="With --all-pending: only this resource group.")
@option("--name", default=None, help="With --all-pending: only this task name.")
@option("-y", "--yes", is_flag=True, help="With --all-pending: do not ask for confirmation.")
@option("--dry-run", is_flag=True, help="With --all-pending: only count what would be cancelled.")
@click.pass_context
def cancel(
    ctx: click.Context,
    db: str | None,
    queue_name: str | None,
    output: str,
    task_ids: tuple[int, ...],
    all_pending: bool,
    group: str | None,
    name: str | None,
    yes: bool,
    dry_run: bool,
) -> None:
    """Cancel pending tasks: the IDs given, or --all-pending (a running task cannot be
    cancelled: exit code 1 for an ID; --all-pending leaves running tasks to their runs)."""
    if bool(task_ids) == all_pending:
        raise CliError("give task IDs or --all-pending (one of them)", Exit.USAGE)
    if (group or name or yes or dry_run) and not all_pending:
        raise CliError("--group, --name, --yes and --dry-run apply to --all-pending", Exit.USAGE)
    with open_queue(settings(ctx, db, queue_name)) as q:
        if task_ids:
            done, failed = _each(q, task_ids, q.cancel)
            _finish_each(output, "cancelled", done, failed, {})
            return
        name = resolve_name(q, name)
        total = q.count_pending(group=group, name=name)
        if dry_run or total == 0:
            text = f"would cancel {total:,} pending task(s) of queue {q.name!r}" if dry_run else "nothing to cancel"
            _report(output, {"cancelled": 0, "matching": total, "dry_run": dry_run}, text)
            return
        if not yes:
            click.confirm(f"Cancel {total:,} pending task(s) of queue {q.name!r}?", abort=True, err=True)
        with progress_bar("cancelling") as progress:
            bar = progress.add_task("cancelling", total=total)
            cancelled = q.cancel_pending(group=group, name=name, progress=lambda n: progress.update(bar, completed=n))
    _report(output, {"cancelled": cancelled, "matching": total, "dry_run": False}, f"cancelled {cancelled:,} task(s)")


@click.command()
@db_options
@output_option
@option(
    "--status",
    multiple=True,
    required=True,
    metavar="STATUS",
    help="completed, dead and/or cancelled; repeat or comma-separate.",
)
@option(
    "--older-than",
    type=Duration(),
    default=None,
    help="Only tasks finished longer ago than this (30s, 15m, 12h, 7d, 2w). Default: all.",
)
@option("--group", default=None, help="Only this resource group.")
@option("--name", default=None, help="Only this task name.")
@option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@click.pass_context
def purge(
    ctx: click.Context,
    db: str | None,
    queue_name: str | None,
    output: str,
    status: tuple[str, ...],
    older_than: float | None,
    group: str | None,
    name: str | None,
    yes: bool,
    dry_run: bool,
) -> None:
    """Delete finished tasks (with their results and history), in small transactions."""
    statuses = split_list(status)
    for st in statuses:
        if st not in FINISHED:
            raise CliError(f"purge deletes finished tasks only ({', '.join(FINISHED)}), not {st!r}", Exit.USAGE)
    s = settings(ctx, db, queue_name)
    with open_queue(s) as q:
        name = resolve_name(q, name)
        total = q.count_finished(statuses, older_than=older_than, group=group, name=name)
        what = (
            f"{total:,} {'/'.join(statuses)} task(s)"
            + (f" finished more than {duration(older_than)} ago" if older_than is not None else "")
            + f" from queue {q.name!r}"
        )
        if dry_run or total == 0:
            _report(
                output,
                {"deleted": 0, "matching": total, "dry_run": dry_run},
                f"would delete {what}" if dry_run else "nothing to purge",
            )
            return
        if not yes:
            click.confirm(f"Delete {what}?", abort=True, err=True)
        with progress_bar("purging") as progress:
            bar = progress.add_task("purging", total=total)
            deleted = q.purge(
                statuses,
                older_than=older_than,
                group=group,
                name=name,
                progress=lambda n: progress.update(bar, completed=n),
            )
    _report(output, {"deleted": deleted, "matching": total, "dry_run": False}, f"deleted {deleted:,} task(s)")


def _pause(ctx: click.Context, s: Settings, group: str | None, output: str, paused: bool, create: bool = False) -> None:
    verb = "paused" if paused else "resumed"
    if group is None and not s.queue_given:
        raise CliError(f"name a GROUP, or pass --queue NAME to {verb[:-1]} a whole queue", Exit.USAGE)
    with open_queue(s, new_queue=create) as q:
        if group is not None:
            require_group(q, group, create, "pause" if paused else None)
        if group is None:
            changed = q.pause() if paused else q.resume()
            target = f"queue {q.name!r}"
        else:
            g = q.group(group)
            changed = g.pause() if paused else g.resume()
            target = f"group {group!r} of queue {q.name!r}"
    text = f"{verb} {target}" if changed else f"{target} was already {verb}"
    _report(output, {"queue": s.queue, "group": group, "paused": paused, "changed": changed}, text)


@click.command()
@db_options
@output_option
@click.argument("group", required=False)
@create_option("Pause")
@click.pass_context
def pause(
    ctx: click.Context, db: str | None, queue_name: str | None, output: str, group: str | None, create: bool
) -> None:
    """Stop workers claiming a resource group's tasks (or, with --queue and no GROUP, a whole
    queue's). Running tasks finish; the pause is stored in the file, every worker obeys.
    An unknown group or queue is refused (exit 4) unless --create."""
    _pause(ctx, settings(ctx, db, queue_name), group, output, True, create)


@click.command()
@db_options
@output_option
@click.argument("group", required=False)
@click.pass_context
def resume(ctx: click.Context, db: str | None, queue_name: str | None, output: str, group: str | None) -> None:
    """Let workers claim a paused group's (or, with --queue and no GROUP, queue's) tasks again."""
    _pause(ctx, settings(ctx, db, queue_name), group, output, False)
