"""``ferroq bench``: throughput and latency next to the raw SQLite ceiling."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from .. import bench
from ._common import option, output_option


@click.command("bench")
@output_option
@option("--quick", is_flag=True, help="Smaller counts, throughput only.")
@option("--big", is_flag=True, help="Also claim cost with 1M finished tasks and worker RSS over 1M tasks.")
def bench_command(output: str, quick: bool, big: bool) -> None:
    """Throughput and latency, next to the raw SQLite ceiling measured in the same run."""
    figures = bench.run(quick=quick, big=big)
    if output == "json":
        click.echo(json.dumps([{**asdict(f), "ratio": f.ratio} for f in figures], indent=2))
    else:
        click.echo(bench.render(figures))
