"""Deployment safety, through the real ``ferroq`` executable: a worker started in the wrong
directory, ``--db`` on ``worker``, another application's SQLite file, unknown queues and
groups, ``ferroq workers``, ``ferroq circuit`` and ``ferroq group forget``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import ferroq
from procs import child_env, sqlite3_probe, wait_until

# Real worker processes: seconds each (`pytest -m 'not slow'` skips them).
pytestmark = pytest.mark.slow

FERROQ = str(Path(sys.executable).with_name("ferroq"))

APP = """
import os, time
import ferroq

queue = ferroq.Queue("shop.db", durability="normal")

@queue.task(name="add")
def add(a: int, b: int) -> int:
    return a + b

@queue.task(name="hold")
def hold(marker: str) -> str:
    while not os.path.exists(marker):
        time.sleep(0.02)
    return "released"
"""


def cli(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed ``ferroq`` script, as a user runs it."""
    return subprocess.run([FERROQ, *args], cwd=cwd, env=child_env(env), capture_output=True, text=True, timeout=120)


def cli_json(cwd: Path, *args: str) -> Any:
    done = cli(cwd, *args, "-o", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """``shop/tasks.py`` declaring ``ferroq.Queue("shop.db")`` (relative to the working
    directory), and an empty ``elsewhere/`` to start workers from."""
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "__init__.py").write_text("")
    (tmp_path / "shop" / "tasks.py").write_text(textwrap.dedent(APP))
    (tmp_path / "elsewhere").mkdir()
    return tmp_path


def app_env(app: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(app), child_env()["PYTHONPATH"]])}


def enqueue_adds(db: Path, n: int) -> ferroq.Queue:
    q = ferroq.Queue(db, durability="normal")
    add = q.task(name="add")(lambda a, b: a + b)
    q.enqueue_many([add.call(i, 1) for i in range(n)])
    return q


# -- the worker's database -------------------------------------------------------------------


def test_a_worker_refuses_to_create_a_database_in_the_wrong_directory(app: Path) -> None:
    elsewhere = app / "elsewhere"
    done = cli(elsewhere, "worker", "shop.tasks:queue", "--until-empty", env=app_env(app))
    assert done.returncode == 3, done.stderr
    assert f"no database at {elsewhere / 'shop.db'}" in done.stderr
    assert f"working directory {elsewhere}" in done.stderr and "--create" in done.stderr
    assert "Traceback" not in done.stderr
    assert list(elsewhere.iterdir()) == [], "nothing created"
    created = cli(elsewhere, "worker", "shop.tasks:queue", "--until-empty", "--create", env=app_env(app))
    assert created.returncode == 0, created.stderr
    assert f"creating a new empty queue database at {elsewhere / 'shop.db'}" in created.stderr
    assert f"started on {elsewhere / 'shop.db'}" in created.stderr, "the absolute path is logged"
    assert (elsewhere / "shop.db").is_file()


def test_a_worker_in_the_right_directory_runs_as_before(app: Path) -> None:
    q = enqueue_adds(app / "shop.db", 5)
    done = cli(app, "worker", "shop.tasks:queue", "--until-empty", env=app_env(app))
    assert done.returncode == 0, done.stderr
    assert q.counts()["completed"] == 5


@pytest.mark.parametrize("where", ["command", "group", "env"])
def test_db_on_worker_opens_the_modules_queue_at_that_file(app: Path, where: str) -> None:
    real = app / "data" / "queue.db"
    real.parent.mkdir()
    q = enqueue_adds(real, 6)
    elsewhere = app / "elsewhere"
    args = ["worker", "shop.tasks:queue", "--until-empty"]
    env = app_env(app)
    if where == "command":
        args += ["--db", str(real)]
    elif where == "group":
        args = ["--db", str(real), *args]
    else:
        env["FERROQ_DB"] = str(real)
    done = cli(elsewhere, *args, env=env)
    assert done.returncode == 0, done.stderr
    assert q.counts()["completed"] == 6
    assert f"opening the queue at {real} (--db), not at {elsewhere / 'shop.db'}" in done.stderr
    assert list(elsewhere.iterdir()) == [], "the module's own path was never opened"


def test_db_on_a_process_pool_worker_reaches_its_children(app: Path) -> None:
    """The children import the module again (to find the processors): they must open the
    --db file too, not create shop.db in the working directory."""
    real = app / "queue.db"
    q = enqueue_adds(real, 4)
    elsewhere = app / "elsewhere"
    done = cli(
        elsewhere,
        "worker",
        "shop.tasks:queue",
        "--until-empty",
        "--processes",
        "2",
        "--db",
        str(real),
        env=app_env(app),
    )
    assert done.returncode == 0, done.stderr
    assert sorted(t.result for t in q.list(status="completed")) == [1, 2, 3, 4]
    assert list(elsewhere.iterdir()) == []


