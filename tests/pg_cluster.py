"""A throw-away PostgreSQL cluster for the tests (stdlib only).

    python tests/pg_cluster.py run -- CMD ARGS...
    python tests/pg_cluster.py bindir        # where the binaries are; exit 1 when none

starts a private cluster (``initdb -A trust`` in a temp dir, ``pg_ctl`` on a free port with its
socket in that dir, durability off for speed), runs CMD with
``FERROQ_TEST_PG_URL=postgresql://postgres@127.0.0.1:PORT/postgres``, stops the cluster, removes
the dir and exits with CMD's exit code. As root the server runs as the ``postgres`` user (initdb
refuses root). Without server binaries it says so loudly and runs CMD with the variable unset, so
the PostgreSQL suites skip; with ``CI=true`` it exits non-zero instead (CI must not skip them).

From Python (a pytest session fixture, the network-namespace tests)::

    with pg_cluster.Cluster() as cluster:
        url = cluster.url
        cluster.create_database("t1")        # a fresh database: cluster.url_for("t1")
        cluster.restart()                     # a server restart under load

Binaries: ``$FERROQ_PG_BINDIR`` if set (only there), else ``pg_config --bindir``, else the newest
``/usr/lib/postgresql/*/bin``.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Sequence

URL_VAR = "FERROQ_TEST_PG_URL"
SKIPPED = "*** PostgreSQL not found: PostgreSQL suites SKIPPED ***"
#: Durability off: a test cluster is thrown away, and fsync dominates small transactions.
FAST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")
_NEEDED = ("initdb", "pg_ctl", "postgres", "psql")


class ClusterError(RuntimeError):
    """The binaries were found but the cluster did not start (the message holds the server log)."""


def find_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl, postgres and psql, or None."""
    for candidate in _bindir_candidates():
        if all((candidate / name).is_file() for name in _NEEDED):
            return candidate
    return None


