"""A throw-away PgBouncer in transaction mode in front of a test server (stdlib only).

    python tests/pgbouncer.py run -- CMD ARGS...   # under tests/pg_cluster.py run

runs CMD with ``FERROQ_TEST_PG_URL`` pointing through it (``pgbouncer=true``) and
``FERROQ_TEST_PG_SERVER_URL`` at the server itself: `make test` runs
the Rust conformance suite so. From Python::

    with PgBouncer(server_url, pool_size=1) as bouncer:
        url = bouncer.url_for("postgres")     # postgresql://postgres@127.0.0.1:PORT/postgres

Transaction pooling hands each transaction whichever server connection is free, so anything a
client keeps in its session (LISTEN, SET, a prepared statement) is gone or, worse, another
client's by the next transaction. A pool of one server connection per database makes every
client share one: a leak shows at once. As root PgBouncer runs as the PostgreSQL server's
account (it refuses root). Debian's ``pgbouncer`` package; ``find()`` says whether it is there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import pg_cluster

SKIPPED = "*** PgBouncer not found: the PgBouncer tests SKIPPED ***"


def find() -> str | None:
    return shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").is_file() else None)


class PgBouncer:
    def __init__(self, server_url: str, pool_size: int = 1) -> None:
        binary = find()
        if binary is None:
            raise pg_cluster.ClusterError(SKIPPED)
        self.binary = binary
        server = urlsplit(server_url)
        self.server_host, self.server_port = server.hostname or "127.0.0.1", server.port or 5432
        self.pool_size = pool_size
        self.user = pg_cluster._server_user()
        self.port = 0
        self.dir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def __enter__(self) -> PgBouncer:
        self.dir = Path(tempfile.mkdtemp(prefix="ferroq-pgbouncer-"))
        if self.user:  # its log goes here
            pw = pg_cluster.pwd.getpwnam(self.user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.port = pg_cluster.free_port()
        (self.dir / "users.txt").write_text('"postgres" ""\n')
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={self.server_host} port={self.server_port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.dir / 'users.txt'}\n"
            f"pool_mode = transaction\ndefault_pool_size = {self.pool_size}\nmax_client_conn = 500\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\n"
            # psql and psycopg send it; PgBouncer 1.18 would refuse them otherwise.
            "ignore_startup_parameters = extra_float_digits\n"
        )
        argv = [self.binary, str(self.dir / "pgbouncer.ini")]
        if self.user:
            argv = ["runuser", "-u", self.user, "--"] + argv
        self.process = subprocess.Popen(argv, cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not self._accepts():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.log()
                self.__exit__()
                raise pg_cluster.ClusterError(f"PgBouncer did not start:\n{log}")
            time.sleep(0.05)
        return self

    def _accepts(self) -> bool:
        import socket

        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def log(self) -> str:
        try:
            return (self.dir / "pgbouncer.log").read_text(errors="replace") if self.dir else ""
        except OSError:
            return ""

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


#: Set by ``run`` for its command: the server's own URL, beside the one through PgBouncer.
SERVER_URL_VAR = "FERROQ_TEST_PG_SERVER_URL"


def run(command: list[str]) -> int:
    """Runs ``command`` with ``FERROQ_TEST_PG_URL`` (a server's) replaced by the same server
    through a PgBouncer in transaction mode (``pgbouncer=true``); its exit code."""
    server = os.environ.get(pg_cluster.URL_VAR)
    if not server or find() is None:
        print(
            SKIPPED if server else f"*** {pg_cluster.URL_VAR} is not set: the PgBouncer run SKIPPED ***",
            file=sys.stderr,
            flush=True,
        )
        return 1 if pg_cluster.in_ci() else 0
    database = urlsplit(server).path.lstrip("/") or "postgres"
    # Four server connections: a test may hold a transaction open while another client works.
    with PgBouncer(server, pool_size=4) as bouncer:
        env = dict(os.environ, **{pg_cluster.URL_VAR: bouncer.url_for(database) + "?pgbouncer=true"})
        env[SERVER_URL_VAR] = server  # the server itself (for a listener that bypasses PgBouncer)
        return subprocess.call(command, env=env)


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) < 3 or args[:2] != ["run", "--"]:
        sys.exit("usage: python tests/pgbouncer.py run -- CMD ARGS...")
    sys.exit(run(args[2:]))
