"""Workers on separate hosts (network namespaces, tests/netns.py) against one PostgreSQL server.

Issue 14: workers on two hosts drain one queue; a host partitioned mid-task loses its lease to a
worker on the other host, which completes the task; after the heal the partitioned worker's late
completion is refused (LeaseLost): exactly one completion is recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

import ferroq
import netns
import pg_cluster
from procs import Child, Procs, procs, wait_until  # noqa: F401 (the fixture)

pytestmark = pytest.mark.slow

SKIPPED = "*** network namespaces unavailable: multi-host tests SKIPPED ({}) ***"

WORKER = """
url, markers, name, hold = sys.argv[1:5]
q = ferroq.Queue(url)

@q.task(name="job")
def job(n):
    ctx = ferroq.current_task()
    touch(os.path.join(markers, f"started-{n}-{ctx.attempt}-{name}"))
    if hold == "hold":
        wait_for_file(os.path.join(markers, "release"), timeout=300)
    return {"n": n, "worker": name, "attempt": ctx.attempt}

worker = ferroq.Worker(q, concurrency=1, lease=2.0, rescue_interval=0.2, poll_interval=0.1, name=name,
                       handle_signals=False)
stats = worker.run(until_empty=True)
emit(stats.__dict__)
"""


@pytest.fixture
def two_hosts(pg_engine_available: bool) -> Iterator[tuple[netns.Hosts, pg_cluster.Cluster, str]]:
    """Two hosts, a server listening on both links, and a fresh database on it (its name)."""
    reason = netns.unavailable_reason()
    if reason:
        if pg_cluster.in_ci():
            pytest.fail(SKIPPED.format(reason) + " (CI=true: run as root with iproute2)")
        pytest.skip(SKIPPED.format(reason))
    if not pg_engine_available:
        pytest.xfail("the PostgreSQL engine is not in this build yet (ferroq.Queue refuses postgresql:// URLs)")
    with netns.hosts_with_server(2) as (hosts, cluster):
        cluster.create_database("multihost")
        yield hosts, cluster, "multihost"


def url_on(hosts: netns.Hosts, cluster: pg_cluster.Cluster, database: str, i: int) -> str:
    """The database's URL as host ``i`` reaches it."""
    return cluster.url_for(database, host=hosts.server_address(i))


def test_workers_on_two_hosts_drain_one_queue(
    two_hosts: tuple[netns.Hosts, pg_cluster.Cluster, str], procs: Procs, tmp_path: Path
) -> None:
    hosts, cluster, database = two_hosts
    markers = tmp_path / "markers"
    markers.mkdir()
    with ferroq.Queue(cluster.url_for(database)) as q:
        job = q.task(name="job")(lambda n: None)
        ids = q.enqueue_many(job.call(i) for i in range(200))
        script = procs.script("worker", WORKER)
        workers = [
            procs.start(
                script,
                url_on(hosts, cluster, database, i),
                markers,
                f"host{i}",
                "go",
                prefix=hosts.exec_prefix(i),
                label=f"host{i}",
            )
            for i in range(2)
        ]
        stats = [w.check(timeout=120).last() for w in workers]
        assert sum(s["completed"] for s in stats) == 200
        results = [q.get(i).result for i in ids]
    assert sorted(r["n"] for r in results) == list(range(200))
    assert all(r["attempt"] == 1 for r in results)  # nothing ran twice