def _bindir_candidates() -> list[Path]:
    if os.environ.get("FERROQ_PG_BINDIR"):  # an explicit choice: that one or none
        return [Path(os.environ["FERROQ_PG_BINDIR"])]
    found = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=30)
            if out.returncode == 0 and out.stdout.strip():
                found.append(Path(out.stdout.strip()))
        except (OSError, subprocess.SubprocessError):
            pass
    # Debian keeps the server binaries off PATH, one directory per major version: newest first.
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    found.extend(Path(p) for p in sorted(versions, key=_version_key, reverse=True))
    return found


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path))


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (the server may still lose a race for it: start retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _server_user() -> str | None:
    """As root: the unprivileged account the server runs as. Otherwise None (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise ClusterError("running as root and neither a 'postgres' nor a 'nobody' account exists")


class Cluster:
    """One private PostgreSQL cluster; a context manager that always removes it."""

    def __init__(
        self,
        bindir: Path | None = None,
        listen_addresses: Sequence[str] = ("127.0.0.1",),
        settings: Sequence[str] = (),
    ) -> None:
        found = bindir or find_bindir()
        if found is None:
            raise ClusterError(SKIPPED)
        self.bindir = found
        self.listen_addresses = tuple(listen_addresses)
        self.settings = FAST_SETTINGS + ("max_connections=300",) + tuple(settings)
        self.user = _server_user()
        self.port = 0
        self.dir: Path | None = None

    # -- addresses ---------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self.listen_addresses[0]

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, database: str, host: str | None = None) -> str:
        return f"postgresql://postgres@{host or self.host}:{self.port}/{database}"

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        self.dir = Path(tempfile.mkdtemp(prefix="ferroq-pg-"))
        try:
            if self.user:
                pw = pwd.getpwnam(self.user)
                os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._as_server(
                [self._bin("initdb"), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync", "-D", self.datadir]
            )
            # Clients on other (namespace) hosts too: it listens only where the test chose.
            with open(Path(self.datadir) / "pg_hba.conf", "a") as hba:
                hba.write("host all all all trust\n")
            self._start_on_a_free_port()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stops the server (immediately: the data is thrown away) and removes the directory."""
        if self.dir is None:
            return
        if (Path(self.datadir) / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def stop(self, mode: str = "immediate") -> None:
        """Stops the server (``mode``: smart, fast or immediate); ``start`` brings it back."""
        self._as_server([self._bin("pg_ctl"), "-D", self.datadir, "-m", mode, "-w", "stop"], check=False)

    def start(self) -> None:
        """Starts the server again on the same port (after ``stop``)."""
        self._as_server(self._start_command(), check=True)

    def restart(self, mode: str = "fast") -> None:
        """A server restart: every connection is cut, the data (and the port) stay.

        "fast" by default: with synchronous_commit=off an "immediate" stop (a crash) loses the
        last ~200 ms of acknowledged commits, which a lost-nothing test would blame on ferroq.
        """
        self.stop(mode)
        self.start()

    def _start_on_a_free_port(self) -> None:
        last: ClusterError | None = None
        for _ in range(5):
            self.port = free_port(self.host)
            try:
                self._as_server(self._start_command(), check=True)
                return
            except ClusterError as e:  # another process took the port in between: try another
                last = e
        assert last is not None
        raise last

    def _start_command(self) -> list[str]:
        assert self.dir is not None
        options = [f"-p {self.port}", f"-k {self.dir}", "-c listen_addresses=" + ",".join(self.listen_addresses)]
        options += [f"-c {setting}" for setting in self.settings]
        return [self._bin("pg_ctl"), "-D", self.datadir, "-l", self.logfile, "-w", "-t", "60"] + [
            "-o",
            " ".join(options),
            "start",
        ]

    # -- SQL ---------------------------------------------------------------------------------

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Runs SQL through psql over the private socket; its output (unaligned, tuples only)."""
        return psql(self.bindir, self.url_for(database), sql)

    def create_database(self, name: str) -> str:
        """A fresh, empty database; its URL."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    # -- helpers -----------------------------------------------------------------------------

    @property
    def datadir(self) -> str:
        assert self.dir is not None
        return str(self.dir / "data")

    @property
    def logfile(self) -> str:
        assert self.dir is not None
        return str(self.dir / "server.log")

    def log(self) -> str:
        try:
            return Path(self.logfile).read_text(errors="replace")
        except OSError:
            return ""

    def _bin(self, name: str) -> str:
        return str(self.bindir / name)

    def _as_server(self, argv: list[str], check: bool = True) -> None:
        if self.user:
            argv = ["runuser", "-u", self.user, "--"] + argv
        # Not in our directory: the server user may not be allowed into the caller's cwd.
        out = subprocess.run(argv, capture_output=True, text=True, cwd=self.dir, timeout=120)
        if check and out.returncode != 0:
            raise ClusterError(f"{' '.join(argv)} failed ({out.returncode}):\n{out.stdout}{out.stderr}\n{self.log()}")


def psql(bindir: Path | None, url: str, sql: str) -> str:
    """Runs SQL on the server at ``url`` with psql (so a test needs no client library)."""
    found = bindir or find_bindir()
    if found is None:
        raise ClusterError(SKIPPED)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    out = subprocess.run(
        [str(found / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    if out.returncode != 0:
        raise ClusterError(f"psql failed ({out.returncode}) on {sql!r}: {out.stderr.strip()}")
    return out.stdout


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database on the same server."""
    base, _, _ = url.rpartition("/")
    return f"{base}/{database}"


def with_schema(url: str, schema: str) -> str:
    """A queue URL for ``schema`` in ``url``'s database (the engine creates the schema)."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}schema={schema}"


def drop_schema(database_url: str, schema: str) -> None:
    """Drops ``schema`` from the database, ending every other connection to that database first:
    a queue the test left open must not hold the schema's locks (nor a connection slot) for the
    rest of the session. Only for a database one test process owns."""
    psql(
        None,
        database_url,
        # The timeout waits until each is gone (not only signalled).
        "SELECT count(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid();"
        f' DROP SCHEMA IF EXISTS "{schema}" CASCADE',
    )


# -- command line ----------------------------------------------------------------------------


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def run(command: list[str]) -> int:
    """Runs ``command`` with a private cluster's URL exported; its exit code."""
    env = dict(os.environ)
    env.pop(URL_VAR, None)
    if find_bindir() is None:
        print(SKIPPED, file=sys.stderr, flush=True)
        if in_ci():
            print("CI=true: refusing to skip the PostgreSQL suites (install Debian's postgresql)", file=sys.stderr)
            return 1
        return _call(command, env)
    with Cluster() as cluster:
        env[URL_VAR] = cluster.url
        return _call(command, env)


def _call(command: list[str], env: dict[str, str]) -> int:
    child = subprocess.Popen(command, env=env)

    # A terminated runner still removes its cluster: pass the signal on, then clean up.
    def forward(signum: int, _frame: FrameType | None) -> None:
        child.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        while True:
            try:
                code = child.wait()
                break
            except KeyboardInterrupt:  # the child got the same SIGINT from the terminal
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)
    return code if code >= 0 else 128 - code


USAGE = "usage: python tests/pg_cluster.py run -- CMD [ARGS...] | bindir"


def main(argv: list[str]) -> int:
    if argv == ["bindir"]:  # for the Makefile: are the server binaries here?
        bindir = find_bindir()
        print(bindir or "", end="\n" if bindir else "")
        return 0 if bindir else 1
    if len(argv) < 3 or argv[0] != "run" or argv[1] != "--":
        print(USAGE, file=sys.stderr)
        return 2
    try:
        return run(argv[2:])
    except ClusterError as e:
        print(f"*** PostgreSQL test cluster failed to start ***\n{e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
