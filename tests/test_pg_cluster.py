"""The throw-away PostgreSQL cluster harness (tests/pg_cluster.py) itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pg_cluster

pytestmark = pytest.mark.slow

SCRIPT = str(Path(__file__).with_name("pg_cluster.py"))


def needs_postgres() -> Path:
    bindir = pg_cluster.find_bindir()
    if bindir is None:
        pytest.skip(pg_cluster.SKIPPED)
    return bindir


def run_script(*command: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("CI", pg_cluster.URL_VAR)}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, SCRIPT, "run", "--", *command], capture_output=True, text=True, env=full_env, timeout=300
    )


def test_run_exports_a_working_url_and_returns_the_exit_code() -> None:
    bindir = needs_postgres()
    probe = f"import os; print(os.environ['{pg_cluster.URL_VAR}']); raise SystemExit(7)"
    out = run_script(sys.executable, "-c", probe)
    assert out.returncode == 7, out.stderr
    url = out.stdout.strip()
    assert url.startswith("postgresql://postgres@127.0.0.1:") and url.endswith("/postgres")
    # Gone afterwards: nothing answers on that port any more.
    with pytest.raises(pg_cluster.ClusterError):
        pg_cluster.psql(bindir, url + "?connect_timeout=5", "SELECT 1")


def test_run_gives_the_command_a_server_that_answers_sql() -> None:
    bindir = needs_postgres()
    probe = (
        "import os, sys; sys.path.insert(0, os.path.dirname(sys.argv[1])); import pg_cluster; "
        f"print(pg_cluster.psql(None, os.environ['{pg_cluster.URL_VAR}'], 'SHOW fsync').strip())"
    )
    out = run_script(sys.executable, "-c", probe, SCRIPT, FERROQ_PG_BINDIR=str(bindir))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "off"


def test_without_binaries_it_says_so_and_runs_the_command_without_a_url() -> None:
    probe = f"import os; print(repr(os.environ.get('{pg_cluster.URL_VAR}')))"
    out = run_script(sys.executable, "-c", probe, FERROQ_PG_BINDIR="/nonexistent")
    assert out.returncode == 0
    assert out.stdout.strip() == "None"
    assert pg_cluster.SKIPPED in out.stderr


def test_without_binaries_in_ci_it_fails_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    out = run_script(sys.executable, "-c", f"open({str(marker)!r}, 'w')", FERROQ_PG_BINDIR="/nonexistent", CI="true")
    assert out.returncode != 0
    assert pg_cluster.SKIPPED in out.stderr
    assert not marker.exists()


def test_cluster_makes_databases_survives_a_restart_and_removes_itself() -> None:
    needs_postgres()
    with pg_cluster.Cluster() as cluster:
        directory = cluster.dir
        assert directory is not None and directory.is_dir()
        url = cluster.create_database("harness_check")
        pg_cluster.psql(None, url, "CREATE TABLE t (x int); INSERT INTO t VALUES (42)")
        cluster.restart()
        assert pg_cluster.psql(None, url, "SELECT x FROM t").strip() == "42"
    assert not directory.exists()


def test_with_database_points_a_url_at_another_database() -> None:
    assert pg_cluster.with_database("postgresql://postgres@127.0.0.1:5/postgres", "t1") == (
        "postgresql://postgres@127.0.0.1:5/t1"
    )


def test_a_terminated_runner_stops_its_command_and_removes_the_cluster(tmp_path: Path) -> None:
    bindir = needs_postgres()
    url_file = tmp_path / "url"
    probe = (
        "import os, pathlib, time; "
        f"pathlib.Path({str(url_file)!r}).write_text(os.environ['{pg_cluster.URL_VAR}']); time.sleep(600)"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CI", pg_cluster.URL_VAR)}
    runner = subprocess.Popen([sys.executable, SCRIPT, "run", "--", sys.executable, "-c", probe], env=env)
    try:
        deadline = time.monotonic() + 120
        while not url_file.exists() or not url_file.read_text():
            assert runner.poll() is None and time.monotonic() < deadline, "the command never started"
            time.sleep(0.05)
        url = url_file.read_text()
        runner.terminate()
        assert runner.wait(timeout=120) == 128 + signal.SIGTERM  # the command's death, passed on
    finally:
        if runner.poll() is None:
            runner.kill()
    with pytest.raises(pg_cluster.ClusterError):
        pg_cluster.psql(bindir, url + "?connect_timeout=5", "SELECT 1")
