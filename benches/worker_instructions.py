"""Instructions per task of the worker's own Python (start, run, record; the store's answers
faked, as in ``store_costs.py``), counted by callgrind: the same count on a busy machine as
on a quiet one, so two builds can be compared when wall-clock figures swing too much.

    .venv/bin/python benches/worker_instructions.py [--no-journal]

Runs the worker's per-task path for 1,000 and for 5,000 tasks (twice each) under
``valgrind --tool=callgrind`` and divides the difference by the tasks added, so the
interpreter's start and imports cancel out. ``--no-journal`` runs without the run journal
(to price its notes). Needs valgrind (Debian: ``valgrind``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

_DRIVER = """
import sys
sys.path.insert(0, {benches!r})
import ferroq.worker
if {no_journal!r}:
    ferroq.worker.Worker._open_journal = lambda self: None
import store_costs
store_costs.python_costs(int(sys.argv[1]), 2)
"""


def instructions(tasks: int, no_journal: bool) -> int:
    driver = _DRIVER.format(benches=str(Path(__file__).resolve().parent), no_journal=no_journal)
    env = dict(os.environ, PYTHONHASHSEED="0")  # the same dict layouts run to run
    out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                          sys.executable, "-c", driver, str(tasks)],
                         capture_output=True, text=True, env=env, check=True)
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise SystemExit(f"no instruction count in valgrind's output:\n{out.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-journal", action="store_true", help="without the run journal's notes")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    small, large = instructions(1_000, args.no_journal), instructions(5_000, args.no_journal)
    per_task = (large - small) / (2 * 4_000)  # two repeats of 4,000 more tasks
    print(f"worker Python: {per_task:,.0f} instructions per task"
          f"{' (no run journal)' if args.no_journal else ''}")


if __name__ == "__main__":
    main()