# -- another application's SQLite file -------------------------------------------------------

FOREIGN = """
import sqlite3, sys
con = sqlite3.connect(sys.argv[1])
con.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
con.execute("INSERT INTO users (name) VALUES ('ada')")
con.commit()
con.close()
"""


def make_foreign(path: Path) -> None:
    subprocess.run([sys.executable, "-c", FOREIGN, str(path)], check=True, timeout=60)


def schema(tmp_path: Path, db: Path) -> list[Any]:
    return sqlite3_probe(tmp_path, db, {"s": "SELECT type, name FROM sqlite_master ORDER BY name"})["s"]


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["list"],
        ["stats"],
        ["health"],
        ["events"],
        ["workers"],
        ["pause", "g", "--create"],
        ["group", "forget", "g"],
    ],
)
def test_a_foreign_sqlite_file_is_refused_and_left_untouched(tmp_path: Path, args: list[str]) -> None:
    db = tmp_path / "app.sqlite"
    make_foreign(db)
    before = db.read_bytes()
    done = cli(tmp_path, "--db", str(db), *args)
    assert done.returncode == 3, done.stderr
    assert "is not a ferroq database" in done.stderr and "users" in done.stderr
    assert "Traceback" not in done.stderr
    assert schema(tmp_path, db) == [["table", "users"]]
    assert db.read_bytes() == before


def test_queue_refuses_a_foreign_file_with_a_typed_error(tmp_path: Path) -> None:
    db = tmp_path / "app.sqlite"
    make_foreign(db)
    with pytest.raises(ferroq.ForeignDatabase, match="not a ferroq database"):
        ferroq.Queue(db)
    assert isinstance(ferroq.ForeignDatabase("x"), ferroq.StorageError)
    assert schema(tmp_path, db) == [["table", "users"]]


def test_an_empty_file_or_an_empty_sqlite_database_is_still_initialised(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    no_tables = tmp_path / "none.db"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('PRAGMA user_version = 7'); c.close()",
            str(no_tables),
        ],
        check=True,
        timeout=60,
    )
    for db in (empty, no_tables):
        q = ferroq.Queue(db)
        assert q.counts()["pending"] == 0
        q.close()
        assert ["table", "tasks"] in schema(tmp_path, db)


# -- unknown queues and groups ---------------------------------------------------------------


@pytest.fixture
def shop_db(tmp_path: Path) -> Path:
    db = tmp_path / "shop.db"
    q = ferroq.Queue(db, durability="normal")
    charge = q.task(name="charge", resource_group="api")(lambda: None)
    charge.enqueue()
    q.close()
    return db


def test_pausing_an_unknown_group_or_queue_is_refused_unless_created(shop_db: Path, tmp_path: Path) -> None:
    done = cli(tmp_path, "--db", str(shop_db), "pause", "apii")
    assert done.returncode == 4 and "no group 'apii'" in done.stderr and "'api'" in done.stderr
    done = cli(tmp_path, "--db", str(shop_db), "pause", "--queue", "defualt")
    assert done.returncode == 4 and "no queue 'defualt'" in done.stderr and "'default'" in done.stderr
    q = ferroq.Queue(shop_db)
    assert [g.name for g in q.groups()] == ["api"] and q.queue_names() == ["default"], "nothing stored"
    assert cli(tmp_path, "--db", str(shop_db), "pause", "api").returncode == 0, "a group with tasks exists"
    assert cli(tmp_path, "--db", str(shop_db), "resume", "nosuch").returncode == 4
    assert cli(tmp_path, "--db", str(shop_db), "pause", "later", "--create").returncode == 0
    assert q.group("later").paused
    assert cli(tmp_path, "--db", str(shop_db), "pause", "--queue", "emails", "--create").returncode == 0
    assert q.queue_names() == ["default", "emails"]
    assert cli(tmp_path, "--db", str(shop_db), "resume", "--queue", "emails").returncode == 0
    assert q.queue_names() == ["default"], "a resumed queue with nothing in it leaves nothing behind"


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["list"],
        ["stats"],
        ["health"],
        ["events"],
        ["workers"],
        ["inspect", "1"],
        ["cancel", "1"],
        ["retry", "--all-dead"],
        ["purge", "--status", "dead", "-y"],
        ["export"],
        ["resume"],
        ["circuit", "open", "api"],
        ["group", "forget", "api"],
    ],
)
def test_a_queue_that_does_not_exist_is_exit_4_on_every_command(shop_db: Path, tmp_path: Path, args: list[str]) -> None:
    done = cli(tmp_path, "--db", str(shop_db), "--queue", "nosuchq", *args)
    assert done.returncode == 4, (done.stdout, done.stderr)
    assert "no queue 'nosuchq'" in done.stderr and "Traceback" not in done.stderr
    assert ferroq.Queue(shop_db).queue_names() == ["default"]


