"""The ``ferroq`` command line."""

import json

from click.testing import CliRunner

import ferroq
from ferroq.cli import main


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and ferroq.__version__ in result.output


def test_bench_quick_json_has_every_scenario_with_a_ceiling() -> None:
    result = CliRunner().invoke(main, ["bench", "--quick", "-o", "json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    names = [f["scenario"] for f in figures]
    assert any(n.startswith("enqueue, 1 thread") for n in names)
    assert any(n.startswith("drain no-op") for n in names)
    for f in figures:
        assert f["value"] > 0 and f["ceiling"] > 0
        assert abs(f["ratio"] - f["value"] / f["ceiling"]) < 1e-9
