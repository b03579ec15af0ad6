"""Odd inputs at the edges of the API: each gets a typed ferroq error naming what is wrong,
and nothing is written (issue 12, "typed errors and odd paths")."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import CliRunner

import ferroq
from ferroq.cli import main
from procs import child_env, sqlite3_probe
from test_cli_worker import make_app

EMPTY = {status: 0 for status in ferroq.STATUSES}

# -- text that cannot be UTF-8 ----------------------------------------------------------------
# A lone surrogate is a valid Python str but not Unicode text: it reaches Python from
# os.fsdecode / sys.argv of non-UTF-8 bytes ("\udcff") or from bad escapes ("\ud800").

LONE = "t\ud800"


def _task(q: ferroq.Queue) -> Any:
    @q.task(name="job")
    def job() -> None:
        pass

    return job


ENTRY_POINTS: dict[str, tuple[str, Callable[[ferroq.Queue, Path], Any]]] = {
    "task-decorator-name": ("task name", lambda q, p: q.task(name=LONE)(lambda: None)),
    "queue-name": ("queue name", lambda q, p: ferroq.Queue(p, name=LONE)),
    "queue-group": ("group name", lambda q, p: q.group(LONE)),
    "decorator-resource-group": ("resource_group", lambda q, p: q.task(name="x", resource_group=LONE)(lambda: None)),
    "using-resource-group": ("resource_group", lambda q, p: _task(q).using(resource_group=LONE).enqueue()),
    "using-unique-key": ("unique_key", lambda q, p: _task(q).using(unique_key=LONE).enqueue()),
    "bound-using-unique-key": ("unique_key", lambda q, p: _task(q).using(priority=1).using(unique_key=LONE)),
    "task-options-unique-key": ("unique_key", lambda q, p: ferroq.TaskOptions(unique_key=LONE)),
    "enqueue-many-task-call": (
        "task name",
        lambda q, p: q.enqueue_many([ferroq.TaskCall(LONE, b'{"args":[],"kwargs":{}}', _task(q).options)]),
    ),
    "worker-groups": ("group name", lambda q, p: ferroq.Worker(q, groups=["ok", LONE])),
    "worker-name": ("worker name", lambda q, p: ferroq.Worker(q, name=LONE)),
    "circuit": ("group name", lambda q, p: q.circuit(LONE)),
    "list-name": ("name", lambda q, p: q.list(name=LONE)),
    "list-group": ("group", lambda q, p: q.list(group=LONE)),
    "count-finished-name": ("name", lambda q, p: q.count_finished("dead", name=LONE)),
    "purge-group": ("group", lambda q, p: q.purge("dead", group=LONE)),
    "retry-dead-name": ("name", lambda q, p: q.retry_dead(name=LONE)),
    "cancel-pending-name": ("name", lambda q, p: q.cancel_pending(name=LONE)),
    "count-pending-group": ("group", lambda q, p: q.count_pending(group=LONE)),
    "events-group": ("group", lambda q, p: q.events(group=LONE)),
}


@pytest.mark.parametrize("argument, call", list(ENTRY_POINTS.values()), ids=list(ENTRY_POINTS))
def test_a_lone_surrogate_is_an_invalid_argument_naming_it(
    queue: ferroq.Queue, tmp_path: Path, argument: str, call: Callable[[ferroq.Queue, Path], Any]
) -> None:
    with pytest.raises(ferroq.InvalidArgument) as caught:
        call(queue, tmp_path / "other.db")
    message = str(caught.value)
    assert message.startswith(f"{argument} "), message
    assert "surrogate" in message, message
    assert queue.counts() == EMPTY
    assert not (tmp_path / "other.db").exists()


def test_a_path_that_cannot_be_a_file_name(tmp_path: Path) -> None:
    with pytest.raises(ferroq.DatabasePathError) as caught:
        ferroq.Queue(tmp_path / "q\ud800.db")
    assert "\\ud800" in str(caught.value)
    assert os.listdir(tmp_path) == []


def test_a_file_name_decoded_from_non_utf8_bytes_is_a_usable_path(tmp_path: Path) -> None:
    # "\udcff" is how Python spells the byte 0xff of a file name: it round-trips.
    path = tmp_path / os.fsdecode(b"q\xff.db")
    q = ferroq.Queue(path, durability="normal")
    assert q.counts() == EMPTY
    q.close()
    assert os.listdir(os.fsencode(tmp_path)) == [b"q\xff.db"]


def test_cli_arguments_holding_undecodable_bytes(queue: ferroq.Queue, db_path: Path) -> None:
    """A real process with non-UTF-8 bytes in argv (Python decodes them to lone surrogates):
    a usage error naming the argument, not a traceback."""
    queue.close()
    for args in ([b"--queue", b"q\xff", b"status"], [b"list", b"--name", b"n\xff"], [b"list", b"--group", b"g\xff"]):
        done = subprocess.run(
            [os.fsencode(sys.executable), b"-m", b"ferroq.cli", b"--db", os.fsencode(db_path), *args],
            env=child_env(),
            capture_output=True,
            timeout=60,
        )
        stderr = done.stderr.decode("utf-8", "replace")
        assert done.returncode == 2, (args, stderr)
        assert "surrogate" in stderr and "Traceback" not in stderr, (args, stderr)


def test_cli_in_process_with_a_surrogate(queue: ferroq.Queue, db_path: Path) -> None:
    result = CliRunner().invoke(main, ["--db", str(db_path), "purge", "--status", "dead", "--name", LONE, "--yes"])
    assert result.exit_code == 2, result.output
    assert "name" in result.output and "surrogate" in result.output


def test_a_progress_message_with_a_surrogate(queue: ferroq.Queue) -> None:
    seen: list[BaseException] = []

    @queue.task(name="job", max_attempts=1)
    def job() -> None:
        try:
            ferroq.current_task().progress(0.5, LONE)
        except BaseException as e:  # noqa: BLE001 - the test inspects whatever was raised
            seen.append(e)

    h = job.enqueue()
    ferroq.Worker(queue, concurrency=1, handle_signals=False).run(until_idle=True)
    assert h.status() == "completed"
    assert len(seen) == 1 and isinstance(seen[0], ferroq.InvalidArgument), seen
    assert str(seen[0]).startswith("progress message ")


def _drain_in_thread(q: ferroq.Queue) -> bool:
    """Runs a worker until idle; True if it finished within 30 s (stopped otherwise)."""
    worker = ferroq.Worker(q, concurrency=1, handle_signals=False)
    thread = threading.Thread(target=worker.run, kwargs={"until_idle": True}, daemon=True)
    thread.start()
    thread.join(30)
    finished = not thread.is_alive()
    if not finished:
        worker.stop()
        thread.join(30)
    return finished


def test_an_exception_carrying_a_lone_surrogate_is_stored_escaped(queue: ferroq.Queue) -> None:
    """The stored error must be UTF-8: the message of a processor's exception (a file name
    from os.fsdecode...) used to kill the runner thread while recording the failure, and the
    worker waited for the lost run forever."""

    @queue.task(name="job", max_attempts=1)
    def job() -> None:
        raise ValueError(f"cannot read {LONE}")

    h = job.enqueue()
    assert _drain_in_thread(queue), "the worker never recorded the failure"
    info = queue.get(h.id)
    assert info.status == "dead"
    assert info.last_error is not None
    assert info.last_error.message == "cannot read t\\ud800"
    assert "ValueError: cannot read t\\ud800" in (info.last_error.traceback or "")


# -- using() options ---------------------------------------------------------------------------


@pytest.mark.parametrize("bound", [False, True], ids=["task", "bound-task"])
def test_an_unknown_using_option_is_an_invalid_argument_listing_the_options(queue: ferroq.Queue, bound: bool) -> None:
    job = _task(queue)
    target = job.using(priority=1) if bound else job
    with pytest.raises(ferroq.InvalidArgument) as caught:
        target.using(colour="red")
    message = str(caught.value)
    assert "'colour'" in message, message
    for option in ("delay", "max_attempts", "priority", "resource_group", "run_at", "unique_key"):
        assert option in message, message
    assert queue.counts() == EMPTY


# -- seconds arguments ------------------------------------------------------------------------

BAD_SECONDS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "negative": -1, "str": "1", "bool": True}


@pytest.mark.parametrize("value", list(BAD_SECONDS.values()), ids=list(BAD_SECONDS))
def test_result_timeout_must_be_a_finite_number_of_seconds(queue: ferroq.Queue, value: Any) -> None:
    """result(timeout=nan) waited forever (NaN compares false to every deadline)."""
    handle = _task(queue).enqueue()
    outcome: dict[str, BaseException] = {}

    def wait() -> None:
        try:
            handle.result(timeout=value)
        except BaseException as e:  # noqa: BLE001
            outcome["error"] = e

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), f"result(timeout={value!r}) is still waiting"
    assert isinstance(outcome.get("error"), ferroq.InvalidArgument), outcome
    assert str(outcome["error"]).startswith("timeout ")


@pytest.mark.parametrize("value", list(BAD_SECONDS.values()), ids=list(BAD_SECONDS))
def test_subscription_close_timeout_is_checked(queue: ferroq.Queue, value: Any) -> None:
    subscription = queue.subscribe(lambda event: None)
    try:
        with pytest.raises(ferroq.InvalidArgument):
            subscription.close(value)
    finally:
        subscription.close()


@pytest.mark.parametrize("value", list(BAD_SECONDS.values()), ids=list(BAD_SECONDS))
def test_retry_delays_are_checked(value: Any) -> None:
    with pytest.raises(ferroq.InvalidArgument):
        ferroq.Retry(delay=value)
    with pytest.raises(ferroq.InvalidArgument):
        ferroq.RateLimited(value)


def test_a_processor_raising_retry_with_an_infinite_delay_fails_its_run(queue: ferroq.Queue) -> None:
    """Retry(delay=inf) used to pass its check, then kill the runner thread (OverflowError
    turning it into milliseconds): the worker waited for the lost run forever."""

    @queue.task(name="job", max_attempts=1)
    def job() -> None:
        raise ferroq.Retry(delay=math.inf)

    h = job.enqueue()
    assert _drain_in_thread(queue), "the worker never recorded the run"
    info = queue.get(h.id)
    assert info.status == "dead"
    assert info.last_error is not None and "Retry delay" in info.last_error.message


def test_subscribe_after_is_checked(queue: ferroq.Queue) -> None:
    for after in (-1, 1.5, "3"):
        with pytest.raises(ferroq.InvalidArgument):
            queue.subscribe(lambda event: None, after=after)  # type: ignore[arg-type]


# -- paths SQLite does not read as file names ----------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [":memory:", "file:q.db?mode=memory", "file:q.db", "", "file::memory:"],
    ids=["memory", "uri-memory", "uri", "empty", "uri-shared-memory"],
)
def test_a_path_sqlite_would_not_read_as_a_file_is_refused_before_anything_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """Queue(":memory:") used to leave an empty 0600 file named ":memory:" and fail with a
    generic StorageError (WAL cannot be set in memory); "file:..." opened a URI."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ferroq.DatabasePathError) as caught:
        ferroq.Queue(path)
    assert "give" in str(caught.value)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", [":memory:", "file:q.db"])
