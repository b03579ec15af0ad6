"""The PostgreSQL engine behind a real PgBouncer in transaction mode (``pgbouncer=true``): one
server connection shared by every client, so a statement, a search_path or a LISTEN kept from
one transaction to the next would fail or land in another client's session."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

import ferroq
import pg_cluster
import pgbouncer
from procs import child_env, wait_until

pytestmark = pytest.mark.slow  # a PgBouncer and worker processes


@pytest.fixture(scope="module")
def bouncer(pg_server_url: str) -> Iterator[pgbouncer.PgBouncer]:
    if pgbouncer.find() is None:
        if pg_cluster.in_ci():
            pytest.fail(pgbouncer.SKIPPED + " (CI=true: install Debian's pgbouncer)")
        pytest.skip(pgbouncer.SKIPPED)
    with pgbouncer.PgBouncer(pg_server_url, pool_size=1) as b:
        yield b


def through(bouncer: pgbouncer.PgBouncer, pg_url: str, flag: bool = True) -> str:
    """``pg_url`` (a schema of the test's own) reached through ``bouncer``."""
    parts = urlsplit(pg_url)
    netloc = f"{parts.username}@127.0.0.1:{bouncer.port}"
    query = parts.query + ("&pgbouncer=true" if flag else "")
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


WORKER = """
import os, sys
import ferroq
q = ferroq.Queue(sys.argv[1])
log = sys.argv[2]

@q.task(name="work")
def work(n: int) -> int:
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f"{n}\\n".encode())
    os.close(fd)
    return n * 2

ferroq.Worker(q, concurrency=4, handle_signals=False).run(until_empty=True)
"""


def test_workers_behind_pgbouncer_run_every_task_once(
    tmp_path: Path, pg_url: str, bouncer: pgbouncer.PgBouncer
) -> None:
    url = through(bouncer, pg_url)
    with ferroq.Queue(url) as q:
        assert "pgbouncer=true" in q.path  # what worker processes reopen
        work = q.task(name="work")(lambda n: n * 2)
        many = q.enqueue_many(work.call(n) for n in range(1_500))  # past the COPY threshold
        single = [work.enqueue(n).id for n in range(1_500, 1_600)]
        keyed = work.using(unique_key="k").enqueue(1_600)
        assert work.using(unique_key="k").enqueue(1_600).id == keyed.id
        script, log = tmp_path / "worker.py", tmp_path / "runs.log"
        script.write_text(textwrap.dedent(WORKER))
        workers = [
            subprocess.Popen(
                [sys.executable, str(script), url, str(log)], env=child_env(), stderr=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        for w in workers:
            _, err = w.communicate(timeout=240)
            assert w.returncode == 0, err
        runs = sorted(int(line) for line in log.read_text().split())
        assert runs == list(range(1_601)), "every task ran exactly once"
        counts = q.counts()
        assert counts["completed"] == 1_601 and sum(counts.values()) == 1_601
        assert [q.handle(i).result(timeout=5) for i in (many[7], single[3], keyed.id)] == [14, 3_006, 3_200]


def test_a_waiting_worker_behind_pgbouncer_polls_and_finds_another_process_s_task(
    tmp_path: Path, pg_url: str, bouncer: pgbouncer.PgBouncer
) -> None:
    url = through(bouncer, pg_url)
    with ferroq.Queue(url) as q:
        ran: list[int] = []
        q.task(name="work")(lambda n: ran.append(n))
        worker = ferroq.Worker(q, concurrency=1, handle_signals=False)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            producer = "import ferroq, sys; q = ferroq.Queue(sys.argv[1]); q.task(name='work')(print).enqueue(7)"
            subprocess.run([sys.executable, "-c", producer, url], env=child_env(), check=True, timeout=60)
            wait_until(lambda: ran == [7], 30, "the worker to find the task")
            # No LISTEN went through PgBouncer (a session it would not keep): the worker polled.
            database = pg_url.partition("?")[0]
            listening = "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'LISTEN%'"
            assert pg_cluster.psql(None, database, listening).strip() == "0"
        finally:
            worker.stop()
            thread.join(30)


def test_behind_pgbouncer_the_listener_can_go_to_the_server_itself(
    tmp_path: Path, pg_url: str, bouncer: pgbouncer.PgBouncer
) -> None:
    """With ``listen_host``/``listen_port`` (the server's own address) the one LISTEN session
    of a process bypasses PgBouncer, so waiters wake on NOTIFY; tasks still go through it."""
    server = urlsplit(pg_url)
    url = through(bouncer, pg_url) + f"&listen_host={server.hostname}&listen_port={server.port}"
    with ferroq.Queue(url) as q:
        assert f"listen_port={server.port}" in q.path
        ran: list[int] = []
        q.task(name="work")(lambda n: ran.append(n))
        worker = ferroq.Worker(q, concurrency=1, handle_signals=False)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            database = pg_url.partition("?")[0]
            listening = (
                "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'LISTEN%' AND application_name = 'ferroq'"
            )
            wait_until(lambda: pg_cluster.psql(None, database, listening).strip() == "1", 30, "the listener")
            producer = "import ferroq, sys; q = ferroq.Queue(sys.argv[1]); q.task(name='work')(print).enqueue(7)"
            subprocess.run([sys.executable, "-c", producer, url], env=child_env(), check=True, timeout=60)
            wait_until(lambda: ran == [7], 30, "the worker to find the task")
        finally:
            worker.stop()
            thread.join(30)


def test_without_the_flag_pgbouncer_s_refusal_says_what_to_add(pg_url: str, bouncer: pgbouncer.PgBouncer) -> None:
    with pytest.raises(ferroq.StorageError, match="pgbouncer=true"):
        ferroq.Queue(through(bouncer, pg_url, flag=False))
