"""Bad input: each raises a typed exception from the ferroq tree and writes nothing.

Damaged files are made with plain file writes; the queue databases are created in a
subprocess so they are fully closed first. This process never opens a queue file with
Python's sqlite3 module (two SQLite copies in one process break each other's locks).
"""

from __future__ import annotations

import gc
import logging
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson
import pytest

import ferroq

# Tests with a queue run on both engines; those about the SQLite file (no file left behind,
# damaged or unreadable files, directories) take db_path or tmp_path and stay SQLite-only.
pytestmark = pytest.mark.both_engines

WAIT = 30.0
EMPTY = {status: 0 for status in ferroq.STATUSES}
PAGE = 4096  # SQLite's default page size, which ferroq keeps

BAD_NAMES = {
    "empty": "",
    "201-bytes": "x" * 201,
    "202-bytes-in-101-chars": "é" * 101,
    "newline": "a\nb",
    "nul": "a\x00b",
    "tab": "a\tb",
    "del": "a\x7fb",
    "c1-control": "a\x85b",
}
GOOD_NAMES = ["x" * 200, "é" * 100, "images.resize", "名前-ok_1"]


def assert_nothing_written(q: ferroq.Queue) -> None:
    assert q.counts() == EMPTY


@pytest.fixture
def add(queue: ferroq.Queue) -> ferroq.Task[Any, int]:
    @queue.task(name="math.add")
    def add(a: int, b: int) -> int:
        return a + b

    return add


# -- enqueue-time input ------------------------------------------------------------------


def test_unknown_task_name(queue: ferroq.Queue, add: Any) -> None:
    with pytest.raises(ferroq.UnknownTaskName) as caught:
        queue.enqueue("math.sub", 1, 2)
    assert isinstance(caught.value, ferroq.UnknownTask)
    assert "math.sub" in str(caught.value)
    with pytest.raises(ferroq.UnknownTaskName):
        queue.enqueue("", 1, 2)
    assert_nothing_written(queue)


@pytest.mark.parametrize(
    "payload, type_name",
    [
        ({1, 2}, "set"),
        ({"nested": [frozenset()]}, "frozenset"),
        (object(), "object"),
        (b"raw bytes", "bytes"),
        (1 + 2j, "complex"),
    ],
    ids=["set", "nested-frozenset", "object", "bytes", "complex"],
)
def test_payload_not_json_serializable(queue: ferroq.Queue, add: Any, payload: Any, type_name: str) -> None:
    with pytest.raises(ferroq.PayloadError) as caught:
        add.enqueue(payload, 1)
    assert type_name in str(caught.value)
    assert "math.add" in str(caught.value)
    assert isinstance(caught.value, ferroq.InvalidArgument) and isinstance(caught.value, ValueError)
    with pytest.raises(ferroq.PayloadError):
        add.call(1, b=payload)
    with pytest.raises(ferroq.PayloadError):
        queue.enqueue("math.add", a=payload, b=1)
    assert_nothing_written(queue)


@pytest.mark.parametrize(
    "payload, fragment",
    [({1: "non-str key"}, "key"), (2**64, "64-bit")],
    ids=["int-dict-key", "int-over-64-bits"],
)
def test_payload_json_cannot_represent(queue: ferroq.Queue, add: Any, payload: Any, fragment: str) -> None:
    with pytest.raises(ferroq.PayloadError) as caught:
        add.enqueue(payload, 1)
    assert fragment in str(caught.value)
    assert_nothing_written(queue)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_payload_non_finite_float_is_refused_not_changed(queue: ferroq.Queue, add: Any, value: float) -> None:
    """JSON has no NaN or infinity. Storing them as null would hand the processor None
    instead of the float it was given, so the enqueue should be refused."""
    try:
        h = add.enqueue(value, 1)
    except ferroq.PayloadError:
        assert_nothing_written(queue)
        return
    stored = queue.get(h.id).args[0]
    pytest.fail(f"payload {value!r} was silently stored as {stored!r}")


def payload_size(*args: Any, **kwargs: Any) -> int:
    """Bytes of the payload ferroq stores for these arguments (JSON of args and kwargs)."""
    return len(orjson.dumps({"args": args, "kwargs": kwargs}))


