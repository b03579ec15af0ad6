"""``ferroq bench --db postgresql://`` once, small, so it never rots (figures come from the full run)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import pg_cluster

import ferroq
from ferroq import bench, bench_pg


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    url = os.environ.get(pg_cluster.URL_VAR)
    if url:
        yield url
        return
    if pg_cluster.find_bindir() is None:
        if pg_cluster.in_ci():
            pytest.fail(pg_cluster.SKIPPED + " (CI=true)")
        pytest.skip(pg_cluster.SKIPPED)
    with pg_cluster.Cluster() as cluster:
        yield cluster.url


def test_bench_on_postgres_reports_the_issue_14_columns(server_url: str) -> None:
    figures = {f.scenario: f for f in bench_pg.run(server_url, quick=True, tasks=300)}
    for p in (1, 2):  # each drain beside the raw ceiling measured in the same run
        drain = figures[f"drain no-op, {p} process(es)"]
        assert drain.value > 0 and drain.ceiling and drain.ratio
    assert figures["procrastinate drain, 1 process (concurrency 10)"].value > 0
    assert {"enqueue, 1 thread", "enqueue, 16 threads", "enqueue_many (COPY)"} <= set(figures)
    assert "raw SQL" in bench.render(list(figures.values()), "raw SQL")


def test_the_drain_after_a_history_of_finished_tasks_counts_only_its_own(server_url: str) -> None:
    pg = bench_pg._pg_ceiling()
    with pg.fresh_database(server_url, "ferroq_history") as db:
        pg.add_finished_history(db, 500)
        with ferroq.Queue(db) as q:
            assert q.counts()["completed"] == 500 and sum(q.counts().values()) == 500
        assert pg.ferroq_drain_in(db, 300, 1) > 0  # checks each of its 300 ran once
        with ferroq.Queue(db) as q:
            assert q.counts()["completed"] == 800 and sum(q.counts().values()) == 800


def test_pgbouncer_wake_script_runs(server_url: str) -> None:
    import importlib.util

    import pgbouncer

    if pgbouncer.find() is None:
        if pg_cluster.in_ci():
            pytest.fail(pgbouncer.SKIPPED + " (CI=true)")
        pytest.skip(pgbouncer.SKIPPED)
    spec = importlib.util.spec_from_file_location("pgbouncer_wake", Path(__file__).with_name("pgbouncer_wake.py"))
    assert spec is not None and spec.loader is not None
    wake = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wake)
    database = server_url.partition("?")[0].rsplit("/", 1)[1] or "postgres"
    with pgbouncer.PgBouncer(server_url, pool_size=4) as bouncer:
        figures = wake.measure(bouncer.url_for(database) + "?pgbouncer=true", server_url, seconds=0.5)
    assert set(figures) == {"polling", "listening"}
    assert all(f.value > 0 for fs in figures.values() for f in fs)
