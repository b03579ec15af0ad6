"""``benches/autoscale.py --quick`` in ``make test``: the autoscaled worker must provision
fewer worker-seconds than fixed max and wait less than fixed min (figures: docs/benchmarks.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_autoscale_quick_beats_fixed_min_and_costs_less_than_fixed_max() -> None:
    script = Path(__file__).with_name("autoscale.py")
    done = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "autoscale 1:32" in done.stdout
