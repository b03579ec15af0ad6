"""The dashboard with a big file: server-side time of each page and API call with 1,000,000
tasks, and what 100 idle event streams cost the server and whether a burst of 1,000 events/s
reaches them all.

    .venv/bin/python benches/dashboard.py                 # 1,000,000 tasks, 100 streams
    .venv/bin/python benches/dashboard.py --tasks 20000 --clients 5 --quick

The file is made once (enqueued through ferroq, then most tasks marked finished by SQL in a
child process, as years of work would leave them) and kept under --dir for the next run.
Times are server-side: the ASGI app called in-process (no network), median of --repeat."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import ferroq

# Of every 100 tasks: 94 completed, 2 dead, 1 cancelled, 2 pending, 1 in a rare group.
FINISH_SQL = """
UPDATE tasks SET status = CASE WHEN id % 100 < 94 THEN 'completed' WHEN id % 100 < 96 THEN 'dead'
                               ELSE 'cancelled' END,
       attempts = 1, started_at = created_at + 1, finished_at = created_at + 5 + id % 1000,
       updated_at = created_at + 5 + id % 1000, progress = CASE WHEN id % 100 < 94 THEN 1.0 END,
       last_error = CASE WHEN id % 100 BETWEEN 94 AND 95
                    THEN '{"type": "ValueError", "message": "bad input", "traceback": null}' END
 WHERE id % 100 < 97;
INSERT INTO events (at, queue, resource_group, task_id, kind, detail)
SELECT created_at + 5, queue, resource_group, id,
       CASE WHEN id % 100 < 94 THEN 'completed' WHEN id % 100 < 96 THEN 'dead' ELSE 'cancelled' END, NULL
  FROM tasks WHERE id % 100 < 97;
"""


def make_file(path: Path, n: int) -> None:
    if path.exists():
        return
    tmp = path.with_suffix(".making")
    for f in tmp.parent.glob(tmp.name + "*"):
        f.unlink()
    q = ferroq.Queue(tmp, durability="normal")

    @q.task(name="shop.charge")
    def charge(order: int, note: str) -> None: ...

    @q.task(name="shop.refund", resource_group="refunds")
    def refund(order: int) -> None: ...

    t0, done = time.perf_counter(), 0
    while done < n:
        size = min(20_000, n - done)
        q.enqueue_many(
            charge.call(i, f"order {i} for customer {i % 977}") if i % 100 != 99 else refund.call(i)
            for i in range(done, done + size)
        )
        done += size
    q.close()
    # Not this process: two SQLite libraries in one process drop each other's locks.
    subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sqlite3
        c = sqlite3.connect({str(tmp)!r})
        c.executescript({FINISH_SQL!r})
        c.execute("ANALYZE")
        c.close()
    """),
        ],
        check=True,
    )
    os.replace(tmp, path)
    print(f"made {path}: {n:,} tasks in {time.perf_counter() - t0:.1f}s", file=sys.stderr)


def timed_calls(app: Any, paths: list[str], repeat: int) -> dict[str, float]:
    import httpx

    async def main() -> dict[str, float]:
        out = {}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            for path in paths:
                times = []
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    r = await client.get(path)
                    times.append(time.perf_counter() - t0)
                    assert r.status_code == 200, (path, r.status_code, r.text[:300])
                out[path] = statistics.median(times) * 1000
        return out

    return asyncio.run(main())


def pages(q: ferroq.Queue) -> list[str]:
    some = q.list(status="completed", limit=1, newest_first=True)[0].id
    dead = q.list(status="dead", limit=1, newest_first=True)[0].id
    return [
        "/api/overview",
        "/",
        "/api/tasks",
        "/tasks",
        "/api/tasks?status=pending",
        "/api/tasks?status=dead",
        "/api/tasks?status=cancelled",
        "/api/tasks?status=running",
        "/api/tasks?group=refunds",
        "/api/tasks?name=shop.refund",
        "/api/tasks?status=dead&group=refunds",
        f"/api/tasks?after={some // 2}",
        f"/api/tasks/{some}",
        f"/tasks/{dead}",
        "/api/events",
        "/api/events?kind=dead",
        "/events",
        "/api/groups",
        "/groups",
        "/api/workers",
        "/api/tasks/bulk/retry?status=dead",
    ]


def uncached_overview(app: Any, repeat: int) -> float:
    """What /api/overview costs when the file changed: the counts and metrics of every queue
    (the app computes them at most every 0.5 s for all requests together)."""
    from ferroq.web.views import overview

    dash = app.state.dashboard
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        overview(dash.all_queues())
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


# -- streams ------------------------------------------------------------------------------

