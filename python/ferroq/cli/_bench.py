"""``ferroq bench``: throughput and latency next to the raw SQLite ceiling."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from .. import bench, bench_pg
from ._common import Settings, option, output_option


@click.command("bench")
@output_option
@option("--quick", is_flag=True, help="Smaller counts, throughput only.")
@option("--big", is_flag=True, help="Also claim cost with 1M finished tasks and worker RSS over 1M tasks.")
@click.pass_context
def bench_command(ctx: click.Context, output: str, quick: bool, big: bool) -> None:
    """Throughput and latency, next to the raw SQLite ceiling measured in the same run. With
    --db postgresql://... (a server where the user may create databases): the PostgreSQL
    engine's figures, next to the raw SQL ceiling and procrastinate on that server."""
    settings = ctx.find_object(Settings)
    db = settings.db if settings is not None else None
    postgres = bool(db) and str(db).startswith(("postgresql://", "postgres://"))
    figures = bench_pg.run(str(db), quick=quick) if postgres else bench.run(quick=quick, big=big)
    if output == "json":
        click.echo(json.dumps([{**asdict(f), "ratio": f.ratio} for f in figures], indent=2))
    else:
        click.echo(bench.render(figures, "raw SQL" if postgres else "raw SQLite"))
