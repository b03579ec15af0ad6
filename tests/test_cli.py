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


def test_bench_reports_the_median_of_repeated_runs() -> None:
    from ferroq.bench import Figure, median_of

    runs = iter(
        [
            [Figure("a", 3.0, "ms"), Figure("b", 10.0, "tasks/s", 20.0)],
            [Figure("a", 1.0, "ms"), Figure("b", 30.0, "tasks/s", 40.0)],
            [Figure("a", 2.0, "ms"), Figure("b", 20.0, "tasks/s", 10.0)],
        ]
    )
    a, b = median_of(3, lambda: next(runs))
    assert (a.scenario, a.value, a.ceiling) == ("a (median of 3)", 2.0, None)
    assert (b.scenario, b.value, b.ceiling, b.unit) == ("b (median of 3)", 20.0, 20.0, "tasks/s")
    only = median_of(1, lambda: [Figure("c", 5.0, "ms")])
    assert [(f.scenario, f.value) for f in only] == [("c", 5.0)]
