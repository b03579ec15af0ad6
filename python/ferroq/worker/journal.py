"""The run journal: tells a rescuer, should this process die, which claimed tasks it had
started (charged an attempt) and which it had not (given back whole).

Functions over the engine's ``RunJournal`` (None when the worker could not open one: then
every task it holds counts as run once if it dies). The thread runner inlines
``note_start`` and ``note_return``: they run once per task."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Iterable

from .. import _core
from ..errors import StorageError

if TYPE_CHECKING:
    from .runs import Run

log = logging.getLogger("ferroq.worker")


def open_journal(store: _core.Store, worker_id: str, capacity: int) -> _core.RunJournal | None:
    """This worker's journal, with room for ``capacity`` runs at once (running, or outcomes
    waiting to be recorded)."""
    try:
        return store.run_journal(worker_id, capacity)
    except StorageError as e:
        log.warning(
            "no run journal (%s): if this worker dies, each task it holds will count as run once, started or not", e
        )
        return None


def note_start(journal: _core.RunJournal | None, run: Run) -> None:
    """Right before a processor is called."""
    run.started = time.perf_counter()
    if journal is not None:
        run.slot = journal.started(run.ctx.id, run.ctx.token)


def note_handed(journal: _core.RunJournal | None, run: Run) -> None:
    """Right before a run is sent to a child process (``pool="process"``), which notes
    its start itself (a worker killed before its child started the run did not run it)."""
    run.started = time.perf_counter()
    if journal is not None:
        run.slot = journal.handed(run.ctx.id, run.ctx.token)


def note_return(journal: _core.RunJournal | None, run: Run) -> None:
    """Right after a processor returned or raised: its outcome is on its way."""
    if journal is not None and run.slot >= 0:
        journal.returned(run.slot, run.ctx.id)


def forget(journal: _core.RunJournal | None, runs: Iterable[Run]) -> None:
    """Runs recorded or given back leave the journal (each exactly once: a run is either
    recorded or given back, whichever settles it)."""
    if journal is not None:
        journal.forget([run.slot for run in runs])