def test_forgetting_a_group(shop_db: Path, tmp_path: Path) -> None:
    q = ferroq.Queue(shop_db)
    q.group("api", throttle=ferroq.Throttle(max_concurrency=1)).pause()
    done = cli(tmp_path, "--db", str(shop_db), "group", "forget", "api")
    assert done.returncode == 1 and "1 pending" in done.stderr, done.stderr
    assert q.group("api").state().paused and q.group("api").state().max_concurrency == 1
    with pytest.raises(ferroq.InvalidTransition, match="pending"):
        q.group("api").forget()
    assert cli_json(tmp_path, "--db", str(shop_db), "group", "forget", "api", "--force") == {
        "queue": "default",
        "group": "api",
        "forgotten": True,
    }
    state = q.group("api").state()
    assert not state.paused and state.max_concurrency is None and state.pending == 1
    q.group("typo").pause()
    assert [g.name for g in q.groups()] == ["api", "typo"]
    assert q.group("typo").forget() is True and q.group("typo").forget() is False
    assert [g.name for g in q.groups()] == ["api"], "gone (from status and Prometheus too)"
    assert [e.kind for e in q.events(group="typo")][-1] == "group_forgotten"


# -- circuit and workers ---------------------------------------------------------------------


def test_circuit_open_close_and_reset_by_hand(shop_db: Path, tmp_path: Path) -> None:
    q = ferroq.Queue(shop_db)
    out = cli_json(tmp_path, "--db", str(shop_db), "circuit", "open", "api", "--for", "60s", "--reason", "deploy")
    assert out == {"queue": "default", "group": "api", "action": "open", "state": "open"}
    state = q.group("api").state()
    assert state.circuit == "open" and state.open_until is not None
    assert q.circuit("api").transitions()[-1].detail["reason"].endswith("deploy")
    ferroq.Worker(q, handle_signals=False).run(until_idle=True)
    assert q.counts()["pending"] == 1, "an open circuit holds the group's tasks"
    assert cli(tmp_path, "--db", str(shop_db), "circuit", "close", "api").returncode == 0
    assert q.circuit("api").state == "closed"
    assert cli(tmp_path, "--db", str(shop_db), "circuit", "reset", "api").returncode == 0
    assert cli(tmp_path, "--db", str(shop_db), "circuit", "close", "api", "--for", "1m").returncode == 2
    assert cli(tmp_path, "--db", str(shop_db), "circuit", "open", "nosuch").returncode == 4
    assert cli(tmp_path, "--db", str(shop_db), "circuit", "open", "nosuch", "--create").returncode == 0
    assert q.circuit("nosuch").state == "open"


def test_workers_lists_live_and_stopped_workers(app: Path) -> None:
    db = app / "shop.db"
    q = ferroq.Queue(db, durability="normal")
    hold = q.task(name="hold")(lambda marker: marker)
    marker = app / "release"
    hold.enqueue(str(marker))
    log = open(app / "worker.log", "w")
    worker = subprocess.Popen(
        [FERROQ, "worker", "shop.tasks:queue", "--until-empty", "--concurrency", "3"],
        cwd=app,
        env=child_env(app_env(app)),
        stderr=log,
    )
    try:
        live = wait_until(
            lambda: [w for w in cli_json(app, "--db", str(db), "workers") if w["alive"] and w["running"] == 1],
            60,
            "a live worker running one task",
        )
        w = live[0]
        assert w["pid"] == worker.pid and w["concurrency"] == 3 and w["pool"] == "thread"
        assert w["hostname"] and w["started_at"] and w["last_seen"] and w["stopped_at"] is None
        table = cli(app, "--db", str(db), "workers")
        assert table.returncode == 0 and str(worker.pid) in table.stdout and "alive" in table.stdout
        marker.touch()
        assert worker.wait(60) == 0, (app / "worker.log").read_text()
    finally:
        marker.touch()
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        log.close()
    after = cli_json(app, "--db", str(db), "workers")
    assert len(after) == 1 and not after[0]["alive"] and after[0]["stopped_at"] and after[0]["running"] == 0
    assert "stopped" in cli(app, "--db", str(db), "workers").stdout
