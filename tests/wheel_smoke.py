"""Smoke test of an installed ferroq wheel, run by ``make wheel-smoke`` with the Python of a
fresh venv the wheel was installed into (not collected by pytest): the package and its
``ferroq`` script come from that venv; tasks are enqueued, a ``ferroq worker`` drains them
until empty, and the results are read back."""

import os
import subprocess
import sys
import tempfile

import ferroq

APP = """
import ferroq

queue = ferroq.Queue("smoke.db")

@queue.task(name="add")
def add(a, b):
    return a + b
"""

installed = os.path.realpath(ferroq.__file__)
assert installed.startswith(os.path.realpath(sys.prefix)), f"ferroq imported from {installed}, not the venv"
script = os.path.join(sys.prefix, "bin", "ferroq")

with tempfile.TemporaryDirectory() as d:
    with open(os.path.join(d, "smoke_app.py"), "w") as f:
        f.write(APP)
    q = ferroq.Queue(os.path.join(d, "smoke.db"))
    add = q.task(name="add")(lambda a, b: a + b)
    handles = [add.enqueue(i, 1) for i in range(20)]
    worker = subprocess.run(
        [script, "worker", "smoke_app:queue", "--until-empty", "--concurrency", "4", "--log-level", "warning"],
        cwd=d,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert worker.returncode == 0, worker.stderr
    assert [h.result(timeout=10) for h in handles] == list(range(1, 21))
    assert q.counts()["completed"] == 20
    status = subprocess.run(
        [script, "--db", os.path.join(d, "smoke.db"), "status", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    q.close()

print(f"ferroq {ferroq.__version__} wheel on Python {sys.version.split()[0]}: ok")
