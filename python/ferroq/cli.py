"""The ``ferroq`` command line. (More commands come with the observability work.)"""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from . import __version__, bench


@click.group(context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "FERROQ"})
@click.version_option(__version__, prog_name="ferroq")
def main() -> None:
    """ferroq: a durable, embedded task queue (one SQLite file, Rust engine)."""


@main.command("bench")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="Output format.")
@click.option("--quick", is_flag=True, help="Smaller counts, throughput only.")
@click.option("--big", is_flag=True, help="Also claim cost with 1M finished tasks and worker RSS over 1M tasks.")
def bench_command(output: str, quick: bool, big: bool) -> None:
    """Throughput and latency, next to the raw SQLite ceiling measured in the same run."""
    figures = bench.run(quick=quick, big=big)
    if output == "json":
        click.echo(json.dumps([{**asdict(f), "ratio": f.ratio} for f in figures], indent=2))
    else:
        click.echo(bench.render(figures))
