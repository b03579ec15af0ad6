"""Performance-regression check: a quick run of the ratio scenarios (ferroq's rate over
the raw SQLite rate measured in the same run) against benches/baseline.json.

Absolute rates swing with the machine; ratios much less. It fails only when a ratio
falls below TOLERANCE x its baseline, i.e. on a large regression, not on noise.

    .venv/bin/python benches/check_regression.py [--update]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ferroq import bench

BASELINE = Path(__file__).with_name("baseline.json")
TOLERANCE = 0.4
# Group commit's ratio to single fsync'd commits measures the disk's fsync latency.
NOT_CHECKED = {"enqueue, 16 thread(s), full"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--update", action="store_true", help="write the measured ratios as the new baseline")
    args = parser.parse_args()
    figures = [f for f in bench.run(quick=True) if f.ratio is not None]
    print(bench.render(figures))
    measured = {f.scenario: round(f.ratio, 3) for f in figures if f.ratio is not None and f.scenario not in NOT_CHECKED}
    if args.update:
        BASELINE.write_text(json.dumps(measured, indent=2, sort_keys=True) + "\n")
        print(f"baseline written to {BASELINE}")
        return 0
    baseline = json.loads(BASELINE.read_text())
    failures = [
        f"{name}: ratio {measured[name]:.3f} < {TOLERANCE} x baseline {base:.3f}"
        for name, base in baseline.items()
        if name in measured and measured[name] < TOLERANCE * base
    ]
    missing = sorted(set(baseline) - set(measured))
    for line in failures:
        print("REGRESSION", line)
    for name in missing:
        print("MISSING", name)
    print(f"perf check: {len(baseline) - len(failures) - len(missing)} passed, {len(failures) + len(missing)} failed")
    return 1 if failures or missing else 0


if __name__ == "__main__":
    sys.exit(main())
