"""The engine fixtures of tests/conftest.py: fresh PostgreSQL databases, both_engines runs."""

from __future__ import annotations

from pathlib import Path

import pytest

import pg_cluster

pytestmark = pytest.mark.slow  # a PostgreSQL server process


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_gets_a_fresh_empty_database(pg_url: str, run: int) -> None:
    name = pg_url.rpartition("/")[2]
    assert pg_cluster.psql(None, pg_url, "SELECT current_database()").strip() == name
    tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
    assert pg_cluster.psql(None, pg_url, tables).strip() == "0"  # the other run's table is not here
    pg_cluster.psql(None, pg_url, "CREATE TABLE leftover (x int)")


def test_the_database_is_dropped_after_the_test(pg_server_url: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("pg_url")
    name = url.rpartition("/")[2]
    exists = f"SELECT count(*) FROM pg_database WHERE datname = '{name}'"
    assert pg_cluster.psql(None, pg_server_url, exists).strip() == "1"
    request.node.stash[DROPPED_CHECK] = (pg_server_url, exists)


DROPPED_CHECK = pytest.StashKey[tuple[str, str]]()


@pytest.fixture(autouse=True)
def _check_dropped(request: pytest.FixtureRequest) -> object:
    # Torn down after pg_url (set up before it): by then the database must be gone.
    yield
    check = request.node.stash.get(DROPPED_CHECK, None)
    if check is not None:
        assert pg_cluster.psql(None, check[0], check[1]).strip() == "0"


def test_queue_location_is_a_sqlite_file_unless_asked(queue_location: Path | str, db_path: Path) -> None:
    assert queue_location == db_path


@pytest.mark.both_engines
def test_both_engines_runs_once_per_engine(queue_location: Path | str, request: pytest.FixtureRequest) -> None:
    engine = request.node.callspec.params["queue_location"]
    if engine == "sqlite":
        assert isinstance(queue_location, Path)
    else:
        assert isinstance(queue_location, str) and queue_location.startswith("postgresql://")
        assert request.node.get_closest_marker("postgres") is not None