SERVER = """
import sys
from ferroq.cli import main
main(["--db", sys.argv[1], "dashboard", "--port", sys.argv[2]])
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Clients:
    """``n`` event streams on raw sockets, counting the event ids each receives."""

    def __init__(self, port: int, n: int, after: int) -> None:
        self.port, self.n, self.after = port, n, after
        self.ids: list[list[int]] = [[] for _ in range(n)]
        self.connected = 0
        self.loop = asyncio.new_event_loop()
        self.task: asyncio.Future[Any] | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.stop = False

    def _main(self) -> None:
        self.task = asyncio.ensure_future(self.run(), loop=self.loop)
        try:
            self.loop.run_until_complete(self.task)
        except asyncio.CancelledError:  # close(): the streams are done with
            pass

    def close(self) -> None:
        self.stop = True
        if self.task is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(10)
        self.loop.close()

    async def one(self, i: int) -> None:
        while not self.stop:
            after = self.ids[i][-1] if self.ids[i] else self.after
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            writer.write(f"GET /api/stream?after={after} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            self.connected += 1
            # Whole chunks, split here: a readline per line made this client, not the server,
            # the bottleneck of the burst (100 streams x 4 lines an event, on the same 2 cores).
            rest = b""
            try:
                while not self.stop:
                    chunk = await reader.read(1 << 16)
                    if not chunk:
                        break
                    *lines, rest = (rest + chunk).split(b"\n")
                    self.ids[i].extend(int(line[4:]) for line in lines if line.startswith(b"id: "))
            finally:
                self.connected -= 1
                writer.close()
                await writer.wait_closed()

    async def run(self) -> None:
        await asyncio.gather(*(self.one(i) for i in range(self.n)), return_exceptions=True)


def streams(path: Path, n_clients: int, idle: float, burst: int) -> dict[str, float]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = path.with_name("dashboard_bench_server.py")
    script.write_text(SERVER)
    server = subprocess.Popen([sys.executable, str(script), str(path), str(port)], stderr=subprocess.DEVNULL)
    try:
        q = ferroq.Queue(path, events="all", durability="normal")

        @q.task(name="bench.ping")
        def ping(i: int) -> None: ...

        for _ in range(300):
            try:
                import urllib.request

                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/workers", timeout=2).read()
                break
            except OSError:
                time.sleep(0.1)
        clients = Clients(port, n_clients, q.last_event_id())
        clients.thread.start()
        while clients.connected < n_clients:
            time.sleep(0.05)
        time.sleep(1.0)
        c0, t0 = cpu_seconds(server.pid), time.monotonic()
        time.sleep(idle)
        idle_share = (cpu_seconds(server.pid) - c0) / (time.monotonic() - t0)
        # The burst: `burst` enqueued events over one second, 50 every 50 ms.
        start = q.last_event_id()
        c0, t0 = cpu_seconds(server.pid), time.monotonic()
        for k in range(20):
            q.enqueue_many(ping.call(i) for i in range(burst // 20))
            time.sleep(max(0.0, t0 + (k + 1) * 0.05 - time.monotonic()))
        sent = [e.id for e in q.events(after=start, limit=1_000_000)]
        deadline = time.monotonic() + 30
        last = sent[-1] if sent else start
        while any(not ids or ids[-1] < last for ids in clients.ids):
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        delivered_in = time.monotonic() - t0
        burst_cpu = (cpu_seconds(server.pid) - c0) / delivered_in
        complete = sum(1 for ids in clients.ids if [i for i in ids if i > start] == sent)
        clients.close()
        q.close()
        return {
            "idle_cpu_share": idle_share,
            "burst_events": len(sent),
            "burst_delivered_s": delivered_in,
            "burst_cpu_share": burst_cpu,
            "clients_complete": complete,
            "clients": n_clients,
        }
    finally:
        server.terminate()
        server.wait(30)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=1_000_000)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--idle", type=float, default=10.0, help="seconds of idle streams measured")
    p.add_argument("--burst", type=int, default=1000, help="events in the one-second burst")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--dir", default=os.environ.get("TMPDIR", "/tmp"))
    p.add_argument("--quick", action="store_true", help="fewer repeats and a short idle (the test in benches/)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.repeat, args.idle = 1, 0.5
    from ferroq.web import create_app

    path = Path(args.dir) / f"ferroq-dashboard-bench-{args.tasks}.db"
    make_file(path, args.tasks)
    q = ferroq.Queue(path, durability="normal")
    app = create_app(q)
    times = timed_calls(app, pages(q), args.repeat)
    times["overview computed (shared by all requests, at most every 0.5 s)"] = uncached_overview(app, args.repeat)
    q.close()
    result: dict[str, Any] = {
        "tasks": args.tasks,
        "ms": times,
        "streams": streams(path, args.clients, args.idle, args.burst),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return result
    print(f"dashboard with {args.tasks:,} tasks: server-side ms (median of {args.repeat})")
    for path_, ms in times.items():
        print(f"  {ms:8.1f}  {path_}")
    s = result["streams"]
    print(f"{s['clients']} idle event streams: {s['idle_cpu_share'] * 100:.1f}% of a core")
    print(
        f"burst of {s['burst_events']} events in 1 s: all delivered to {s['clients_complete']} of {s['clients']} "
        f"streams within {s['burst_delivered_s']:.2f}s of its start, {s['burst_cpu_share'] * 100:.0f}% of a core"
    )
    return result


if __name__ == "__main__":
    main()
