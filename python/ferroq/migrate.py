"""``ferroq migrate SRC DST``: moves the unfinished tasks of every queue from one store to
another (SQLite file or PostgreSQL URL, either way), engine-neutrally through the store API.

Why new ids on DST, not the old ones: DST may already hold tasks (ids are the engine's to
give), and what ids carry is kept anyway: tasks are copied in SRC id order, so FIFO within a
priority survives, and each keeps its unique key, which dedupes on DST as it did on SRC (a key
already unfinished on DST is not copied twice).

Nothing is lost or copied twice if the migration stops halfway: every batch is inserted on DST
in one transaction together with a *checkpoint*, a task named ``ferroq.migrate`` that never
runs (its run_at is far away) whose unique key names SRC, the queue and the last SRC id copied.
A re-run resumes after the highest checkpoint. Once a queue is copied, its copied pending
tasks are cancelled on SRC and the checkpoints are cancelled (kept as the migration's trail, so
a re-run after a finished migration copies nothing).

With ``history=True`` the finished tasks (completed, dead, cancelled, with their results,
errors and histories) are copied first, up to the highest SRC id when the first run began
(the *bound*), under checkpoints of their own (cancelled ``ferroq.migrate`` tasks naming the
bound and the last SRC id copied). SRC keeps them. The pass must come with the first run: once
the unfinished tasks are moved, SRC's copied pending tasks are cancelled, and they could no
longer be told apart from tasks cancelled before.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._core import FinishedTask, NewTask
from .errors import InvalidArgument, InvalidTransition
from .queue import Queue

__all__ = ["MARKER", "QueueReport", "migrate"]

#: The name of the checkpoint tasks a migration leaves on DST.
MARKER = "ferroq.migrate"
# 9000-01-01: a checkpoint never becomes due.
_NEVER_MS = 221845392000000
_UNFINISHED = ["pending", "running"]


@dataclass
class QueueReport:
    queue: str
    copied: int = 0
    deduped: int = 0  # a unique key already unfinished on DST
    already: int = 0  # copied by an earlier, interrupted run
    cancelled_on_src: int = 0
    groups: list[str] = field(default_factory=list)
    paused: bool = False
    history: int = 0  # finished tasks copied (with --history)
    history_already: int = 0  # SRC id up to which an earlier run copied them
    history_damaged: list[int] = field(default_factory=list)  # SRC ids not copied: damaged rows


def _location_token(q: Queue, queue: str) -> str:
    """A short id of (SRC, queue) for checkpoint keys: a re-run from the same SRC finds them."""
    return hashlib.sha256(f"{q.path}\0{queue}".encode()).hexdigest()[:16]


def _history_token(q: Queue, queue: str) -> str:
    return _location_token(q, f"{queue}\0history")


def _history_checkpoint(dst: Queue, token: str) -> tuple[int, int] | None:
    """(the bound, the last SRC id copied) of a previous history pass; None if none ran."""
    prefix, found = f"{MARKER}:{token}:", None
    for t in dst.iter_tasks(name=MARKER):
        if t.unique_key and t.unique_key.startswith(prefix):
            bound, last = map(int, t.unique_key[len(prefix) :].split(":"))
            if found is None or last > found[1]:
                found = (bound, last)
    return found


def _copy_history(
    src: Queue,
    dst: Queue,
    report: QueueReport,
    batch: int,
    dry_run: bool,
    progress: Callable[[QueueReport], None] | None,
) -> None:
    """Copies SRC's finished tasks up to the bound, one DST transaction per batch with its
    checkpoint; resumes after the last checkpoint (see the module)."""
    queue = src.name
    token = _history_token(src, queue)
    found = _history_checkpoint(dst, token)
    if found is None:
        if _checkpoint(dst, _location_token(src, queue)) is not None:
            raise InvalidArgument(
                f"queue {queue!r}: its unfinished tasks were migrated without --history; their "
                "copies cancelled on SRC can no longer be told apart from its history"
            )
        newest = src._store.list_tasks(queue, [], None, None, None, True, 1)
        bound, after = (int(newest[0]["id"]) if newest else 0), 0
    else:
        bound, after = found
    report.history_already = after

    def checkpoint(last: int) -> FinishedTask:
        key = f"{MARKER}:{token}:{bound}:{last}"
        return FinishedTask.checkpoint(MARKER, _marker_payload(src), key, int(time.time() * 1000))

    while after < bound:
        page = src._store.export_finished(queue, after, bound, batch)
        if not page:
            break
        after = page[-1].id
        report.history_damaged += [t.id for t in page if t.corrupt is not None]
        rows = [t for t in page if t.corrupt is None and t.name != MARKER]  # a trail stays
        report.history += len(rows)
        if not dry_run:
            dst._store.import_finished(queue, [*rows, checkpoint(after)])
        if progress is not None:
            progress(report)
    if not dry_run and (found is None or found[1] < bound):
        # Done up to the bound: a re-run skips the ids past the last finished task too (tasks
        # the unfinished pass will cancel on SRC).
        dst._store.import_finished(queue, [checkpoint(bound)])


def _checkpoint(dst: Queue, token: str) -> tuple[int, bool] | None:
    """(the last SRC id a previous run copied, whether SRC was paused before that run), from
    DST's checkpoints; None if there are none."""
    prefix, found = f"{MARKER}:{token}:", None
    for t in dst.iter_tasks(name=MARKER):
        if t.unique_key and t.unique_key.startswith(prefix):
            paused, last = t.unique_key[len(prefix) :].split(":")
            if found is None or int(last) > found[0]:
                found = (int(last), paused == "1")
    return found


