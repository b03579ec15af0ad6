"""Instructions per task of the worker's own Python (start, run, record; the store's answers
faked, as in ``store_costs.py``), counted by callgrind: the same count on a busy machine as
on a quiet one, so two builds can be compared when wall-clock figures swing too much.

    .venv/bin/python benches/worker_instructions.py [--no-journal] [--store]

Runs the worker's per-task path for 1,000 and for 5,000 tasks (twice each) under
``valgrind --tool=callgrind`` and divides the difference by the tasks added, so the
interpreter's start and imports cancel out. ``--no-journal`` runs without the run journal
(to price its notes). ``--store`` counts instead the store's side of the same tasks through
the real extension: enqueue_many, claim and finish_many, batches of 500, with the rows
converted at the Python boundary both ways (to price that conversion). Needs valgrind
(Debian: ``valgrind``).
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
store_costs.{entry}
"""


def instructions(tasks: int, no_journal: bool, store: bool) -> int:
    entry = "store_costs(int(sys.argv[1]), 500)" if store else "python_costs(int(sys.argv[1]), 2)"
    driver = _DRIVER.format(benches=str(Path(__file__).resolve().parent), no_journal=no_journal, entry=entry)
    env = dict(os.environ, PYTHONHASHSEED="0")  # the same dict layouts run to run
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c", driver, str(tasks)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise SystemExit(f"no instruction count in valgrind's output:\n{out.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-journal", action="store_true", help="without the run journal's notes")
    parser.add_argument(
        "--store",
        action="store_true",
        help="the store's side instead: enqueue_many, claim, finish_many through the extension",
    )
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    small = instructions(1_000, args.no_journal, args.store)
    large = instructions(5_000, args.no_journal, args.store)
    if args.store:
        print(f"store (enqueue_many, claim, finish_many): {(large - small) / 4_000:,.0f} instructions per task")
        return
    per_task = (large - small) / (2 * 4_000)  # two repeats of 4,000 more tasks
    print(f"worker Python: {per_task:,.0f} instructions per task{' (no run journal)' if args.no_journal else ''}")


if __name__ == "__main__":
    main()
