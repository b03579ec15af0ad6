"""Reading the profile that profiling workers (``Worker(profile=True)``, ``ferroq worker
--profile``) add to the metrics table: ``Queue.profile()`` and ``ferroq profile``."""

from __future__ import annotations

from dataclasses import dataclass

from .observe import Percentiles

__all__ = ["Profile", "StageProfile", "TaskProfile"]

STAGE = "profile:stage:"
TASK = "profile:task:"
#: In the order a task goes through them.
STAGES = ("claim", "decode", "wait", "run", "encode", "record", "commit")
STAGE_HELP = {
    "claim": "the claim's transaction, shared by the tasks it took",
    "decode": "the payload through the serializer",
    "wait": "claimed, waiting for a free runner thread",
    "run": "the processor",
    "encode": "the result through the serializer",
    "record": "the completer's own work around the commit",
    "commit": "the outcomes' transaction, shared by the tasks in it",
}


@dataclass(frozen=True)
class StageProfile:
    """One stage: ``total`` seconds over ``tasks`` tasks (``time`` per task percentiles)."""

    stage: str
    tasks: int
    total: float
    time: Percentiles


@dataclass(frozen=True)
class TaskProfile:
    """One task name's runs: wall and CPU time (seconds), and peak memory above the start
    of the run (bytes, Python allocations as tracemalloc sees them)."""

    name: str
    runs: int
    wall: Percentiles
    cpu: Percentiles
    memory_peak_p95: int
    memory_peak_max: int


@dataclass(frozen=True)
class Profile:
    window: float
    stages: list[StageProfile]
    tasks: list[TaskProfile]

    @property
    def empty(self) -> bool:
        return not self.stages and not self.tasks

    def table(self) -> str:
        """The profile as a plain-text table."""
        total = sum(s.total for s in self.stages) or 1.0
        lines = [f"{'stage':8} {'tasks':>9} {'total s':>10} {'share':>7} {'mean':>10} {'p95':>10}  what"]
        for s in self.stages:
            lines.append(
                f"{s.stage:8} {s.tasks:9,d} {s.total:10.3f} {s.total / total:7.1%} "
                f"{_t(s.time.mean):>10} {_t(s.time.p95):>10}  {STAGE_HELP.get(s.stage, '')}"
            )
        if self.tasks:
            lines.append("")
            lines.append(
                f"{'task':32} {'runs':>9} {'wall mean':>10} {'wall p95':>10} {'cpu mean':>10} "
                f"{'cpu/wall':>8} {'mem p95':>9} {'mem max':>9}"
            )
            for t in self.tasks:
                ratio = t.cpu.mean / t.wall.mean if t.wall.mean else 0.0
                lines.append(
                    f"{t.name[:32]:32} {t.runs:9,d} {_t(t.wall.mean):>10} {_t(t.wall.p95):>10} "
                    f"{_t(t.cpu.mean):>10} {ratio:8.0%} {_b(t.memory_peak_p95):>9} "
                    f"{_b(t.memory_peak_max):>9}"
                )
        return "\n".join(lines)


def _t(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f}s"
    if seconds >= 0.001:
        return f"{seconds * 1e3:.2f}ms"
    return f"{seconds * 1e6:.1f}µs"


def _b(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n}{unit}" if unit == "B" else f"{n:.0f}{unit}"
        n //= 1024
    return f"{n}GiB"


Summary = tuple[int, int, int, int, int, int]


def build(window: float, rows: list[tuple[str, str, Summary]]) -> Profile:
    """A Profile from ``Store.named_metrics(queue, "profile:", ...)`` rows (all groups)."""
    stages: dict[str, Summary] = {}
    tasks: dict[str, dict[str, Summary]] = {}
    for _group, name, summary in rows:
        if name.startswith(STAGE):
            stages[name[len(STAGE) :]] = summary
        elif name.startswith(TASK):
            task, _, figure = name[len(TASK) :].rpartition(":")
            tasks.setdefault(task, {})[figure] = summary
    order = {s: i for i, s in enumerate(STAGES)}
    stage_list = [
        StageProfile(stage, s[0], s[1] / 1e6, Percentiles.from_core(s))
        for stage, s in sorted(stages.items(), key=lambda kv: order.get(kv[0], len(order)))
    ]
    task_list = []
    for task, figures in sorted(tasks.items()):
        wall = figures.get("wall")
        if wall is None:
            continue
        cpu, mem = figures.get("cpu", (0,) * 6), figures.get("mem", (0,) * 6)
        task_list.append(
            TaskProfile(task, wall[0], Percentiles.from_core(wall), Percentiles.from_core(cpu), mem[4], mem[2])
        )
    task_list.sort(key=lambda t: t.wall.mean * t.runs, reverse=True)
    return Profile(window, stage_list, task_list)
