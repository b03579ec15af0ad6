"""Soak under faults: producers and several worker processes on one queue file while a
supervisor SIGKILLs and SIGSTOPs random workers (resuming stopped ones after a while,
sometimes well past their lease, and restarting killed ones); then checks, against a log of
every execution kept outside the queue, that nothing was lost, completed twice, or charged
an attempt it never ran.

    .venv/bin/python benches/soak_faults.py --seconds 60          # a minute of faults
    .venv/bin/python benches/soak_faults.py --quick -o json       # tests/test_soak_faults.py

Every task carries an id (``p<producer>-<n>``); each producer appends one line per enqueue
that returned (``acked``). Every processor appends one line when it starts (its first line)
and one just before it returns or raises (``runs.log``, O_APPEND: one whole line per write,
from any process), with the task id, the attempt, the worker and the pid. Workers run with a
short lease (1 s, a rescue pass every 0.2 s) so rescues happen during the run.

At the end (producers stopped, stopped workers resumed, killed ones restarted, every worker
draining with ``run(until_empty=True)``, then a wait of more than lease + rescue interval)
it reports: acked, completed, dead, lost (acked but neither completed nor dead), duplicate
runs (a task run again other than as the retry of a run that raised) and whether each
overlaps a fault of one of the two workers, late outcomes the store rejected (``LeaseLost``:
the worker logs "outcome discarded"), double completions (more than one "completed" in a
task's history), runs charged without a start (``attempts`` above the logged starts, or a
dead task with fewer starts than ``max_attempts``), and what is left running. It exits 1 if
anything was lost, completed twice, charged without a start or left running.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ferroq

LEASE = 1.0
RESCUE_INTERVAL = 0.2
# Processes started by this script find their directory and name here (a process pool's
# children inherit both, and re-import this file to find ``_work``).
DIR = Path(os.environ.get("FERROQ_SOAK_DIR", "."))
LABEL = os.environ.get("FERROQ_SOAK_WORKER", "-")

#: kind -> (weight in the mix, max_attempts)
KINDS = {
    "fast": (40, 3),  # a no-op
    "sleep": (30, 3),  # 50-200 ms
    "flaky": (15, 3),  # raises on its first attempt, then succeeds
    "once": (7, 1),  # a sleep with a single attempt: dead if its run dies
    "poison": (5, 3),  # always raises: dead after three runs
    "once_raise": (3, 1),  # raises, single attempt: dead after one run
}
_log_fd: int | None = None


def _note(what: str, ctx: ferroq.TaskContext, outcome: str, uid: str) -> None:
    global _log_fd
    if _log_fd is None:
        _log_fd = os.open(DIR / "runs.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    line = f"{what} {ctx.id} {ctx.attempt} {outcome} {LABEL} {os.getpid()} {time.monotonic():.6f} {uid}\n"
    os.write(_log_fd, line.encode())


def _work(uid: str, kind: str, ms: int) -> None:
    ctx = ferroq.current_task()
    _note("start", ctx, "-", uid)
    outcome = "ok"
    try:
        if ms:
            time.sleep(ms / 1000)
        if kind in ("poison", "once_raise") or (kind == "flaky" and ctx.attempt == 1):
            outcome = "raise"
            raise ValueError(f"{kind} task {uid} fails attempt {ctx.attempt}")
    finally:
        _note("end", ctx, outcome, uid)


def open_queue(directory: Path) -> tuple[ferroq.Queue, dict[str, ferroq.Task[..., None]]]:
    q = ferroq.Queue(directory / "soak.db", durability="normal")
    retry = ferroq.RetryPolicy(base_delay=0.05, max_delay=0.2)
    tasks = {
        kind: q.task(name=kind, max_attempts=attempts, retry=retry)(_work) for kind, (_, attempts) in KINDS.items()
    }
    return q, tasks


# -- the producer and worker processes ---------------------------------------------------


def producer(index: int, rate: float, seed: int) -> None:
    q, tasks = open_queue(DIR)
    rng = random.Random(seed * 1000 + index)
    kinds = list(KINDS)
    weights = [KINDS[k][0] for k in kinds]
    acked = os.open(DIR / f"acked-{index}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    stop = DIR / "producers.stop"
    n = errors = 0
    t0 = time.monotonic()
    while not stop.exists():
        # Mostly one at a time; now and then a burst, more than the workers can start at
        # once, so they hold claimed tasks in their buffers (given back whole if they die).
        size = rng.randint(20, 80) if rng.random() < 0.5 / rate else 1
        calls: list[tuple[str, str, int]] = []
        for _ in range(size):
            kind = rng.choices(kinds, weights)[0]
            uid = f"p{index}-{n + len(calls)}"
            calls.append((uid, kind, rng.randint(50, 200) if kind in ("sleep", "once") else 0))
        try:
            ids = (
                q.enqueue_many([tasks[kind].call(*c) for c in calls for kind in [c[1]]])
                if size > 1
                else [tasks[calls[0][1]].enqueue(*calls[0]).id]
            )
        except ferroq.FerroqError as e:  # counted, never acked
            errors += size
            print(f"enqueue of {size} failed: {e}", file=sys.stderr, flush=True)
        else:
            os.write(acked, "".join(f"{i} {uid} {kind}\n" for i, (uid, kind, _) in zip(ids, calls)).encode())
        n += size
        time.sleep(max(0.0, t0 + n / rate - time.monotonic()))
    print(json.dumps({"enqueued": n, "errors": errors}), flush=True)


def worker(pool: str, concurrency: int) -> None:
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(created).6f %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    q, _ = open_queue(DIR)
    w = ferroq.Worker(
        q,
        concurrency=concurrency,
        lease=LEASE,
        rescue_interval=RESCUE_INTERVAL,
        poll_interval=0.1,
        pool=pool,
        shutdown_grace=30.0,
    )
    drain = DIR / "workers.drain"
    serving = threading.Event()

    def stop_on_drain() -> None:  # stop() until the first run returns (it may not have begun)
        while not drain.exists():
            time.sleep(0.05)
        while serving.is_set():
            w.stop()
            time.sleep(0.05)

    stats: dict[str, int] = Counter()
    if not drain.exists():
        serving.set()
        threading.Thread(target=stop_on_drain, daemon=True).start()
        stats.update(w.run().__dict__)
        serving.clear()
    stats.update(w.run(until_empty=True).__dict__)
    print(json.dumps(stats), flush=True)


# -- the supervisor ----------------------------------------------------------------------


@dataclass
class Proc:
    label: str
    popen: subprocess.Popen[bytes]
    stopped_at: float | None = None
    resume_at: float | None = None


@dataclass
class Fault:
    kind: str  # "kill" or "stop"
    label: str
    pid: int
    at: float
    until: float  # a kill: the same instant; a stop: when it was resumed (or killed)


@dataclass
class Supervisor:
    directory: Path
    args: argparse.Namespace
    rng: random.Random
    workers: dict[int, Proc] = field(default_factory=dict)
    producers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    open_stops: dict[str, Fault] = field(default_factory=dict)
    restarts_due: dict[int, float] = field(default_factory=dict)
    generation: Counter[int] = field(default_factory=Counter)
    unexpected_exits: list[str] = field(default_factory=list)
    running: dict[tuple[str, str, str], str] = field(default_factory=dict)  # run -> worker label
    log_offset: int = 0

    def _spawn(self, label: str, role_args: list[str], stem: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ, FERROQ_SOAK_DIR=str(self.directory), FERROQ_SOAK_WORKER=label, PYTHONUNBUFFERED="1")
        with open(self.directory / f"{stem}.out", "wb") as out, open(self.directory / f"{stem}.err", "wb") as err:
            # Each in a session of its own: when the shell that started this script exits, the
            # kernel sends SIGHUP to a process group left with a stopped member (seen: a
            # worker SIGSTOPped here died of it), and a Ctrl-C here must reach the
            # supervisor only (it stops everyone).
            return subprocess.Popen(
                [sys.executable, __file__, *role_args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )

    def start_worker(self, slot: int) -> None:
        self.generation[slot] += 1
        label = f"w{slot}.{self.generation[slot]}"
        popen = self._spawn(
            label,
            ["--role", "worker", "--pool", self.args.pool, "--concurrency", str(self.args.concurrency)],
            f"worker-{label}",
        )
        self.workers[slot] = Proc(label, popen)
        self._log(f"start {label} {popen.pid}")

    def start_producers(self) -> None:
        for i in range(self.args.producers):
            self.producers.append(
                self._spawn(
                    f"p{i}",
                    [
                        "--role",
                        "producer",
                        "--index",
                        str(i),
                        "--rate",
                        str(self.args.rate),
                        "--seed",
                        str(self.args.seed),
                    ],
                    f"producer-{i}",
                )
            )

    def _log(self, line: str) -> None:
        with open(self.directory / "faults.log", "a") as f:
            f.write(f"{time.monotonic():.6f} {line}\n")

    def _healthy(self) -> list[int]:
        return [s for s, p in self.workers.items() if p.popen.poll() is None and p.stopped_at is None]

    def kill(self, slot: int) -> None:
        p = self.workers[slot]
        now = time.monotonic()
        os.kill(p.popen.pid, signal.SIGKILL)
        p.popen.wait()
        p.stopped_at = p.resume_at = None  # (its pid may be reused: never signal it again)
        stop = self.open_stops.pop(p.label, None)
        if stop is not None:
            stop.until = now
        self.faults.append(Fault("kill", p.label, p.popen.pid, now, now))
        self._log(f"kill {p.label} {p.popen.pid}")
        self.restarts_due[slot] = now + self.rng.uniform(0.1, 1.0)

    def stop(self, slot: int) -> None:
        p = self.workers[slot]
        now = time.monotonic()
        os.kill(p.popen.pid, signal.SIGSTOP)
        # From a fraction of the lease (nothing rescued) to well past lease + lease/2 (its
        # tasks rescued, its late outcomes rejected when it resumes).
        p.stopped_at, p.resume_at = now, now + LEASE * self.rng.uniform(0.2, 3.5)
        fault = Fault("stop", p.label, p.popen.pid, now, now)
        self.faults.append(fault)
        self.open_stops[p.label] = fault
        self._log(f"stop {p.label} {p.popen.pid}")

    def resume(self, slot: int) -> None:
        p = self.workers[slot]
        os.kill(p.popen.pid, signal.SIGCONT)
        p.stopped_at = p.resume_at = None
        stop = self.open_stops.pop(p.label, None)
        if stop is not None:
            stop.until = time.monotonic()
        self._log(f"cont {p.label} {p.popen.pid}")

    def tick(self, now: float, faulting: bool) -> None:
        """Resumes and restarts what is due, notices workers that exited on their own."""
        for slot, p in list(self.workers.items()):
            if p.resume_at is not None and (now >= p.resume_at or not faulting):
                self.resume(slot)
            if p.popen.poll() is not None and slot not in self.restarts_due:
                rc = p.popen.returncode
                self._log(f"exited {p.label} {p.popen.pid} {rc}")
                if rc != 0 or faulting:
                    self.unexpected_exits.append(f"{p.label} exited with {rc}")
                    self.restarts_due[slot] = now
        for slot, due in list(self.restarts_due.items()):
            if now >= due or not faulting:
                del self.restarts_due[slot]
                self.start_worker(slot)

    def busy(self) -> set[str]:
        """Workers with a run in progress now (read from the new lines of the run log)."""
        path = self.directory / "runs.log"
        if path.exists():
            with open(path, "rb") as f:
                f.seek(self.log_offset)
                chunk = f.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]
            self.log_offset += len(complete)
            for line in complete.decode().splitlines():
                what, task, attempt, _outcome, label, pid, *_ = line.split()
                key = (task, attempt, pid)
                if what == "start":
                    self.running[key] = label
                else:
                    self.running.pop(key, None)
        return set(self.running.values())

    def fault(self) -> None:
        healthy = self._healthy()
        stopped = [s for s, p in self.workers.items() if p.stopped_at is not None and p.popen.poll() is None]
        if stopped and self.rng.random() < 0.1:  # a stopped worker killed: it never resumes
            self.kill(self.rng.choice(stopped))
        elif len(healthy) > 1:  # one worker always keeps going
            # Mostly one in the middle of a run, so most faults interrupt something.
            busy = self.busy()
            candidates = [s for s in healthy if self.workers[s].label in busy]
            if not candidates or self.rng.random() < 0.25:
                candidates = healthy
            slot = self.rng.choice(candidates)
            (self.kill if self.rng.random() < 0.5 else self.stop)(slot)

    def run_faults(self, seconds: float, progress: bool) -> None:
        t0 = time.monotonic()
        next_fault = t0 + 1.0
        next_progress = t0 + 10
        while (now := time.monotonic()) < t0 + seconds:
            self.tick(now, faulting=True)
            if now >= next_fault:
                self.fault()
                next_fault = now + self.rng.uniform(0.3, 1.2)
            if progress and now >= next_progress:
                kills = sum(f.kind == "kill" for f in self.faults)
                print(f"{now - t0:6.0f}s  {kills} kills, {len(self.faults) - kills} stops", file=sys.stderr, flush=True)
                next_progress += 10
            time.sleep(0.02)

    def finish(self, timeout: float) -> list[str]:
        """Producers stop, every worker resumes or restarts and drains; returns the workers
        still running after ``timeout``."""
        (self.directory / "producers.stop").touch()
        for producer in self.producers:
            try:
                producer.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.unexpected_exits.append(f"producer {producer.pid} did not stop")
        self.tick(time.monotonic(), faulting=False)
        (self.directory / "workers.drain").touch()
        deadline = time.monotonic() + timeout
        stuck = []
        for p in self.workers.values():
            try:
                p.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                stuck.append(p.label)
                continue
            if p.popen.returncode != 0:
                self.unexpected_exits.append(f"{p.label} exited with {p.popen.returncode} while draining")
        return stuck

    def cleanup(self) -> None:
        for p in [*(w.popen for w in self.workers.values()), *self.producers]:
            if p.poll() is None:
                for sig in (signal.SIGCONT, signal.SIGKILL):
                    try:
                        os.kill(p.pid, sig)
                    except ProcessLookupError:
                        pass
                p.wait()


# -- the report --------------------------------------------------------------------------


@dataclass
class Run:
    task: int
    attempt: int
    label: str
    pid: int
    start: float
    outcome: str | None = None  # "ok", "raise", or None: never returned


def read_runs(directory: Path) -> dict[int, list[Run]]:
    runs: dict[int, list[Run]] = defaultdict(list)
    open_runs: dict[tuple[int, int, int], Run] = {}  # (task, attempt, pid): the run in progress
    path = directory / "runs.log"
    lines = path.read_text().splitlines() if path.exists() else []
    for line in lines:
        parts = line.split()
        if len(parts) != 8:
            continue  # (cannot happen with O_APPEND single writes; never trust it blindly)
        what, task, attempt, outcome, label, pid, at, _uid = parts
        key = (int(task), int(attempt), int(pid))
        if what == "start":
            run = Run(int(task), int(attempt), label, int(pid), float(at))
            runs[run.task].append(run)
            open_runs[key] = run
        elif key in open_runs:
            open_runs.pop(key).outcome = outcome
    for task_runs in runs.values():
        task_runs.sort(key=lambda r: r.start)
    return runs


def read_acked(directory: Path) -> dict[int, str]:
    acked = {}
    for path in sorted(directory.glob("acked-*.log")):
        for line in path.read_text().splitlines():
            task_id, uid, _kind = line.split()
            acked[int(task_id)] = uid
    return acked


_DISCARDED = re.compile(r"task (\d+) \(.*\) finished after its lease was lost; outcome discarded")


def read_discarded(directory: Path) -> Counter[int]:
    found: Counter[int] = Counter()
    for path in directory.glob("worker-*.err"):
        for m in _DISCARDED.finditer(path.read_text(errors="replace")):
            found[int(m.group(1))] += 1
    return found


def _overlaps(faults: list[Fault], labels: set[str], start: float, end: float) -> bool:
    return any(f.label in labels and f.at <= end and f.until >= start for f in faults)


def duplicates(runs: dict[int, list[Run]], faults: list[Fault]) -> tuple[int, int, list[dict[str, Any]]]:
    """Runs that repeat a task other than as the retry of a run that raised. One overlaps a
    fault when a worker of it or of the run before was killed or stopped between shortly
    before the earlier run (its claim: a buffered task was claimed up to a lease or two
    earlier) and the start of the repeat."""
    overlapping, unexplained = 0, []
    by_label: dict[str, list[Fault]] = defaultdict(list)
    for f in faults:
        by_label[f.label].append(f)
    for task, task_runs in runs.items():
        for before, again in zip(task_runs, task_runs[1:]):
            if before.outcome == "raise":
                continue  # the retry it asked for
            labels = {before.label, again.label}
            related = [f for label in labels for f in by_label.get(label, ())]
            if _overlaps(related, labels, before.start - 2 * LEASE, again.start):
                overlapping += 1
            else:
                unexplained.append({"task": task, "runs": [r.__dict__ for r in task_runs]})
    return overlapping, len(unexplained), unexplained


def report(q: ferroq.Queue, directory: Path, sup: Supervisor, stuck: list[str]) -> dict[str, Any]:
    acked = read_acked(directory)
    runs = read_runs(directory)
    discarded = read_discarded(directory)
    infos = {info.id: info for info in q.iter_tasks(page_size=1000)}
    status = Counter(infos[i].status if i in infos else "missing" for i in acked)
    rescues: Counter[str] = Counter()
    double_completions, charged_without_start, dead_without_start = [], [], []
    # A run noted started whose processor was killed before its first line wrote "start" (the
    # kill landed in the microseconds between): charged rightly, its start line lost. At most
    # one per runner thread of each killed worker; more would be a real charge without a start.
    killed_pids = {f.pid for f in sup.faults if f.kind == "kill"}
    at_kill: Counter[int] = Counter()
    started_at_kill: list[int] = []
    for task_id in acked:
        info = infos.get(task_id)
        if info is None:
            continue
        history = q.history(task_id)
        if sum(t.to_status == "completed" for t in history) > 1:
            double_completions.append(task_id)
        for t in history:
            if t.error is not None and t.error.type == "LeaseExpired":
                rescues[_rescue_kind(t.error.message)] += 1
        starts = len(runs.get(task_id, ()))
        short = info.attempts > starts or (info.status == "dead" and starts < info.max_attempts)
        if short and _lost_to_a_kill(info.attempts - starts, history, killed_pids, at_kill):
            started_at_kill.append(task_id)
            continue
        if info.attempts > starts:
            charged_without_start.append(
                {
                    "task": task_id,
                    "attempts": info.attempts,
                    "starts": starts,
                    "status": info.status,
                    "history": [_transition(t) for t in history],
                }
            )
        if info.status == "dead" and starts < info.max_attempts:
            dead_without_start.append({"task": task_id, "max_attempts": info.max_attempts, "starts": starts})
    overlapping, unexplained, unexplained_detail = duplicates(runs, sup.faults)
    dup_tasks = sum(1 for r in runs.values() if any(b.outcome != "raise" for b in r[:-1]))
    lost = [i for i in acked if status_of(infos, i) not in ("completed", "dead")]
    kills = [f for f in sup.faults if f.kind == "kill"]
    stops = [f for f in sup.faults if f.kind == "stop"]
    return {
        "seconds": sup.args.seconds,
        "workers": sup.args.workers,
        "producers": sup.args.producers,
        "pool": sup.args.pool,
        "seed": sup.args.seed,
        "lease": LEASE,
        "rescue_interval": RESCUE_INTERVAL,
        "dir": str(directory),
        "faults": {
            "kills": len(kills),
            "stops": len(stops),
            "stops_past_rescue": sum(f.until - f.at > 1.5 * LEASE for f in stops),
            "restarts": sum(sup.generation.values()) - sup.args.workers,
        },
        "acked": len(acked),
        "completed": status["completed"],
        "dead": status["dead"],
        "lost": len(lost),
        "lost_tasks": [_describe(infos, runs, i) for i in lost[:20]],
        "left_running": status["running"],
        "left_pending": status["pending"],
        "missing": status["missing"],
        "runs": sum(len(r) for r in runs.values()),
        "rescues": {"total": sum(rescues.values()), **rescues},
        "duplicate_runs": {
            "tasks": dup_tasks,
            "overlapping_fault": overlapping,
            "unexplained": unexplained,
            "unexplained_detail": unexplained_detail[:10],
        },
        "late_outcomes_discarded": sum(discarded.values()),
        "double_completions": len(double_completions),
        "double_completion_tasks": double_completions[:20],
        "charged_without_start": len(charged_without_start)
        + len(dead_without_start)
        + sum(max(0, n - sup.args.concurrency) for n in at_kill.values()),
        "started_at_a_kill": len(started_at_kill),
        "charged_without_start_tasks": charged_without_start[:10],
        "dead_without_start_tasks": dead_without_start[:10],
        "workers_not_drained": stuck,
        "unexpected_exits": sup.unexpected_exits,
    }


def _lost_to_a_kill(missing: int, history: list[Any], killed_pids: set[int], at_kill: Counter[int]) -> bool:
    """Whether ``missing`` start lines are explained by SIGKILLs that ended those runs: as many
    rescues "worker died during run" of workers the supervisor killed (ids ``host:pid:hex``)."""
    died = [t for t in history if t.error is not None and t.error.message.startswith("worker died during run")]
    pids = [_pid_of(t.worker) for t in died]
    if missing > len(died) or not all(p in killed_pids for p in pids):
        return False
    for pid in pids[-missing:] if missing > 0 else pids[-1:]:
        at_kill[pid] += 1
    return True


def _pid_of(worker: str | None) -> int:
    parts = (worker or "").split(":")
    return int(parts[1]) if len(parts) >= 3 and parts[1].isdigit() else -1


def status_of(infos: dict[int, ferroq.TaskInfo], task_id: int) -> str:
    info = infos.get(task_id)
    return "missing" if info is None else info.status


def _describe(infos: dict[int, ferroq.TaskInfo], runs: dict[int, list[Run]], task_id: int) -> dict[str, Any]:
    info = infos.get(task_id)
    return {
        "task": task_id,
        "status": status_of(infos, task_id),
        "attempts": info and info.attempts,
        "lease_owner": info and info.lease_owner,
        "runs": [r.__dict__ for r in runs.get(task_id, ())],
    }


def _transition(t: ferroq.Transition) -> list[Any]:
    return [t.from_status, t.to_status, t.worker, t.error.message[:60] if t.error else None]


def _rescue_kind(message: str) -> str:
    for prefix, kind in (
        ("lease expired before start", "before_start"),
        ("worker died during run", "during_run"),
        ("lease expired after the run", "after_run"),
    ):
        if message.startswith(prefix):
            return kind
    return "no_journal"


def failed(r: dict[str, Any]) -> list[str]:
    problems = [
        f"{key} {r[key]}" for key in ("lost", "double_completions", "charged_without_start", "left_running") if r[key]
    ]
    if r["workers_not_drained"]:
        problems.append(f"workers not drained: {r['workers_not_drained']}")
    return problems


def print_text(r: dict[str, Any]) -> None:
    f, d = r["faults"], r["duplicate_runs"]
    print(
        f"{r['seconds']:.0f} s, {r['workers']} workers (pool={r['pool']}), {r['producers']} producers, seed "
        f"{r['seed']}: {f['kills']} SIGKILLs, {f['stops']} SIGSTOPs ({f['stops_past_rescue']} past lease + "
        f"lease/2), {f['restarts']} restarts"
    )
    print(
        f"acked {r['acked']:,}: completed {r['completed']:,}, dead {r['dead']:,}, lost {r['lost']}, "
        f"left running {r['left_running']}"
    )
    rescues = r["rescues"]
    print(
        f"runs {r['runs']:,}; rescues {rescues['total']} ("
        + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in rescues.items() if k != "total")
        + ")"
    )
    print(
        f"duplicate runs: {d['tasks']} tasks, {d['overlapping_fault']} overlap a fault, {d['unexplained']} do "
        f"not; late outcomes discarded {r['late_outcomes_discarded']}"
    )
    print(
        f"double completions {r['double_completions']}, charged without start {r['charged_without_start']} "
        f"(runs killed before their first line: {r['started_at_a_kill']})"
    )
    if r["unexpected_exits"]:
        print(f"unexpected exits: {r['unexpected_exits']}")
    problems = failed(r)
    print("FAILED: " + "; ".join(problems) if problems else "OK", f"(files in {r['dir']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long faults go on")
    parser.add_argument("--quick", action="store_true", help="about 20 s in all (faults for 12 s)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4, help="per worker")
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=40.0, help="tasks enqueued per second per producer")
    parser.add_argument("--pool", choices=("thread", "process"), default="thread")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--dir", default=None, help="where files go (default: a new temp dir)")
    parser.add_argument("-o", "--output", choices=("text", "json"), default="text")
    parser.add_argument("--drain-timeout", type=float, default=180.0, help=argparse.SUPPRESS)
    parser.add_argument("--role", choices=("producer", "worker"), help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "producer":
        return producer(args.index, args.rate, args.seed)
    if args.role == "worker":
        return worker(args.pool, args.concurrency)
    if args.quick:
        args.seconds = 12.0
    if args.workers < 2:
        parser.error("--workers must be at least 2 (one always keeps going)")
    if args.seed is None:
        args.seed = random.randrange(1_000_000)
    directory = Path(args.dir or tempfile.mkdtemp(prefix="ferroq-soak-faults-"))
    directory.mkdir(parents=True, exist_ok=True)
    q, _ = open_queue(directory)  # the schema, before anyone else opens the file
    sup = Supervisor(directory, args, random.Random(args.seed))
    try:
        for slot in range(args.workers):
            sup.start_worker(slot)
        sup.start_producers()
        sup.run_faults(args.seconds, progress=args.output == "text")
        stuck = sup.finish(args.drain_timeout)
        # Anything a stopped-then-resumed worker still held: past its lease and a rescue pass.
        time.sleep(1.5 * LEASE + RESCUE_INTERVAL + 0.5)
        r = report(q, directory, sup, stuck)
    finally:
        sup.cleanup()
    if args.output == "json":
        print(json.dumps(r))
    else:
        print_text(r)
    raise SystemExit(1 if failed(r) else 0)


if __name__ == "__main__":
    main()
