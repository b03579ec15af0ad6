"""The engine fixtures of tests/conftest.py: fresh PostgreSQL schemas, both_engines runs."""

from __future__ import annotations

from pathlib import Path

import pytest

import ferroq
import pg_cluster

pytestmark = pytest.mark.slow  # a PostgreSQL server process


def _database_and_schema(pg_url: str) -> tuple[str, str]:
    """psql takes no ``schema`` parameter: the database's URL, and the schema's name."""
    database, _, query = pg_url.partition("?")
    assert query.startswith("schema=")
    return database, query.removeprefix("schema=")


def _tables_in(database: str, schema: str) -> int:
    return int(pg_cluster.psql(None, database, f"SELECT count(*) FROM pg_tables WHERE schemaname = '{schema}'"))


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_gets_a_fresh_empty_schema(pg_url: str, run: int) -> None:
    database, schema = _database_and_schema(pg_url)
    assert _tables_in(database, schema) == 0  # the other run's queue is not here
    ferroq.Queue(pg_url).close()
    assert _tables_in(database, schema) > 0


def test_the_schema_and_the_connections_left_open_go_after_the_test(request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("pg_url")
    database, schema = _database_and_schema(url)
    left_open = ferroq.Queue(url)  # never closed: the teardown must not wait for it
    left_open.task(name="t")(lambda: None).enqueue()
    request.node.stash[LEFT_OPEN] = left_open
    open_now = (
        "SELECT string_agg(pid::text, ',') FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    pids = pg_cluster.psql(None, database, open_now).strip()
    assert pids, "the queue holds connections"
    request.node.stash[DROPPED_CHECK] = (database, schema, pids)


LEFT_OPEN = pytest.StashKey[ferroq.Queue]()
DROPPED_CHECK = pytest.StashKey[tuple[str, str, str]]()


@pytest.fixture(autouse=True)
def _check_dropped(request: pytest.FixtureRequest) -> object:
    # Torn down after pg_url (set up before it): by then the schema and its connections are gone.
    yield
    check = request.node.stash.get(DROPPED_CHECK, None)
    if check is not None:
        database, schema, pids = check
        gone = f"SELECT count(*) FROM pg_namespace WHERE nspname = '{schema}'"
        assert pg_cluster.psql(None, database, gone).strip() == "0"
        # The connections the test left are gone (the still-referenced queue's listener may
        # have connected again since, a new connection: that is its reconnect, not a leak).
        still = f"SELECT count(*) FROM pg_stat_activity WHERE pid IN ({pids})"
        assert pg_cluster.psql(None, database, still).strip() == "0"


def test_queue_location_is_a_sqlite_file_unless_asked(queue_location: Path | str, db_path: Path) -> None:
    assert queue_location == db_path


@pytest.mark.both_engines
def test_both_engines_runs_once_per_engine(queue_location: Path | str, request: pytest.FixtureRequest) -> None:
    engine = request.node.callspec.params["queue_location"]
    if engine == "sqlite":
        assert isinstance(queue_location, Path)
    else:
        assert isinstance(queue_location, str) and queue_location.startswith("postgresql://")
        assert "schema=" in queue_location
        assert request.node.get_closest_marker("postgres") is not None


@pytest.mark.both_engines
@pytest.mark.sqlite_only("checks the marker itself")
def test_sqlite_only_keeps_a_both_engines_test_on_sqlite(
    queue_location: Path | str, db_path: Path, request: pytest.FixtureRequest
) -> None:
    assert queue_location == db_path
    assert not hasattr(request.node, "callspec")