def test_the_same_names_as_plain_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.chdir(tmp_path)
    q = ferroq.Queue(f"./{name}", durability="normal")
    assert q.counts() == EMPTY
    q.close()
    assert (tmp_path / name).is_file()


# -- a worker on a damaged file ------------------------------------------------------------------

PAGE = 4096
DAMAGED_TASKS = 3000


def table_leaves(db: bytes, root: int) -> list[int]:
    """The leaf pages of the table b-tree rooted at page ``root``, in key order, read from the
    file's bytes (SQLite's file format: interior table pages are type 5, leaves type 13)."""
    start = (root - 1) * PAGE
    header = start + (100 if root == 1 else 0)
    kind = db[header]
    if kind == 13:
        return [root]
    assert kind == 5, f"page {root} is not a table b-tree page (type {kind})"
    cells = int.from_bytes(db[header + 3 : header + 5], "big")
    pointers = [int.from_bytes(db[header + 12 + 2 * i : header + 14 + 2 * i], "big") for i in range(cells)]
    children = [int.from_bytes(db[start + p : start + p + 4], "big") for p in pointers]
    children.append(int.from_bytes(db[header + 8 : header + 12], "big"))  # the right-most child
    return [leaf for child in children for leaf in table_leaves(db, child)]


@pytest.fixture(scope="module")
def damaged_tasks_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed queue file of DAMAGED_TASKS pending tasks with garbage over the last leaf pages
    of the tasks table (the first tasks' rows intact): Queue() opens it, quick_check does not
    pass it."""
    directory = tmp_path_factory.mktemp("damaged")
    path = directory / "queue.db"
    script = f"""
import ferroq
q = ferroq.Queue({str(path)!r}, durability="normal")
@q.task(name="job")
def job(x): return x
q.enqueue_many(job.call(i) for i in range({DAMAGED_TASKS}))
q.close()
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120, env=child_env())
    assert sorted(os.listdir(directory)) == ["queue.db"], "the subprocess left the file open"
    root = sqlite3_probe(directory, path, {"root": "SELECT rootpage FROM sqlite_master WHERE name = 'tasks'"})
    ((root_page,),) = root["root"]
    (directory / "sqlite3_probe.py").unlink()
    content = bytearray(path.read_bytes())
    leaves = table_leaves(bytes(content), root_page)
    assert len(leaves) >= 6, leaves
    for page in leaves[-3:]:
        content[(page - 1) * PAGE : page * PAGE] = b"\xde\xad\xbe\xef" * (PAGE // 4)
    path.write_bytes(bytes(content))
    return path


@pytest.fixture
def damaged_copy(damaged_tasks_db: Path, tmp_path: Path) -> Path:
    path = tmp_path / "queue.db"
    path.write_bytes(damaged_tasks_db.read_bytes())
    return path


def test_a_worker_refuses_a_damaged_file_before_running_anything(damaged_copy: Path) -> None:
    """Queue() opens a file whose tasks table is damaged (opening reads only the schema);
    the worker ran the tasks on intact pages, recording their outcomes into the damaged file,
    until a claim hit a bad page. Now Worker.run runs quick_check first and raises
    CorruptDatabase: nothing runs and nothing is written."""
    content = damaged_copy.read_bytes()
    q = ferroq.Queue(damaged_copy, durability="normal")
    assert q.check() != ["ok"]
    ran: list[int] = []

    @q.task(name="job")
    def job(x: int) -> int:
        ran.append(x)
        return x

    with pytest.raises(ferroq.CorruptDatabase) as caught:
        ferroq.Worker(q, concurrency=1, handle_signals=False).run(until_idle=True)
    assert ran == [], f"{len(ran)} tasks ran on the damaged file"
    assert "quick_check" in str(caught.value) and str(damaged_copy) in str(caught.value)
    q.close()
    assert damaged_copy.read_bytes() == content


def test_the_cli_worker_exits_on_a_damaged_file_with_a_message(damaged_copy: Path) -> None:
    (damaged_copy.parent / "app.py").write_text(
        "import ferroq\n"
        f"queue = ferroq.Queue({str(damaged_copy)!r}, durability='normal')\n"
        "@queue.task(name='job')\n"
        "def job(x):\n"
        "    print('ran', x, flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "ferroq.cli", "worker", "app:queue", "--until-idle"],
        cwd=damaged_copy.parent,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 3, done.stderr
    assert "damaged" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "ran" not in done.stdout


# -- the metrics endpoint's address ----------------------------------------------------------------


def _listening_address(port: int) -> str:
    """The local IPv4 address a TCP socket listens on at ``port`` (from /proc/net/tcp)."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if int(hex_port, 16) == port and state == "0A":  # LISTEN
                return ".".join(str(b) for b in reversed(bytes.fromhex(address)))
    raise AssertionError(f"nothing listens on port {port}")


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads listening sockets from /proc/net/tcp")
@pytest.mark.parametrize(
    "host, listens_on", [(None, "0.0.0.0"), ("127.0.0.1", "127.0.0.1")], ids=["default", "loopback"]
)
def test_the_metrics_endpoint_listens_where_told(tmp_path: Path, host: str | None, listens_on: str) -> None:
    db, q = make_app(tmp_path, tmp_path / "app.db")
    q.close()
    args = ["--metrics-port", "0"] + ([] if host is None else ["--metrics-host", host])
    with subprocess.Popen(
        [sys.executable, "-m", "ferroq.cli", "worker", "app:queue", *args],
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stderr is not None
            port = None
            deadline = time.monotonic() + 60
            while port is None and time.monotonic() < deadline:
                found = re.search(r"metrics on http://[^:]+:(\d+)/metrics", proc.stderr.readline())
                port = int(found.group(1)) if found else None
            assert port, "the worker never said where it serves metrics"
            assert _listening_address(port) == listens_on
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)


def test_a_metrics_host_that_cannot_be_bound_is_a_message(tmp_path: Path) -> None:
    make_app(tmp_path, tmp_path / "app.db")[1].close()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ferroq.cli",
            "worker",
            "app:queue",
            "--until-idle",
            "--metrics-port",
            "0",
            "--metrics-host",
            "256.0.0.1",
        ],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "cannot serve metrics on 256.0.0.1" in done.stderr and "Traceback" not in done.stderr, done.stderr
