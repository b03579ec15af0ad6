"""Claimed tasks a worker has no processor for.

In a rolling deploy new code enqueues a task while workers running the old code are still
claiming: killing it there would lose work a new worker can do a minute later. So a worker
gives such a task back (``Store.defer``): pending again, its attempt returned, claimable
after a delay that doubles with each deferral in a row (1 s, 2 s, 4 s ... at most 5 min,
counted in the task's history, so across workers), and dead with ``UnknownTaskName`` only
once ``unknown_task_grace`` seconds have passed since its first deferral in a row.
"""

from __future__ import annotations

import logging

from .. import _core
from ..errors import UnknownTaskName
from ..info import TaskError

log = logging.getLogger("ferroq.worker")


class UnknownTasks:
    """One worker's deferrals: the grace, and the names it has warned about (once each)."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._warned: set[str] = set()

    def give_back(self, store: _core.Store, worker: str, claims: list[tuple[int, int, str]]) -> tuple[int, int]:
        """Gives back ``(id, token, name)`` claims; returns (deferred, dead). A lease lost
        meanwhile needs nothing: whoever holds the task now decides."""
        tasks = [(task_id, token, self._error(worker, name)) for task_id, token, name in claims]
        answers = store.defer(tasks, int(self.grace * 1000))
        deferred = dead = 0
        for (task_id, _token, name), answer in zip(claims, answers):
            if answer is None:
                continue
            status, deferrals, _run_at = answer
            if status == "dead":
                dead += 1
                log.warning(
                    "task %d (%s) is dead: no worker ran it within unknown_task_grace=%gs of its "
                    "first deferral (%d deferrals) and worker %s has no processor for it",
                    task_id,
                    name,
                    self.grace,
                    deferrals,
                    worker,
                )
            else:
                deferred += 1
                self._warn(worker, name)
        return deferred, dead

    def _warn(self, worker: str, name: str) -> None:
        if name in self._warned:
            return
        self._warned.add(name)
        log.warning(
            "worker %s has no processor for task %r (older code, or a name no processor has): "
            "giving such tasks back without using an attempt, to be claimed again later (by a worker "
            "that has it); each goes dead %gs after its first deferral (unknown_task_grace)",
            worker,
            name,
            self.grace,
        )

    def _error(self, worker: str, name: str) -> str:
        exc = UnknownTaskName(
            f"no processor is registered for task {name!r} in worker {worker}, nor in any "
            f"worker that claimed it within unknown_task_grace={self.grace:g}s"
        )
        return TaskError.from_exception(exc, None).to_json()