def _new_task(row: dict[str, Any]) -> NewTask:
    """SRC's row as DST inserts it: a running task becomes pending (its worker is on SRC);
    the runs it has left are kept (max_attempts less the attempts made, at least one: the
    interrupted run recorded nothing)."""
    left = max(1, int(row["max_attempts"]) - int(row["attempts"]))
    return NewTask(
        row["name"], row["resource_group"], row["payload"], row["priority"], row["run_at"], left, row["unique_key"]
    )


def _refuse_live_workers(src: Queue, force: bool) -> None:
    alive = [w.id for w in src.workers() if w.alive]
    if alive and not force:
        raise InvalidTransition(
            f"workers are alive on queue {src.name!r} of {src.path}: {', '.join(alive[:5])}; "
            "stop them first (or pass --force: their running tasks then run on both stores)"
        )


def _copy_groups(src: Queue, dst: Queue, report: QueueReport, dry_run: bool) -> None:
    for name in src._store.group_names(src.name):
        info = src._store.group_info(src.name, name)
        if info.get("paused"):
            report.groups.append(name)
            if not dry_run:
                dst._store.set_group_paused(dst.name, name, True)


def migrate_queue(
    src_path: str,
    dst_path: str,
    queue: str,
    *,
    batch: int = 1000,
    dry_run: bool = False,
    force: bool = False,
    history: bool = False,
    progress: Callable[[QueueReport], None] | None = None,
) -> QueueReport:
    """Moves one queue's unfinished tasks from ``src_path`` to ``dst_path``, after copying its
    finished ones with ``history`` (see the module)."""
    report = QueueReport(queue)
    with Queue(src_path, name=queue) as src, Queue(dst_path, name=queue) as dst:
        _refuse_live_workers(src, force)
        token = _location_token(src, queue)
        # SRC's own pause goes to DST at the end; a re-run finds it in the checkpoints (SRC is
        # paused by the first run by then).
        after, was_paused = _checkpoint(dst, token) or (0, src.paused)
        if not dry_run:
            src.pause()  # no worker started later on SRC claims a task being moved
        if history:
            _copy_history(src, dst, report, batch, dry_run, progress)
        report.already = after
        while True:
            page = src._store.list_tasks(queue, _UNFINISHED, None, None, after, False, batch)
            if not page:
                break
            page_end = int(page[-1]["id"])
            rows = [r for r in page if r["name"] != MARKER]  # a back-migration's own trail stays
            if rows and not dry_run:
                marker = NewTask(
                    MARKER,
                    "default",
                    _marker_payload(src),
                    0,
                    _NEVER_MS,
                    1,
                    f"{MARKER}:{token}:{int(was_paused)}:{page_end}",
                )
                created = dst._store.enqueue(queue, [*map(_new_task, rows), marker])[:-1]
                report.deduped += sum(1 for _, c in created if not c)
                report.copied += sum(1 for _, c in created if c)
            elif dry_run:
                report.copied += len(rows)
            after = page_end
            if progress is not None:
                progress(report)
        _copy_groups(src, dst, report, dry_run)
        report.paused = was_paused
        if not dry_run:
            if was_paused:
                dst.pause()
            report.cancelled_on_src = _cancel_copied(src, after, batch)
            _close_checkpoints(dst, token)
    return report


def _marker_payload(q: Queue) -> bytes:
    return q.serializer.dumps({"args": [], "kwargs": {}})


def _cancel_copied(src: Queue, up_to: int, batch: int) -> int:
    """Cancels SRC's pending tasks up to id ``up_to`` (copied); running ones cannot be
    cancelled and stay, in the paused SRC queue."""
    done, after = 0, 0
    while True:
        rows = src._store.list_tasks(src.name, ["pending"], None, None, after, False, batch, up_to)
        for r in rows:
            try:
                src._store.cancel(src.name, r["id"])
                done += 1
            except InvalidTransition:
                pass  # claimed meanwhile (--force)
        if len(rows) < batch:
            return done
        after = int(rows[-1]["id"])


def _close_checkpoints(dst: Queue, token: str) -> None:
    """Cancels this migration's checkpoints: finished, they never run, and they stay as the
    trail a re-run resumes from."""
    prefix = f"{MARKER}:{token}:"
    for t in list(dst.iter_tasks(name=MARKER, status="pending")):
        if t.unique_key and t.unique_key.startswith(prefix):
            dst.cancel(t.id)


def migrate(
    src_path: str,
    dst_path: str,
    *,
    batch: int = 1000,
    dry_run: bool = False,
    force: bool = False,
    history: bool = False,
    progress: Callable[[QueueReport], None] | None = None,
    queues: list[str] | None = None,
) -> list[QueueReport]:
    """Moves the unfinished tasks of every queue of ``src_path`` (or of ``queues``) to
    ``dst_path``; with ``history``, copies their finished tasks first."""
    if not 1 <= batch <= 100_000:
        raise InvalidArgument(f"batch must be between 1 and 100000, got {batch}")
    if _same(src_path, dst_path):
        raise InvalidArgument("SRC and DST are the same store")
    if queues is None:
        with Queue(src_path) as probe:
            queues = probe.queue_names()
    names = queues
    for name in names:  # every queue checked before any is moved
        with Queue(src_path, name=name) as q:
            _refuse_live_workers(q, force)
    return [
        migrate_queue(
            src_path, dst_path, n, batch=batch, dry_run=dry_run, force=force, history=history, progress=progress
        )
        for n in names
    ]


def _same(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        return a == b
    return os.path.abspath(a) == os.path.abspath(b)
