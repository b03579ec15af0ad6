"""The soak under faults, quick version (about 20 s): producers and four worker processes on
one file while workers are SIGKILLed and SIGSTOPped at random (``benches/soak_faults.py``
runs the long one). Every execution is logged outside the queue; the script compares that
log with what the queue recorded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import child_env

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parent.parent / "benches" / "soak_faults.py"


@pytest.mark.timeout(600)
def test_nothing_lost_completed_twice_or_charged_without_a_run_under_kills_and_stops(tmp_path: Path) -> None:
    # Generous: on a loaded 2-core machine the drain alone can take a while. Nothing here
    # asserts how long anything took.
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "-o", "json", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=540,
        env=child_env(),
    )
    lines = done.stdout.splitlines()
    assert lines, f"no report (exit {done.returncode})\n{done.stderr[-4000:]}"
    r = json.loads(lines[-1])
    detail = json.dumps(r, indent=1)[:6000]
    # Faults really happened, and interrupted work: the checks below are not vacuous.
    assert r["faults"]["kills"] >= 1 and r["faults"]["stops"] >= 1, detail
    assert r["rescues"]["total"] >= 1, detail
    assert r["acked"] > 100 and r["runs"] >= r["acked"], detail
    # What the queue promises, checked against the execution log.
    assert r["lost"] == 0, detail
    assert r["double_completions"] == 0, detail
    assert r["charged_without_start"] == 0, detail
    assert r["left_running"] == 0 and r["workers_not_drained"] == [], detail
    assert r["completed"] + r["dead"] == r["acked"], detail
    assert r["unexpected_exits"] == [], detail  # no worker died but those the supervisor killed
    assert done.returncode == 0, f"{detail}\n{done.stderr[-4000:]}"
