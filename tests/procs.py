"""Helpers for tests that run ferroq in real child processes.

A test writes a small Python script (``Procs.script``), starts it with this interpreter
(``Procs.start``) and reads what it printed. Every child's stdout and stderr go to files
in the test's tmp_path (never pipes: a chatty child can't block on a full pipe, and a
killed child's output is still there). The ``procs`` fixture kills whatever is left
running when the test ends, pass or fail.

Scripts get a prelude: ``import json, os, signal, sys, time, logging, ferroq``, logging
of warnings to stderr, and ``wait_for_file(path)`` for file barriers between processes.

Never open a queue file with Python's ``sqlite3`` in the test process itself while ferroq
has it open there: two SQLite libraries in one process don't see each other's POSIX locks.
Use ``sqlite3_probe`` (a subprocess) instead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pytest

import ferroq

#: The directory holding the ``ferroq`` package, for the children's PYTHONPATH.
PACKAGE_ROOT = str(Path(ferroq.__file__).resolve().parent.parent)

PRELUDE = '''\
import json, os, signal, sys, time, logging
import ferroq

logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                    format="%(levelname)s %(name)s[%(process)d]: %(message)s")


def wait_for_file(path, timeout=60.0):
    """Barrier: returns once `path` exists."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {path}")
        time.sleep(0.001)


def touch(path):
    with open(path, "a"):
        pass


def emit(obj):
    """One JSON line on stdout, flushed at once."""
    sys.stdout.write(json.dumps(obj) + "\\n")
    sys.stdout.flush()

'''


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"
    env.pop("PYTEST_CURRENT_TEST", None)
    if extra:
        env.update(extra)
    return env


class Child:
    """One started script."""

    def __init__(self, label: str, popen: subprocess.Popen[bytes], out: Path, err: Path) -> None:
        self.label = label
        self.popen = popen
        self.out_path = out
        self.err_path = err

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def lines(self) -> list[str]:
        """Complete stdout lines (a line cut short by a kill is left out)."""
        text = self.stdout()
        if not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
        return [line for line in text.split("\n") if line]

    def records(self) -> list[Any]:
        """Every complete stdout line parsed as JSON."""
        return [json.loads(line) for line in self.lines()]

    def last(self) -> Any:
        """The last complete stdout line as JSON."""
        lines = self.lines()
        assert lines, f"{self.describe()} printed nothing"
        return json.loads(lines[-1])

    def send(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL (works on a stopped process too) and reap."""
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a kill that did not take
            pass

    def wait(self, timeout: float) -> int:
        """Waits for exit; fails the test (with the child's stderr) if it is still running."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.label} (pid {self.pid}) still running after {timeout}s\n{self.describe()}")

    def check(self, timeout: float) -> Child:
        """Waits for exit and asserts it exited 0."""
        rc = self.wait(timeout)
        assert rc == 0, f"{self.label} exited with {rc}\n{self.describe()}"
        return self

    def describe(self) -> str:
        err = self.stderr() if self.err_path.exists() else ""
        out = self.stdout() if self.out_path.exists() else ""
        return (
            f"--- {self.label} pid={self.pid} rc={self.popen.poll()}\n"
            f"--- stderr (tail):\n{err[-4000:]}\n--- stdout (tail):\n{out[-1500:]}"
        )


class Procs:
    """Writes scripts and starts them; ``close`` kills every child still running."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.children: list[Child] = []
        self._counter = 0

    def script(self, name: str, body: str) -> Path:
        """Writes PRELUDE + body (dedented) to ``<dir>/<name>.py``.

        Written to a temporary file and renamed into place: tests start several children
        of one script, writing it again before each, and a child that opened it between
        the truncation and the write ran an empty script and exited 0 having done nothing
        (CI: one enqueuer of three printed no record).
        """
        path = self.dir / f"{name}.py"
        staging = path.with_name(f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
        staging.write_text(PRELUDE + textwrap.dedent(body))
        os.replace(staging, path)
        return path

    def start(
        self,
        script: Path,
        *args: Any,
        label: str | None = None,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> Child:
        """Starts ``script``; ``prefix`` runs it through a wrapper that execs it (same pid), e.g.
        ``netns.Hosts.exec_prefix(i)`` to start it on another network host."""
        self._counter += 1
        label = label or f"{Path(script).stem}-{self._counter}"
        out = self.dir / f"{label}.out"
        err = self.dir / f"{label}.err"
        with open(out, "wb") as fout, open(err, "wb") as ferr:
            popen = subprocess.Popen(
                [*prefix, sys.executable, str(script), *map(str, args)],
                stdin=subprocess.DEVNULL,
                stdout=fout,
                stderr=ferr,
                env=child_env(env),
                cwd=str(self.dir),
            )
        child = Child(label, popen, out, err)
        self.children.append(child)
        return child

    def run(self, script: Path, *args: Any, timeout: float = 60, label: str | None = None) -> Child:
        """Starts a script and waits for it to exit 0."""
        return self.start(script, *args, label=label).check(timeout)

    def close(self) -> None:
        for child in self.children:
            if child.alive():
                try:
                    os.kill(child.pid, signal.SIGCONT)  # harmless if it is not stopped
                except ProcessLookupError:
                    pass
            child.kill()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    """A ``Procs`` writing into tmp_path; kills leftover children at teardown."""
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.close()


def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.02,
    children: list[Child] | tuple[Child, ...] = (),
) -> Any:
    """Polls ``predicate`` until truthy; fails the test (showing ``children``) after ``timeout`` s.
    A child that exits non-zero while waiting fails the test early."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        for child in children:
            rc = child.returncode
            if rc is not None and rc != 0:
                pytest.fail(f"while waiting for {what}: {child.label} exited with {rc}\n{child.describe()}")
        if time.monotonic() > deadline:
            detail = "\n".join(c.describe() for c in children)
            pytest.fail(f"timed out after {timeout}s waiting for {what}\n{detail}")
        time.sleep(interval)


SQLITE3_PROBE = """\
import json, sqlite3, sys
path, queries = sys.argv[1], json.loads(sys.argv[2])
with open(path, "rb") as f:
    header = f.read(100)
con = sqlite3.connect(path, timeout=30)
out = {"header_write_version": header[18], "header_read_version": header[19]}
for key, sql in queries.items():
    out[key] = con.execute(sql).fetchall()
con.close()
print(json.dumps(out))
"""


def sqlite3_probe(
    directory: Path, db: str | os.PathLike[str], queries: dict[str, str], timeout: float = 30
) -> dict[str, Any]:
    """Runs SQL with Python's own sqlite3 in a *separate process*; returns
    ``{key: rows}`` plus the file header's write/read format versions (2 = WAL)."""
    script = Path(directory) / "sqlite3_probe.py"
    if not script.exists():
        script.write_text(SQLITE3_PROBE)
    done = subprocess.run(
        [sys.executable, str(script), os.fspath(db), json.dumps(queries)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
    )
    assert done.returncode == 0, f"sqlite3 probe failed:\n{done.stderr}"
    return json.loads(done.stdout)  # type: ignore[no-any-return]
