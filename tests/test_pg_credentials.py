"""A PostgreSQL URL with a password, on a server that asks for it (scram-sha-256): the queue
shows its URL without the password, and everything that opens another queue of the same
database from it (``ferroq status`` over every queue, the dashboard's overview) keeps the
credentials. They were lost there: ``Queue.path`` has no password, and reopening it failed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

import ferroq
import pg_cluster
from ferroq.web import create_app
from procs import child_env
from web_helpers import get

FERROQ = str(Path(sys.executable).parent / "ferroq")
USER, PASSWORD = "pwuser", "s3cret&more"
URL_PASSWORD = "s3cret%26more"  # percent-encoded, as in any URL


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    if pg_cluster.find_bindir() is None:
        if pg_cluster.in_ci():
            pytest.fail("PostgreSQL is missing (CI=true)")
        pytest.skip(pg_cluster.SKIPPED)
    with pg_cluster.Cluster() as cluster:
        hba = Path(cluster.datadir) / "pg_hba.conf"
        hba.write_text(f"host all {USER} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        cluster.psql(f"CREATE ROLE {USER} LOGIN SUPERUSER PASSWORD '{PASSWORD}'; SELECT pg_reload_conf()")
        yield f"postgresql://{USER}:{URL_PASSWORD}@127.0.0.1:{cluster.port}/postgres"


@pytest.fixture(autouse=True)
def no_password_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)


def two_queues(url: str) -> None:
    for name in ("mail", "billing"):
        with ferroq.Queue(url, name=name) as q:
            q.task(name="t")(lambda: None).enqueue()


def test_the_password_is_asked_for_and_never_shown(url: str) -> None:
    with pytest.raises(ferroq.StorageError, match="password authentication failed"):
        ferroq.Queue(url.replace(URL_PASSWORD, "wrong"))
    with ferroq.Queue(url) as q:
        assert "s3cret" not in q.path and "s3cret" not in repr(q)


def test_status_of_every_queue_keeps_the_credentials(url: str) -> None:
    two_queues(url)
    done = subprocess.run(
        [FERROQ, "--db", url, "status", "-o", "json"], env=child_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    names = {entry["name"] for entry in json.loads(done.stdout)["queues"]}
    assert {"mail", "billing"} <= names
    assert "s3cret" not in done.stdout + done.stderr


def test_the_dashboard_overview_of_every_queue_keeps_the_credentials(url: str) -> None:
    two_queues(url)
    with ferroq.Queue(url, name="mail") as q:
        overview = get(create_app(q), "/api/overview").json()["queues"]
    assert {"mail", "billing"} <= {entry["queue"] for entry in overview}
