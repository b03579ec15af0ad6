"""Network namespaces as separate hosts, for the multi-host tests (root and iproute2 needed).

    with netns.hosts_with_server(2) as (hosts, cluster):   # a cluster listening on every link
        url = cluster.url_for("postgres", host=hosts.server_address(0))
        child = procs.start(script, url, prefix=hosts.exec_prefix(0))   # runs "on host 0"
        hosts.cut(0)     # host 0 is partitioned: its packets go nowhere (connections hang)
        hosts.heal(0)    # and back

Host ``i`` is namespace ``ferroq-<pid>-<i>`` joined to the root namespace (where the server
runs) by a veth pair on its own /30: the root side has ``server_address(i)``, the namespace side
``address(i)``. A cut downs the root-side end, so the link loses carrier on both sides: packets
are dropped, not refused, as on a real partition. Leaving the context (or ``close``) deletes the
namespaces, which deletes their veth pairs, whatever happened in between.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Iterator, Sequence

import pg_cluster

#: Addresses come from the shared address space (RFC 6598), away from real networks; each
#: process takes its own block of /30s (by pid) so concurrent runs on one machine don't collide.
_POOL = ipaddress.IPv4Network("100.64.0.0/10")
MAX_HOSTS = 16

#: Run inside a fresh UTS namespace: names the host ``argv[1]``, then execs ``argv[2:]``.
_SET_HOSTNAME_AND_EXEC = "import os, socket, sys; socket.sethostname(sys.argv[1]); os.execvp(sys.argv[2], sys.argv[2:])"


class NetnsUnavailable(RuntimeError):
    """No namespaces here (not root, no iproute2, or no CAP_SYS_ADMIN): the reason."""


def unavailable_reason() -> str | None:
    """Why network namespaces can't be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 ('ip') is not installed"
    return None