def test_payload_over_the_queue_limit(queue_location: Path | str) -> None:
    q = ferroq.Queue(queue_location, durability="normal", max_payload=1000)

    @q.task(name="echo")
    def echo(text: str) -> str:
        return text

    overhead = payload_size("")
    at_limit, over = "x" * (1000 - overhead), "x" * (1001 - overhead)
    assert payload_size(at_limit) == 1000 and payload_size(over) == 1001

    with pytest.raises(ferroq.PayloadTooLarge) as caught:
        echo.enqueue(over)
    assert isinstance(caught.value, ferroq.PayloadError)
    assert "1001" in str(caught.value) and "1000" in str(caught.value)
    # One call too large in a batch: the whole batch is refused.
    with pytest.raises(ferroq.PayloadTooLarge):
        q.enqueue_many([echo.call("small"), echo.call(over), echo.call("small")])
    assert_nothing_written(q)

    assert echo.enqueue(at_limit).created  # exactly at the limit is fine
    assert q.counts()["pending"] == 1


def test_enqueue_many_refuses_a_bad_item_anywhere_and_writes_nothing(queue: ferroq.Queue, add: Any) -> None:
    def calls_then(bad: Any) -> Iterator[Any]:
        yield from (add.call(i, 1) for i in range(300))
        yield bad

    for bad in ["not a call", None, add]:
        with pytest.raises(ferroq.InvalidArgument, match="enqueue_many takes task.call"):
            queue.enqueue_many(calls_then(bad))
    # Hand-made calls that the serializer did not make.
    with pytest.raises(ferroq.PayloadError, match="payload must be bytes"):
        queue.enqueue_many([add.call(1, 2), ferroq.TaskCall("math.add", bytearray(b"{}"), add.options)])
    with pytest.raises(ferroq.InvalidArgument, match="name must be a str"):
        queue.enqueue_many([ferroq.TaskCall(7, b"{}", add.options)])  # type: ignore[arg-type]
    with pytest.raises(ferroq.InvalidArgument):
        queue.enqueue_many([ferroq.TaskCall("bad\nname", b"{}", add.options)])
    assert_nothing_written(queue)

    class MyCall(ferroq.TaskCall[int]):
        __slots__ = ()

    call = add.call(1, 2)
    assert len(queue.enqueue_many([MyCall(call.name, call.payload, call.options)])) == 1


def test_payload_over_the_default_one_mib_limit(queue: ferroq.Queue) -> None:
    @queue.task(name="echo")
    def echo(text: str) -> str:
        return text

    overhead = payload_size("")
    with pytest.raises(ferroq.PayloadTooLarge) as caught:
        echo.enqueue("x" * (1024 * 1024 + 1 - overhead))
    assert str(1024 * 1024) in str(caught.value)
    with pytest.raises(ferroq.PayloadTooLarge):
        echo.enqueue("x" * (5 * 1024 * 1024))
    assert_nothing_written(queue)

    echo.enqueue("x" * (1024 * 1024 - overhead))  # exactly 1 MiB is fine
    assert queue.counts()["pending"] == 1


@pytest.mark.parametrize(
    "priority",
    [ferroq.PRIORITY_MAX + 1, ferroq.PRIORITY_MIN - 1, 10**6, -(10**6), 2**63, 2**70],
    ids=["max+1", "min-1", "1e6", "-1e6", "2**63", "2**70"],
)
def test_priority_out_of_range(queue: ferroq.Queue, add: Any, priority: int) -> None:
    with pytest.raises(ferroq.InvalidArgument) as caught:
        add.using(priority=priority).enqueue(1, 2)
    assert isinstance(caught.value, ValueError)
    with pytest.raises(ferroq.InvalidArgument):
        queue.task(name="other", priority=priority)(lambda: None)
    assert "other" not in queue.tasks
    assert_nothing_written(queue)


@pytest.mark.parametrize("priority", [1.5, 1.0, "1", True, [1]], ids=["1.5", "1.0", "str", "bool", "list"])
def test_priority_not_an_int(queue: ferroq.Queue, add: Any, priority: Any) -> None:
    with pytest.raises(ferroq.InvalidArgument) as caught:
        add.using(priority=priority).enqueue(1, 2)
    assert isinstance(caught.value, ValueError)
    with pytest.raises(ferroq.InvalidArgument):
        queue.task(name="other", priority=priority)(lambda: None)
    assert_nothing_written(queue)


