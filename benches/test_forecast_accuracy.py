"""``benches/forecast_accuracy.py --quick`` in ``make test``: it exits non-zero when the
diurnal trace's 10-minute forecast falls below the 0.80 target (the full run: docs/benchmarks.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_forecast_accuracy_quick_meets_its_target() -> None:
    script = Path(__file__).with_name("forecast_accuracy.py")
    done = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "diurnal" in done.stdout