def ip(*args: str) -> str:
    """Runs ``ip ARGS``; its output. Raises NetnsUnavailable with ip's message on failure."""
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise NetnsUnavailable(f"ip {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def _is_up(brief: str) -> bool:
    """Whether a line of ``ip -br link`` says the link is operationally up."""
    fields = brief.split()
    return len(fields) > 1 and fields[1] == "UP"


class Hosts:
    """``count`` network namespaces, each linked to the root namespace; a context manager."""

    def __init__(self, count: int) -> None:
        if not 1 <= count <= MAX_HOSTS:
            raise ValueError(f"1 to {MAX_HOSTS} hosts, not {count}")
        reason = unavailable_reason()
        if reason:
            raise NetnsUnavailable(reason)
        self.count = count
        self.tag = os.getpid()
        self.created: list[str] = []
        self._dir = tempfile.mkdtemp(prefix=f"ferroq-hosts-{self.tag}-")
        for i in range(count):
            os.mkdir(self.runtime_dir(i), 0o700)

    # -- names and addresses -----------------------------------------------------------------

    def name(self, i: int) -> str:
        """The namespace of host ``i``."""
        return f"ferroq-{self.tag}-{i}"

    def _veth(self, i: int, side: str) -> str:
        # Interface names have at most 15 characters.
        return f"fq{side}{self.tag % 1_000_000:06d}{i:x}"

    def _subnet(self, i: int) -> ipaddress.IPv4Network:
        block = (self.tag % 65_536) * MAX_HOSTS + i
        return ipaddress.IPv4Network((int(_POOL.network_address) + 4 * block, 30))

    def server_address(self, i: int) -> str:
        """The root namespace's address on host ``i``'s link: where host ``i`` reaches the server."""
        return str(self._subnet(i)[1])

    def address(self, i: int) -> str:
        """Host ``i``'s own address."""
        return str(self._subnet(i)[2])

    @property
    def server_addresses(self) -> list[str]:
        """Every root-side address (a server must listen on these to be reachable from the hosts)."""
        return [self.server_address(i) for i in range(self.count)]

    # -- running and partitions --------------------------------------------------------------

    def hostname(self, i: int) -> str:
        """Host ``i``'s name, as its processes see it (``socket.gethostname()``)."""
        return f"ferroq-host-{i}"

    def runtime_dir(self, i: int) -> str:
        """Host ``i``'s own temp and runtime directory (``TMPDIR``, ``XDG_RUNTIME_DIR``): files
        one host keeps there (run journals) are not seen by the others, as on separate machines."""
        return os.path.join(self._dir, f"host-{i}")

    def exec_prefix(self, i: int) -> list[str]:
        """The argv prefix that runs a command on host ``i``: in its network namespace, with its
        own hostname (a UTS namespace) and runtime directory. Every wrapper execs the next, so
        the command keeps the pid the caller started."""
        return [
            "ip", "netns", "exec", self.name(i),
            "env", f"TMPDIR={self.runtime_dir(i)}", f"XDG_RUNTIME_DIR={self.runtime_dir(i)}",
            "unshare", "--uts", sys.executable, "-c", _SET_HOSTNAME_AND_EXEC, self.hostname(i),
        ]  # fmt: skip

    def run(self, i: int, argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Runs ``argv`` on host ``i`` to the end."""
        return subprocess.run([*self.exec_prefix(i), *argv], capture_output=True, text=True, timeout=timeout)

    def cut(self, i: int) -> None:
        """Partitions host ``i``: its link goes down, packets either way are dropped."""
        ip("link", "set", self._veth(i, "h"), "down")

    def heal(self, i: int, timeout: float = 30) -> None:
        """Restores host ``i``'s link (addresses and routes stay configured); returns once both
        ends are up, with the neighbour entries the cut left failed forgotten (else the first
        connections after a heal could still fail with "No route to host")."""
        host_end, ns_end, ns = self._veth(i, "h"), self._veth(i, "n"), self.name(i)
        ip("link", "set", host_end, "up")
        deadline = time.monotonic() + timeout
        while not (
            _is_up(ip("-br", "link", "show", "dev", host_end))
            and _is_up(ip("-n", ns, "-br", "link", "show", "dev", ns_end))
        ):
            if time.monotonic() > deadline:
                raise NetnsUnavailable(f"host {i}'s link did not come back up within {timeout} s")
            time.sleep(0.01)
        ip("neigh", "flush", "dev", host_end)
        ip("-n", ns, "neigh", "flush", "dev", ns_end)

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Hosts:
        try:
            for i in range(self.count):
                self._create(i)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create(self, i: int) -> None:
        ns, host_end, ns_end = self.name(i), self._veth(i, "h"), self._veth(i, "n")
        prefix = self._subnet(i).prefixlen
        ip("netns", "add", ns)
        self.created.append(ns)
        ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end, "netns", ns)
        ip("addr", "add", f"{self.server_address(i)}/{prefix}", "dev", host_end)
        ip("link", "set", host_end, "up")
        ip("-n", ns, "addr", "add", f"{self.address(i)}/{prefix}", "dev", ns_end)
        ip("-n", ns, "link", "set", ns_end, "up")
        ip("-n", ns, "link", "set", "lo", "up")

    def close(self) -> None:
        """Deletes every namespace made (and with it, its veth pair). Safe to call twice."""
        errors = []
        while self.created:
            ns = self.created.pop()
            i = int(ns.rpartition("-")[2])
            # The pair first: a namespace outlives `netns del` while a process still runs in it,
            # and its link (with the server's address) with it.
            subprocess.run(["ip", "link", "del", self._veth(i, "h")], capture_output=True, timeout=60)
            try:
                ip("netns", "del", ns)
            except NetnsUnavailable as e:
                errors.append(str(e))
        shutil.rmtree(self._dir, ignore_errors=True)
        if errors:
            raise NetnsUnavailable("; ".join(errors))


@contextlib.contextmanager
def hosts_with_server(count: int, **cluster_options: Any) -> Iterator[tuple[Hosts, pg_cluster.Cluster]]:
    """``count`` hosts and a throw-away PostgreSQL cluster listening on loopback and on every
    host's link (the namespaces come first: the server binds its addresses when it starts)."""
    with Hosts(count) as hosts:
        listen = ["127.0.0.1", *hosts.server_addresses]
        with pg_cluster.Cluster(listen_addresses=listen, **cluster_options) as cluster:
            yield hosts, cluster
