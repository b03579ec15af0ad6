"""The network-namespace harness (tests/netns.py) itself: hosts reach the server, a cut host
does not (and the others still do), a healed one does again, and nothing is left behind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Iterator

import pytest

import netns
import pg_cluster
from procs import Procs, procs, wait_until  # noqa: F401 (the fixture)

pytestmark = pytest.mark.slow

SKIPPED = "*** network namespaces unavailable: multi-host tests SKIPPED ({}) ***"


def needs_netns() -> None:
    reason = netns.unavailable_reason()
    if reason is None:
        return
    if pg_cluster.in_ci():
        pytest.fail(SKIPPED.format(reason) + " (CI=true: run as root with iproute2)")
    pytest.skip(SKIPPED.format(reason))


@pytest.fixture
def hosts_and_server() -> Iterator[tuple[netns.Hosts, pg_cluster.Cluster]]:
    needs_netns()
    if pg_cluster.find_bindir() is None:
        pytest.skip(pg_cluster.SKIPPED)
    with netns.hosts_with_server(2) as hosts_and_cluster:
        yield hosts_and_cluster


def select_from(hosts: netns.Hosts, cluster: pg_cluster.Cluster, i: int) -> subprocess.CompletedProcess[str]:
    """SELECT 1 through psql run on host ``i``, over its link (gives up after 3 s without a link)."""
    assert cluster.bindir is not None
    url = cluster.url_for("postgres", host=hosts.server_address(i)) + "?connect_timeout=3"
    return hosts.run(i, [str(cluster.bindir / "psql"), "-X", "-A", "-t", "-d", url, "-c", "SELECT inet_client_addr()"])


def test_a_host_reaches_the_server_over_its_own_link(hosts_and_server: tuple[netns.Hosts, pg_cluster.Cluster]) -> None:
    hosts, cluster = hosts_and_server
    for i in range(2):
        out = select_from(hosts, cluster, i)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == hosts.address(i)  # the server saw host i's own address


def test_a_host_cannot_reach_the_loopback_server_of_the_root_namespace(
    hosts_and_server: tuple[netns.Hosts, pg_cluster.Cluster],
) -> None:
    hosts, cluster = hosts_and_server
    url = cluster.url_for("postgres", host="127.0.0.1") + "?connect_timeout=3"
    assert cluster.bindir is not None
    out = hosts.run(0, [str(cluster.bindir / "psql"), "-X", "-d", url, "-c", "SELECT 1"])
    assert out.returncode != 0  # its own loopback: it really is another host


def test_a_cut_host_is_partitioned_until_healed(hosts_and_server: tuple[netns.Hosts, pg_cluster.Cluster]) -> None:
    hosts, cluster = hosts_and_server
    hosts.cut(0)
    cut = select_from(hosts, cluster, 0)
    assert cut.returncode != 0
    assert select_from(hosts, cluster, 1).returncode == 0  # the others are not affected
    hosts.heal(0)
    healed = select_from(hosts, cluster, 0)
    assert healed.returncode == 0, healed.stderr


def test_a_cut_stalls_an_open_connection_instead_of_resetting_it(
    hosts_and_server: tuple[netns.Hosts, pg_cluster.Cluster], procs: Procs
) -> None:
    """A partition as the workers will see it: their socket neither errors nor answers."""
    hosts, cluster = hosts_and_server
    ready, go = procs.dir / "ready", procs.dir / "go"
    script = procs.script(
        "stalled",
        f"""
        import socket
        s = socket.create_connection(({hosts.server_address(0)!r}, {cluster.port}), timeout=30)
        touch({str(ready)!r})
        wait_for_file({str(go)!r})
        s.settimeout(2)
        s.sendall(b"\\0\\0\\0\\x08\\x04\\xd2\\x16\\x2f")  # SSLRequest: a live server answers one byte
        try:
            emit({{"answer": s.recv(1).decode()}})
        except socket.timeout:
            emit({{"answer": "timeout"}})
        """,
    )
    child = procs.start(script, prefix=hosts.exec_prefix(0))
    wait_until(ready.exists, timeout=60, what="the child's connection")
    hosts.cut(0)
    go.touch()
    assert child.check(timeout=60).last() == {"answer": "timeout"}


def test_each_host_has_its_own_name_and_runtime_dir_and_keeps_the_pid() -> None:
    needs_netns()
    probe = "import os, socket, tempfile; print(socket.gethostname(), tempfile.gettempdir(), os.getpid())"
    with netns.Hosts(2) as hosts:
        for i in range(2):
            child = subprocess.Popen(
                [*hosts.exec_prefix(i), sys.executable, "-c", probe], stdout=subprocess.PIPE, text=True
            )
            out, _ = child.communicate(timeout=60)
            assert out.split() == [hosts.hostname(i), hosts.runtime_dir(i), str(child.pid)]
        assert socket.gethostname() not in (hosts.hostname(0), hosts.hostname(1))  # ours is untouched
        runtime_dirs = [hosts.runtime_dir(i) for i in range(2)]
    assert not any(os.path.exists(d) for d in runtime_dirs)


def test_everything_is_removed_afterwards() -> None:
    needs_netns()
    with netns.Hosts(2) as hosts:
        names = [hosts.name(i) for i in range(2)]
        assert set(names) <= set(netns.ip("netns", "list").split())
        hosts.cut(1)  # a cut host is cleaned up too
    listed = netns.ip("netns", "list")
    assert not any(name in listed for name in names)
    links = netns.ip("-br", "addr")
    assert not any(address in links for address in hosts.server_addresses)


def test_hosts_refuse_bad_counts() -> None:
    with pytest.raises(ValueError):
        netns.Hosts(0)
    with pytest.raises(ValueError):
        netns.Hosts(netns.MAX_HOSTS + 1)
