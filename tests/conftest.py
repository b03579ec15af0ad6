"""Shared fixtures for the ferroq test suite. Kept small and generic on purpose.

Engines: ``queue`` (and ``queue_location``) are a SQLite file by default. A test marked
``@pytest.mark.both_engines`` (on a test, or on a module as ``pytestmark``: then every test
taking ``queue``/``queue_location`` but those marked ``sqlite_only("why")``) runs twice, on SQLite
and on PostgreSQL (a fresh schema each time, in the session's own database on the server at
$FERROQ_TEST_PG_URL, else on a throw-away cluster this session starts, else skipped loudly;
never skipped under CI=true). Its PostgreSQL run is marked ``postgres`` (``-m "not postgres"``
leaves them out).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Iterator

import pytest

import ferroq
import pg_cluster

ENGINES = ("sqlite", "postgres")
ENGINE_MISSING = "the PostgreSQL engine is not in this build yet (ferroq.Queue refuses postgresql:// URLs)"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marked = metafunc.definition.get_closest_marker("both_engines")
    # sqlite_only("why"): a test in a both_engines module that is about SQLite itself (its file,
    # its locks) keeps the default, SQLite location.
    if marked and "queue_location" in metafunc.fixturenames and not _sqlite_only(metafunc.definition):
        metafunc.parametrize(
            "queue_location",
            [pytest.param(e, id=e, marks=[pytest.mark.postgres] if e == "postgres" else []) for e in ENGINES],
            indirect=True,
        )


def _sqlite_only(item: pytest.Item) -> bool:
    marker = item.get_closest_marker("sqlite_only")
    if marker is not None and not (marker.args and isinstance(marker.args[0], str)):
        raise pytest.UsageError(f"{item.nodeid}: sqlite_only needs its reason")
    return marker is not None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A marked test that can't take the parametrisation would silently run on SQLite only. A module
    # marked as a whole (``pytestmark``) may hold tests that need no queue (pure functions, or
    # SQLite-only ones with a reason): only a test's own marker must be honoured.
    for item in items:
        own = any(m.name == "both_engines" for m in getattr(item, "own_markers", ()))
        if own and "queue_location" not in getattr(item, "fixturenames", ()):
            raise pytest.UsageError(f"{item.nodeid}: both_engines needs the queue or queue_location fixture")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A path for a fresh queue database (the file does not exist yet)."""
    return tmp_path / "queue.db"


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A PostgreSQL server for this session (its ``postgres`` database's URL)."""
    url = os.environ.get(pg_cluster.URL_VAR)
    if url:
        yield url
        return
    if pg_cluster.find_bindir() is None:
        if pg_cluster.in_ci():
            pytest.fail(f"{pg_cluster.SKIPPED} (CI=true: install Debian's postgresql)")
        pytest.skip(pg_cluster.SKIPPED)
    with pg_cluster.Cluster() as cluster:
        yield cluster.url


@pytest.fixture(scope="session")
def pg_database_url(pg_server_url: str) -> Iterator[str]:
    """This session's own database on the server; each test's queue is a schema in it."""
    name = f"ferroq_test_{os.getpid()}"
    pg_cluster.psql(None, pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # a reused pid's
    pg_cluster.psql(None, pg_server_url, f'CREATE DATABASE "{name}"')
    yield pg_cluster.with_database(pg_server_url, name)
    pg_cluster.psql(None, pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_schema_numbers = itertools.count()


@pytest.fixture
def pg_url(pg_database_url: str) -> Iterator[str]:
    """A fresh, empty queue database for one test: a schema of its own (``?schema=``) in the
    session's database, cheaper than a database per test (CREATE DATABASE cost ~0.3 s a test on
    this machine). Dropped afterwards, with the connections the test left open."""
    schema = f"t_{next(_schema_numbers)}"
    yield pg_cluster.with_schema(pg_database_url, schema)
    pg_cluster.drop_schema(pg_database_url, schema)


@pytest.fixture(scope="session")
def pg_engine_available(pg_database_url: str) -> bool:
    """Whether this build's ``ferroq.Queue`` opens postgresql:// URLs (probed once, in its own schema)."""
    try:
        ferroq.Queue(pg_cluster.with_schema(pg_database_url, "probe")).close()
    except ferroq.InvalidArgument as e:
        if "not supported" in str(e):
            return False
        raise
    finally:
        pg_cluster.drop_schema(pg_database_url, "probe")
    return True


@pytest.fixture
def queue_location(request: pytest.FixtureRequest, db_path: Path) -> Path | str:
    """Where the test's queue lives: ``db_path`` (SQLite), or a fresh PostgreSQL schema's URL
    (``pg_url``) for the ``postgres`` run of a ``both_engines`` test (xfailed while the engine
    is missing)."""
    engine = getattr(request, "param", "sqlite")
    if engine == "sqlite":
        return db_path
    if not request.getfixturevalue("pg_engine_available"):
        pytest.xfail(ENGINE_MISSING)
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def queue(queue_location: Path | str) -> Iterator[ferroq.Queue]:
    """A fresh queue at ``queue_location``; durability="normal" keeps the SQLite tests fast."""
    if isinstance(queue_location, Path):
        yield ferroq.Queue(queue_location, durability="normal")
        return
    q = ferroq.Queue(queue_location)
    yield q
    q.close()  # before pg_url drops its schema
