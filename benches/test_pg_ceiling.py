"""benches/pg_ceiling.py once, small, so it never rots (figures come from running the script)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import pg_ceiling
import pg_cluster


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


def test_pg_ceiling_reports_every_column(server_url: str, capsys: Any) -> None:
    argv = ["--url", server_url, "--tasks", "250", "--procrastinate-tasks", "30", "--processes", "1", "2", "-o", "json"]
    assert pg_ceiling.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert "fsync=off" in report["server"]
    rows = {(row["name"].split(" (")[0], row["processes"]): row for row in report["rows"]}
    assert set(rows) == {(name, p) for name in ("raw SQL ceiling", "procrastinate", "ferroq drain") for p in (1, 2)}
    for (name, _), row in rows.items():
        if name == "ferroq drain" and row["tasks_per_s"] is None:  # until the engine lands
            assert row["note"] == pg_ceiling.ENGINE_MISSING
        else:
            assert row["tasks_per_s"] > 0


def test_the_raw_claim_is_fenced_by_the_lease(server_url: str) -> None:
    """The ceiling does the work a real queue must: a finish under a stale lease changes nothing."""
    import psycopg

    with pg_ceiling.fresh_database(server_url, "ferroq_fence") as db, psycopg.connect(db, autocommit=True) as conn:
        conn.execute(pg_ceiling.RAW_SCHEMA)
        conn.execute("INSERT INTO ceiling_tasks (payload) VALUES ('x')")
        ((task_id, _),) = conn.execute(pg_ceiling.RAW_CLAIM, {"batch": 100, "lease": 7}).fetchall()
        stale = conn.execute(pg_ceiling.RAW_FINISH, {"ids": [task_id], "leases": [6], "results": [b"1"]})
        assert stale.rowcount == 0
        assert conn.execute(pg_ceiling.RAW_FINISH, {"ids": [task_id], "leases": [7], "results": [b"1"]}).rowcount == 1
        assert conn.execute(pg_ceiling.RAW_CLAIM, {"batch": 100, "lease": 8}).fetchall() == []
