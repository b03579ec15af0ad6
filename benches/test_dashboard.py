"""benches/dashboard.py once, small (`make test`), so the benchmark never rots. Nothing here
asserts speed: only that every page answers and a burst reaches every stream."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_dashboard_bench_runs(tmp_path: Path) -> None:
    pytest.importorskip("starlette")
    spec = importlib.util.spec_from_file_location("dashboard_bench", Path(__file__).with_name("dashboard.py"))
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--tasks", "3000", "--clients", "3", "--burst", "200", "--quick", "--dir", str(tmp_path)])
    assert len(result["ms"]) >= 20
    streams = result["streams"]
    assert streams["burst_events"] == 200 and streams["clients_complete"] == 3