def test_a_partitioned_worker_loses_its_task_and_its_late_completion_is_refused(
    two_hosts: tuple[netns.Hosts, pg_cluster.Cluster, str], procs: Procs, tmp_path: Path
) -> None:
    hosts, cluster, database = two_hosts
    markers = tmp_path / "markers"
    markers.mkdir()
    script = procs.script("worker", WORKER)
    with ferroq.Queue(cluster.url_for(database)) as q:
        job = q.task(name="job", max_attempts=3)(lambda n: None)
        task_id = job.enqueue(7).id

        victim = procs.start(
            script,
            url_on(hosts, cluster, database, 0),
            markers,
            "victim",
            "hold",
            prefix=hosts.exec_prefix(0),
            label="victim",
        )
        wait_until(
            lambda: (markers / "started-7-1-victim").exists(), 60, "the task to start on host 0", children=[victim]
        )
        hosts.cut(0)

        # Host 1 sees the lease expire, takes the task over and completes it.
        rescuer = procs.start(
            script,
            url_on(hosts, cluster, database, 1),
            markers,
            "rescuer",
            "go",
            prefix=hosts.exec_prefix(1),
            label="rescuer",
        )
        assert rescuer.check(timeout=120).last()["completed"] == 1
        done = q.get(task_id)
        assert (done.status, done.result) == ("completed", {"n": 7, "worker": "rescuer", "attempt": 2})

        # The heal: the victim's processor returns, and its completion must not count.
        hosts.heal(0)
        (markers / "release").touch()
        victim_stats = victim.check(timeout=180).last()
        assert victim_stats["completed"] == 0
        assert victim_stats["lost"] == 1

        after = q.get(task_id)
        assert (after.status, after.result, after.attempts) == ("completed", done.result, 2)
        completions = [h for h in q.history(task_id) if h.to_status == "completed"]
    assert len(completions) == 1


PREFETCHING_WORKER = """
url, markers, name, rescue_interval = sys.argv[1:5]
q = ferroq.Queue(url)

@q.task(name="job", max_attempts=3)
def job(n):
    ctx = ferroq.current_task()
    touch(os.path.join(markers, f"started-{n}-{ctx.attempt}-{name}"))
    if name == "doomed":
        wait_for_file(os.path.join(markers, "never"), timeout=300)
    return {"n": n, "worker": name, "attempt": ctx.attempt}

worker = ferroq.Worker(q, concurrency=1, prefetch=3, lease=2.0, rescue_interval=float(rescue_interval),
                       poll_interval=0.1, name=name, handle_signals=False)
emit(worker.run(until_empty=True).__dict__)
"""


def test_a_dead_workers_unstarted_tasks_keep_their_attempts_with_a_rescuer_on_another_host(
    two_hosts: tuple[netns.Hosts, pg_cluster.Cluster, str], procs: Procs, tmp_path: Path
) -> None:
    """A worker is SIGKILLed holding one running task and three it had claimed but not started.
    Its run journal is a file on its host. A rescuer on the other host, which cannot read that
    file and checks every 0.1 s, leaves the tasks to the slower rescuer (every 1 s) on the dead
    worker's host, which reads the journal: only the task that ran is charged an attempt."""
    hosts, cluster, database = two_hosts
    markers = tmp_path / "markers"
    markers.mkdir()
    script = procs.script("prefetching", PREFETCHING_WORKER)
    with ferroq.Queue(cluster.url_for(database)) as q:
        job = q.task(name="job", max_attempts=3)(lambda n: None)
        ids = q.enqueue_many(job.call(n) for n in range(4))

        def start(name: str, host: int, rescue_interval: float) -> Child:
            url = url_on(hosts, cluster, database, host)
            return procs.start(script, url, markers, name, rescue_interval, prefix=hosts.exec_prefix(host), label=name)

        doomed = start("doomed", 0, 1.0)
        wait_until(
            lambda: all(q.get(i).status == "running" for i in ids) and any(markers.glob("started-*")),
            60,
            "the doomed worker to claim all four tasks and start one",
            children=[doomed],
        )
        sibling, foreign = start("sibling", 0, 1.0), start("foreign", 1, 0.1)
        wait_until(
            lambda: {"sibling", "foreign"} <= {w.id for w in q.workers()},
            60,
            "the other workers to register",
            children=[sibling, foreign],
        )
        doomed.kill()
        stats = [w.check(timeout=120).last() for w in (sibling, foreign)]
        assert sum(s["completed"] for s in stats) == 4
        results = {q.get(i).result["n"]: q.get(i) for i in ids}

    (ran,) = [int(m.name.split("-")[1]) for m in markers.glob("started-*-doomed")]
    for n, task in results.items():
        runs = sorted(m.name for m in markers.glob(f"started-{n}-*"))
        assert task.status == "completed"
        # Attempts count runs: 2 for the task the dead worker ran, 1 for each it never started.
        assert task.attempts == task.result["attempt"] == (2 if n == ran else 1), (n, runs)
        assert len(runs) == task.attempts, runs
