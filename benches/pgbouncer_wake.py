"""Behind PgBouncer in transaction mode: enqueue -> start of an idle worker in another process,
polling (no LISTEN: the default) against a listener sent to the server itself
(``listen_host``/``listen_port``). 20 tasks a second, so the worker is idle before each.

    .venv/bin/python tests/pg_cluster.py run -- .venv/bin/python tests/pgbouncer.py run -- \\
        .venv/bin/python benches/pgbouncer_wake.py [--seconds 10]

It reads ``FERROQ_TEST_PG_URL`` (through PgBouncer) and ``FERROQ_TEST_PG_SERVER_URL`` (the
server), as ``tests/pgbouncer.py run`` sets them; each side gets a fresh schema.
"""

from __future__ import annotations

import argparse
import os
import uuid
from urllib.parse import urlsplit

from ferroq.bench import Figure, bench_latency


def measure(through: str, server: str, seconds: float, rate: float = 20.0) -> dict[str, list[Figure]]:
    direct = urlsplit(server)
    listen = f"&listen_host={direct.hostname}&listen_port={direct.port or 5432}"
    out = {}
    for label, extra in (("polling", ""), ("listening", listen)):
        url = f"{through}&schema=wake_{uuid.uuid4().hex[:12]}{extra}"
        out[label] = bench_latency(rate, seconds, cross_process=True, location=url)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    through, server = os.environ["FERROQ_TEST_PG_URL"], os.environ["FERROQ_TEST_PG_SERVER_URL"]
    for label, figures in measure(through, server, args.seconds).items():
        line = ", ".join(f"{f.scenario.split()[1]} {f.value:.1f} ms" for f in figures)
        print(f"{label:<10} enqueue -> start at 20/s, cross-process: {line}")


if __name__ == "__main__":
    main()
