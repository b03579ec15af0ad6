"""Default task names of functions defined in a script: named as an import of the file
names them, so the script that enqueues and ``ferroq worker module:queue`` that runs agree
(before: ``__main__.resize`` enqueued, ``app.resize`` registered, the task went dead)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ferroq

from procs import child_env

# Real worker processes: seconds each (`pytest -m 'not slow'` skips them).
pytestmark = [pytest.mark.slow, pytest.mark.both_engines]

#: The installed ``ferroq`` console script, next to this interpreter.
FERROQ = str(Path(sys.executable).with_name("ferroq"))

APP = """
import json, sys
import ferroq

q = ferroq.Queue({db!r}, durability="normal")

@q.task
def resize(x: int) -> int:
    return x * 2

if __name__ == "__main__":
    if sys.argv[1:2] == ["work"]:  # the script as the worker
        pool = "process" if "--processes" in sys.argv else "thread"
        ferroq.Worker(q, pool=pool, concurrency=1, handle_signals=False).run(until_idle=True)
    else:
        print(json.dumps({{"name": resize.name, "id": resize.enqueue(21).id}}))
"""


def write_app(path: Path, db: Path | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(APP.format(db=str(db))))


def run(cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def ran(db: Path | str, task_id: int) -> tuple[str, object]:
    with ferroq.Queue(db) as q:
        info = q.get(task_id)
        return info.status, info.result


def test_a_script_run_directly_enqueues_what_ferroq_worker_runs(tmp_path: Path, queue_location: Path | str) -> None:
    db = queue_location
    write_app(tmp_path / "app.py", db)
    enqueued = json.loads(run(tmp_path, sys.executable, "app.py").stdout)
    assert enqueued["name"] == "app.resize"
    run(tmp_path, FERROQ, "worker", "app:q", "--until-idle", "--log-level", "warning")
    assert ran(db, enqueued["id"]) == ("completed", 42)


def test_a_module_run_with_python_m_is_named_by_its_import_path(tmp_path: Path, queue_location: Path | str) -> None:
    db = queue_location
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    write_app(tmp_path / "pkg" / "app.py", db)
    enqueued = json.loads(run(tmp_path, sys.executable, "-m", "pkg.app").stdout)
    assert enqueued["name"] == "pkg.app.resize"
    run(tmp_path, FERROQ, "worker", "pkg.app:q", "--until-idle", "--log-level", "warning")
    assert ran(db, enqueued["id"]) == ("completed", 42)


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_the_script_as_worker_runs_what_an_import_of_it_enqueued(
    tmp_path: Path, queue_location: Path | str, pool: str
) -> None:
    """The reverse: code that imports ``app`` enqueues, ``python app.py work`` runs it (with
    a process pool, whose children import the script as ``__mp_main__``)."""
    db = queue_location
    write_app(tmp_path / "app.py", db)
    enqueued = json.loads(
        run(
            tmp_path,
            sys.executable,
            "-c",
            textwrap.dedent("""
        import json, app
        print(json.dumps({"name": app.resize.name, "id": app.resize.enqueue(21).id}))
    """),
        ).stdout
    )
    assert enqueued["name"] == "app.resize"
    run(tmp_path, sys.executable, "app.py", "work", *(["--processes"] if pool == "process" else []))
    assert ran(db, enqueued["id"]) == ("completed", 42)


def test_a_task_defined_without_a_file_needs_a_name(tmp_path: Path, queue_location: Path | str) -> None:
    """``python -c`` (or an interactive session): no module a worker could import."""
    script = textwrap.dedent(f"""
        import ferroq
        q = ferroq.Queue({str(queue_location)!r})
        try:
            @q.task
            def resize(x): return x
        except ferroq.InvalidArgument as e:
            print(e)
        @q.task(name="app.resize")
        def named(x): return x
        print(named.name)
    """)
    out = run(tmp_path, sys.executable, "-c", script).stdout.splitlines()
    assert "pass one" in out[0] and "name=" in out[0] and "'resize'" in out[0]
    assert out[1] == "app.resize"


def test_tasks_of_imported_modules_keep_their_module_name(queue: ferroq.Queue) -> None:
    @queue.task
    def local() -> None: ...

    assert local.name == f"{__name__}.test_tasks_of_imported_modules_keep_their_module_name.<locals>.local"