def test_priority_bounds_are_accepted(queue: ferroq.Queue, add: Any) -> None:
    assert (ferroq.PRIORITY_MIN, ferroq.PRIORITY_MAX) == (-1000, 1000)
    for priority in (ferroq.PRIORITY_MIN, ferroq.PRIORITY_MAX, 0):
        h = add.using(priority=priority).enqueue(1, 2)
        assert queue.get(h.id).priority == priority


@pytest.mark.parametrize("name", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
def test_bad_task_name(queue: ferroq.Queue, name: str) -> None:
    def job() -> None:
        pass

    with pytest.raises(ferroq.InvalidArgument):
        queue.task(name=name)(job)
    assert queue.tasks == {}
    assert_nothing_written(queue)


@pytest.mark.parametrize("name", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
def test_bad_queue_name(db_path: Path, name: str) -> None:
    with pytest.raises(ferroq.InvalidArgument):
        ferroq.Queue(db_path, name=name)
    assert not db_path.exists()


@pytest.mark.parametrize("name", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
def test_bad_resource_group(queue: ferroq.Queue, add: Any, name: str) -> None:
    with pytest.raises(ferroq.InvalidArgument):
        queue.task(name="other", resource_group=name)(lambda: None)
    with pytest.raises(ferroq.InvalidArgument):
        add.using(resource_group=name).enqueue(1, 2)
    assert_nothing_written(queue)


def test_good_names_are_accepted(queue_location: Path | str) -> None:
    for i, name in enumerate(GOOD_NAMES):
        q = ferroq.Queue(queue_location, name=name, durability="normal")
        task = q.task(name=name, resource_group=name)(lambda i=i: i)
        info = q.get(task.enqueue().id)
        assert (info.queue, info.name, info.resource_group) == (name, name, name)


def test_non_str_names(queue_location: Path | str, queue: ferroq.Queue) -> None:
    with pytest.raises(ferroq.InvalidArgument):
        ferroq.Queue(queue_location, name=5)  # type: ignore[arg-type]
    with pytest.raises(ferroq.InvalidArgument):
        queue.task(name=5)(lambda: None)  # type: ignore[call-overload]
    with pytest.raises(ferroq.InvalidArgument):
        queue.task(resource_group=None)(lambda: None)  # type: ignore[arg-type]
    assert_nothing_written(queue)


@pytest.mark.parametrize(
    "args, kwargs",
    [((1,), {}), ((1, 2, 3), {}), ((1, 2), {"c": 3}), ((1,), {"a": 2}), ((), {})],
    ids=["missing", "too-many", "unexpected-kwarg", "duplicate", "none"],
)
def test_arguments_that_do_not_fit_the_signature(
    queue: ferroq.Queue, add: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    with pytest.raises(ferroq.InvalidArgument) as caught:
        add.enqueue(*args, **kwargs)
    assert "math.add" in str(caught.value)
    with pytest.raises(ferroq.InvalidArgument):
        add.call(*args, **kwargs)
    with pytest.raises(ferroq.InvalidArgument):
        add.using(priority=1).enqueue(*args, **kwargs)
    with pytest.raises(ferroq.InvalidArgument):
        queue.enqueue("math.add", *args, **kwargs)
    assert_nothing_written(queue)


@pytest.mark.parametrize(
    "delay", [-1, -0.001, math.nan, math.inf, "5", True], ids=["-1", "-1ms", "nan", "inf", "str", "bool"]
)
def test_bad_delay(queue: ferroq.Queue, add: Any, delay: Any) -> None:
    with pytest.raises(ferroq.InvalidArgument):
        add.using(delay=delay).enqueue(1, 2)
    assert_nothing_written(queue)


@pytest.mark.parametrize(
    "option, value",
    [
        ("delay", 1e300),
        ("run_at", math.inf),
        ("run_at", math.nan),
        ("run_at", 1e300),
        ("max_attempts", 2**70),
    ],
    ids=["delay-1e300", "run_at-inf", "run_at-nan", "run_at-1e300", "max_attempts-2**70"],
)
def test_numbers_too_large_for_the_store(queue: ferroq.Queue, add: Any, option: str, value: Any) -> None:
    """Values the store cannot represent must be refused with InvalidArgument, not leak
    a bare OverflowError/ValueError from the int conversion."""
    with pytest.raises(ferroq.InvalidArgument):
        add.using(**{option: value}).enqueue(1, 2)
    assert_nothing_written(queue)


def test_other_bad_options(queue: ferroq.Queue, add: Any) -> None:
    bad: dict[str, Callable[[], Any]] = {
        "delay and run_at": lambda: add.using(delay=1, run_at=time.time()).enqueue(1, 2),
        "run_at str": lambda: add.using(run_at="tomorrow").enqueue(1, 2),
        "max_attempts 0": lambda: add.using(max_attempts=0).enqueue(1, 2),
        "max_attempts 10001": lambda: add.using(max_attempts=10_001).enqueue(1, 2),
        "max_attempts float": lambda: add.using(max_attempts=2.0).enqueue(1, 2),
        "unique_key empty": lambda: add.using(unique_key="").enqueue(1, 2),
        "unique_key 1001 bytes": lambda: add.using(unique_key="k" * 1001).enqueue(1, 2),
        "unique_key int": lambda: add.using(unique_key=5).enqueue(1, 2),
        "unknown using() option": lambda: add.using().using(bogus=1),
        "timeout 0": lambda: queue.task(name="t0", timeout=0)(lambda: None),
        "timeout -1": lambda: queue.task(name="t1", timeout=-1)(lambda: None),
        "retry not a policy": lambda: queue.task(name="t2", retry="fast")(lambda: None),
        "task not callable": lambda: queue.task(name="t3")(42),
        "enqueue_many str": lambda: queue.enqueue_many(["not a call"]),
        "enqueue_many None": lambda: queue.enqueue_many([add.call(1, 2), None]),
        "RetryPolicy base_delay -1": lambda: ferroq.RetryPolicy(base_delay=-1),
        "RetryPolicy jitter 1.5": lambda: ferroq.RetryPolicy(jitter=1.5),
        "Retention count -1": lambda: ferroq.Retention(completed_count=-1),
        "Retention age nan": lambda: ferroq.Retention(dead_age=math.nan),
        "Retry delay -1": lambda: ferroq.Retry(delay=-1),
        "Worker concurrency 0": lambda: ferroq.Worker(queue, concurrency=0),
        "Worker lease 0.1": lambda: ferroq.Worker(queue, lease=0.1),
        "get str id": lambda: queue.get("1"),
    }
    problems = []
    for label, call in bad.items():
        try:
            call()
        except ferroq.InvalidArgument:
            continue
        except Exception as e:  # noqa: BLE001
            problems.append(f"{label}: {type(e).__name__}: {e}")
        else:
            problems.append(f"{label}: accepted")
    assert problems == []
    assert_nothing_written(queue)


# -- opening the database -----------------------------------------------------------------


def test_bad_durability(db_path: Path) -> None:
    for durability in ("bogus", "FULL", "", None):
        with pytest.raises(ferroq.InvalidArgument):
            ferroq.Queue(db_path, durability=durability)  # type: ignore[arg-type]
    assert not db_path.exists()


def test_bad_queue_settings(db_path: Path) -> None:
    for kwargs in (
        {"max_payload": 0},
        {"max_payload": -1},
        {"max_payload": 1.5},
        {"busy_timeout": -1},
        {"busy_timeout": math.nan},
        {"retention": "forever"},
    ):
        with pytest.raises(ferroq.InvalidArgument):
            ferroq.Queue(db_path, **kwargs)
    assert not db_path.exists()


def test_database_in_a_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "deeper" / "queue.db"
    with pytest.raises(ferroq.DatabasePathError) as caught:
        ferroq.Queue(path)
    assert isinstance(caught.value, ferroq.StorageError)
    assert str(tmp_path / "missing") in str(caught.value)
    assert not (tmp_path / "missing").exists()


def test_database_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ferroq.DatabasePathError):
        ferroq.Queue(tmp_path)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "content",
    [
        b"this is a text file, not a database\n" * 100,
        b"SQLite format 3\x00" + b"\xff" * 4000,
        b"SQLite",
        bytes(range(256)) * 64,
    ],
    ids=["text", "sqlite-header-then-garbage", "short", "binary"],
)
def test_file_that_is_not_a_sqlite_database(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(content)
    with pytest.raises(ferroq.CorruptDatabase) as caught:
        ferroq.Queue(path)
    assert isinstance(caught.value, ferroq.StorageError)
    assert str(path) in str(caught.value)
    assert path.read_bytes() == content  # untouched
    assert sorted(os.listdir(tmp_path)) == ["notes.db"]  # no -wal / -shm left behind


def test_empty_file_is_a_new_database(db_path: Path) -> None:
    db_path.write_bytes(b"")
    q = ferroq.Queue(db_path, durability="normal")
    assert q.counts() == EMPTY
    assert q.check() == ["ok"]


# -- damaged databases --------------------------------------------------------------------

TASKS = 2000


def expected_args(i: int) -> list[str]:
    return [f"{i:05d}" + "y" * 500]


@pytest.fixture(scope="module")
def pristine_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed queue file holding TASKS pending tasks, made in a subprocess."""
    path = tmp_path_factory.mktemp("pristine") / "queue.db"
    script = f"""
import ferroq
q = ferroq.Queue({str(path)!r}, durability="normal")
@q.task(name="job")
def job(x): return x
ids = q.enqueue_many(job.call(f"{{i:05d}}" + "y" * 500) for i in range(1, {TASKS} + 1))
assert ids == list(range(1, {TASKS} + 1)), ids[:5]
assert q.check() == ["ok"]
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    assert sorted(os.listdir(path.parent)) == ["queue.db"], "the subprocess left the file open"
    return path


@pytest.fixture
def damaged_copy(pristine_db: Path, tmp_path: Path) -> Callable[[int, int], Path]:
    """A copy of the pristine file with ``length`` bytes of garbage written at ``offset``."""

    def damage(offset: int, length: int) -> Path:
        path = tmp_path / "damaged.db"
        shutil.copyfile(pristine_db, path)
        assert offset + length <= path.stat().st_size
        with open(path, "r+b") as f:
            f.seek(offset)
            f.write((b"\xde\xad\xbe\xef" * (length // 4 + 1))[:length])
        return path

    return damage


def middle_pages(path: Path, count: int) -> tuple[int, int]:
    pages = path.stat().st_size // PAGE
    return (pages // 2) * PAGE, count * PAGE


def test_damaged_pages_in_the_middle(pristine_db: Path, damaged_copy: Callable[[int, int], Path]) -> None:
    """Damage inside the file is not noticed at open (opening does not read every page);
    check() reports it, every read that touches a damaged page raises CorruptDatabase,
    and no read ever returns wrong data."""
    path = damaged_copy(*middle_pages(pristine_db, 4))
    q = ferroq.Queue(path, durability="normal")

    findings = q.check()
    assert findings != ["ok"]
    assert str(path) in " ".join(findings) or any("page" in f for f in findings), findings
    # counts() reads only the status indexes: it raises if they are damaged, else it answers.
    try:
        assert all(isinstance(n, int) for n in q.counts().values())
    except ferroq.CorruptDatabase:
        pass

    unreadable = []
    for task_id in range(1, TASKS + 1):
        try:
            info = q.get(task_id)
        except ferroq.CorruptDatabase:
            unreadable.append(task_id)
        else:
            assert info.args == expected_args(task_id), f"task {task_id} read back wrong data"
    assert 0 < len(unreadable) < TASKS / 2


def test_damaged_root_pages_are_reported_by_check(damaged_copy: Callable[[int, int], Path]) -> None:
    """Garbage over pages 3-6 (the roots of the first tables and indexes after the schema):
    check() returns SQLite's findings, and an enqueue raises CorruptDatabase and writes nothing."""
    path = damaged_copy(2 * PAGE, 4 * PAGE)
    q = ferroq.Queue(path, durability="normal")

    findings = q.check()
    assert findings != ["ok"]
    assert any("page" in line for line in findings), findings

    @q.task(name="job")
    def job(x: str) -> str:
        return x

    content = path.read_bytes()
    with pytest.raises(ferroq.CorruptDatabase):
        job.enqueue("new")
    # Nothing was committed: closing checkpoints any committed WAL frame into the file.
    q.close()
    del q
    gc.collect()
    assert path.read_bytes() == content


def test_damaged_schema_page(pristine_db: Path, damaged_copy: Callable[[int, int], Path]) -> None:
    """Garbage in page 1 after the 100-byte file header (the schema) fails at open,
    and the file is left untouched."""
    path = damaged_copy(100, PAGE - 100)
    content = path.read_bytes()
    with pytest.raises(ferroq.CorruptDatabase):
        ferroq.Queue(path)
    assert path.read_bytes() == content
    assert sorted(os.listdir(path.parent)) == ["damaged.db"]


@pytest.mark.parametrize("keep", [100, PAGE, 5000, 50_000], ids=["100B", "1page", "5000B", "50kB"])
def test_truncated_database(pristine_db: Path, tmp_path: Path, keep: int) -> None:
    path = tmp_path / "truncated.db"
    path.write_bytes(pristine_db.read_bytes()[:keep])
    with pytest.raises(ferroq.CorruptDatabase):
        ferroq.Queue(path)
    assert path.read_bytes() == pristine_db.read_bytes()[:keep]


def test_worker_on_a_damaged_database_stops_with_corrupt_database(
    pristine_db: Path, damaged_copy: Callable[[int, int], Path]
) -> None:
    """A worker whose claims hit a damaged page must raise CorruptDatabase, like every
    other call does. A corrupt file does not heal, so retrying the claim forever (a
    warning a second, ``run(until_idle=True)`` never returning) is wrong."""
    path = damaged_copy(*middle_pages(pristine_db, 4))
    q = ferroq.Queue(path, durability="normal")

    @q.task(name="job")
    def job(x: str) -> str:
        return x

    retries = threading.Semaphore(0)

    class SeeRetries(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "claim failed, retrying" in record.getMessage():
                retries.release()

    handler = SeeRetries()
    worker_log = logging.getLogger("ferroq.worker")
    worker_log.addHandler(handler)
    worker = ferroq.Worker(q, concurrency=1, handle_signals=False)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["stats"] = worker.run(until_idle=True)
        except BaseException as e:  # noqa: BLE001
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    try:
        thread.start()
        deadline = time.monotonic() + WAIT
        seen = 0
        while thread.is_alive() and seen < 2 and time.monotonic() < deadline:
            if retries.acquire(timeout=0.05):
                seen += 1
        spinning = thread.is_alive()
    finally:
        worker.stop()
        thread.join(WAIT)
        worker_log.removeHandler(handler)
    assert not spinning, "Worker.run(until_idle=True) kept retrying claims on a corrupt database"
    assert isinstance(outcome.get("error"), ferroq.CorruptDatabase), outcome


# -- unwritable places ---------------------------------------------------------------------


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def readonly_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody can write to: chmod 0555 for normal users; as root (who ignores
    permissions) a read-only tmpfs mount, skipping if mounting is not allowed here."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    if shutil.which("mount") is None:
        pytest.skip("running as root (permissions do not apply) and there is no mount command")
    done = _mount("-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path))
    if done.returncode != 0:
        pytest.skip(
            f"running as root (permissions do not apply) and cannot mount a read-only tmpfs: {done.stderr.strip()}"
        )
    try:
        yield path
    finally:
        _mount_cleanup(path)


def _mount_cleanup(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True, timeout=30)


def test_unwritable_directory(readonly_dir: Path) -> None:
    path = readonly_dir / "queue.db"
    with pytest.raises(ferroq.DatabasePathError) as caught:
        ferroq.Queue(path)
    assert isinstance(caught.value, ferroq.StorageError)
    assert "writable" in str(caught.value)
    assert not path.exists()


def test_existing_database_on_a_read_only_filesystem(tmp_path: Path) -> None:
    """A queue file that exists but can no longer be written (its filesystem went
    read-only) is refused at open with DatabasePathError, not opened read-only."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount and remount a tmpfs")
    mountpoint = tmp_path / "fs"
    mountpoint.mkdir()
    done = _mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mountpoint))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        path = mountpoint / "queue.db"
        subprocess.run(
            [
                sys.executable,
                "-c",
                f"""
import ferroq
q = ferroq.Queue({str(path)!r})
@q.task(name="job")
def job(): pass
job.enqueue()
""",
            ],
            check=True,
            timeout=60,
        )
        content = path.read_bytes()
        done = _mount("-o", "remount,ro", str(mountpoint))
        if done.returncode != 0:
            pytest.skip(f"cannot remount read-only: {done.stderr.strip()}")
        with pytest.raises(ferroq.DatabasePathError) as caught:
            ferroq.Queue(path)
        assert "read-only" in str(caught.value)
        assert path.read_bytes() == content
    finally:
        _mount_cleanup(mountpoint)
