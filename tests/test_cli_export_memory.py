"""``ferroq export`` streams: exporting 1,000,000 tasks stays under a fixed memory bound,
and uses barely more than exporting 1,000 (measured as peak RSS of a child process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ferroq

from procs import child_env

# Runs the CLI in this child with stdout counted, not stored; prints peak RSS and counts.
EXPORT = """
import io, json, resource, sys
from ferroq.cli import main

class Count(io.RawIOBase):
    lines = size = 0
    def writable(self): return True
    def write(self, b):
        b = bytes(b); Count.lines += b.count(b"\\n"); Count.size += len(b); return len(b)

sys.stdout = io.TextIOWrapper(io.BufferedWriter(Count()), encoding="utf-8")
try:
    main(["--db", sys.argv[1], "export"], prog_name="ferroq")
except SystemExit as e:
    assert not e.code, e.code
sys.stdout.flush()
rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sys.stderr.write(json.dumps({"lines": Count.lines, "bytes": Count.size, "rss_mib": rss_kib / 1024}) + "\\n")
"""

MILLION = 1_000_000
BOUND_MIB = 150  # absolute ceiling for the 1M export (a 1,000-task export peaks near 75 MiB here)
GROWTH_MIB = 20  # what 999,000 more tasks may add, at most


def fill(path: Path, n: int) -> None:
    q = ferroq.Queue(path, durability="normal")

    @q.task(name="job")
    def job(i: int, tag: str = "x") -> None: ...

    for start in range(0, n, 20_000):
        q.enqueue_many([job.call(i, tag="export-test") for i in range(start, min(n, start + 20_000))])
    q.close()


def export(tmp_path: Path, db: Path) -> dict[str, float]:
    script = tmp_path / "export_child.py"
    script.write_text(EXPORT)
    done = subprocess.run(
        [sys.executable, str(script), str(db)], env=child_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stderr.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_export_of_a_million_tasks_stays_under_a_fixed_memory_bound(tmp_path: Path) -> None:
    small, big = tmp_path / "small.db", tmp_path / "big.db"
    fill(small, 1_000)
    fill(big, MILLION)
    few, many = export(tmp_path, small), export(tmp_path, big)
    assert few["lines"] == 1_000 and many["lines"] == MILLION
    print(
        f"\npeak RSS: 1,000 tasks {few['rss_mib']:.1f} MiB, 1,000,000 tasks {many['rss_mib']:.1f} MiB "
        f"({many['bytes'] / 2**20:.0f} MiB of JSON lines)"
    )
    assert many["rss_mib"] < BOUND_MIB, many
    assert many["rss_mib"] - few["rss_mib"] < GROWTH_MIB, (few, many)
