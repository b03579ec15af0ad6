"""The worker's side of its breaker view (see ``breaker_view``): a group held here starts
nothing, and its claimed tasks not started yet go back to pending, attempts kept; after
each flush with counted failures the view follows the file's circuits."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..errors import FerroqError
from .runs import Job, runs_of

if TYPE_CHECKING:
    from ..queue import Queue
    from .coordinator import Worker

log = logging.getLogger("ferroq.worker")


def declared_breaker(queue: Queue, group: str) -> tuple[int, float] | None:
    """The breaker settings this process declared for ``group``, until the file says."""
    declared = queue._groups.get(group)
    breaker = None if declared is None else declared.breaker
    return None if breaker is None else (breaker.failure_threshold, breaker.window)


class GroupHolds:
    """Acts on the worker's breaker view (``worker._breakers``, one per ``Worker.run``)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def holds(self, job: Job) -> bool:
        """True (and the job given back, attempts kept) if its group is held here."""
        runs = runs_of(job)
        if not self.worker._breakers.holds(runs[0].ctx.resource_group):
            return False
        self.worker._release(runs)
        return True

    def give_back_tripped(self) -> None:
        """Gives back the claimed, unstarted tasks of the groups just held by failures here."""
        tripped = self.worker._breakers.tripped
        groups = set()
        while True:
            try:
                groups.add(tripped.popleft())
            except IndexError:
                break
        if groups:
            self.give_back(groups, "failures in this worker")

    def learn(self, counted: list[str]) -> None:
        """After writing counted failures (one group name each): the view follows the file's
        circuits; tasks of an open one still buffered here go back."""
        breakers, queue = self.worker._breakers, self.worker.queue
        breakers.flushed(counted)
        opened = set()
        for group in set(counted):
            try:
                state, open_for_ms, settings = queue._engine.circuit_view(queue.name, group)
            except FerroqError as e:
                log.warning("cannot read the circuit of group %s: %s", group, e)
                breakers.unknown(group)
                continue
            if breakers.learned(group, state, open_for_ms, settings):
                opened.add(group)
        if opened:
            self.give_back(opened, "circuit open")

    def give_back(self, groups: set[str], why: str) -> None:
        """Gives back this worker's claimed but not yet started tasks of ``groups`` (buffered,
        or in a runner's share): they stay pending with their attempts."""
        w = self.worker
        with w._lock:
            waiting = [run for run in w._inflight.values() if run.started is None and run.ctx.resource_group in groups]
        # _release settles each run first: one a runner starts meanwhile keeps its outcome.
        # A runner skips a released run when it reaches it (its context is stopped).
        if waiting:
            log.warning(
                "group(s) %s held (%s): giving back %d claimed task(s) not started yet",
                ", ".join(sorted(groups)),
                why,
                len(waiting),
            )
            w._release(waiting)
