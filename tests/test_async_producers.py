"""asyncio producers: aenqueue, aenqueue_many, aget, aresult, aevents (issue 16).

Each test runs its own event loop with ``asyncio.run``. Behaviour only, never timing: "the
loop is not blocked" is shown by a ticker that keeps ticking while a commit waits on a
lock another process holds."""

from __future__ import annotations

import asyncio
import importlib.util
import multiprocessing
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import pytest

import ferroq
from procs import child_env, wait_until

pytestmark = pytest.mark.both_engines  # every test with a queue runs on SQLite and PostgreSQL

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fastapi_app.py"


@pytest.fixture
def q(queue_location: Path | str) -> Iterator[ferroq.Queue]:
    queue = ferroq.Queue(queue_location, durability="normal", events="all", max_payload=1000)
    yield queue
    queue.close()


def tasks(q: ferroq.Queue) -> tuple[Any, Any]:
    @q.task(name="add")
    def add(a: int, b: int = 0) -> int:
        return a + b

    @q.task(name="boom", max_attempts=1)
    def boom() -> None:
        raise ValueError("no")

    return add, boom


def drain(q: ferroq.Queue) -> threading.Thread:
    """A worker thread running what is enqueued until the queue is empty."""
    thread = threading.Thread(
        target=ferroq.Worker(q, concurrency=2, handle_signals=False).run, kwargs={"until_empty": True}
    )
    thread.start()
    return thread


def run(coro: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await coro

    return asyncio.run(main())


# -- enqueueing ------------------------------------------------------------------------


def test_aenqueue_stores_the_call_as_enqueue_does(q: ferroq.Queue) -> None:
    add, _ = tasks(q)

    async def main() -> list[ferroq.TaskHandle[int]]:
        return [
            await add.aenqueue(1, b=2),
            await add.using(priority=7, delay=3600).aenqueue(5),
            await q.aenqueue("add", 3),
        ]

    first, later, by_name = asyncio.run(main())
    assert first.created and isinstance(first, ferroq.TaskHandle)
    info = q.get(first.id)
    assert (info.name, info.status, info.args, info.kwargs) == ("add", "pending", [1], {"b": 2})
    assert q.get(later.id).priority == 7 and q.get(later.id).run_at.timestamp() > time.time() + 3000
    assert q.get(by_name.id).args == [3]


def test_aenqueue_keeps_unique_keys(q: ferroq.Queue) -> None:
    add, _ = tasks(q)

    async def main() -> list[ferroq.TaskHandle[int]]:
        once = add.using(unique_key="k")
        # Together in one pass of the loop: they share a batch, and still one task is created.
        together = await asyncio.gather(*(once.aenqueue(i) for i in range(5)))
        return [*together, await once.aenqueue(9)]

    handles = asyncio.run(main())
    assert len({h.id for h in handles}) == 1
    assert [h.created for h in handles] == [True] + [False] * 5
    assert q.counts()["pending"] == 1


def test_concurrent_aenqueues_of_one_pass_share_one_store_call(q: ferroq.Queue) -> None:
    """Coalescing: 16 coroutines enqueueing at once make one store.enqueue (one transaction)."""
    add, _ = tasks(q)
    calls: list[int] = []
    real = q._store

    class Counting:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def enqueue(self, queue: str, batch: list[Any]) -> Any:
            calls.append(len(batch))
            return real.enqueue(queue, batch)

    q._store = Counting()  # type: ignore[assignment]

    async def main() -> list[ferroq.TaskHandle[int]]:
        return await asyncio.gather(*(add.aenqueue(i) for i in range(16)))

    try:
        handles = asyncio.run(main())
    finally:
        q._store = real
    assert calls == [16]
    assert q.__dict__["_aio_batchers"] == {}  # a loop's batch is kept only until its flush
    assert [q.get(h.id).args for h in handles] == [[i] for i in range(16)]


def test_a_refused_call_fails_alone_in_its_batch(q: ferroq.Queue) -> None:
    """One call over max_payload among concurrent ones: only its caller gets the error."""
    add, _ = tasks(q)

    async def main() -> list[Any]:
        coros = [add.aenqueue(i) for i in range(5)] + [add.aenqueue("x" * 5000)]
        return await asyncio.gather(*coros, return_exceptions=True)

    *stored, refused = asyncio.run(main())
    assert isinstance(refused, ferroq.PayloadTooLarge)
    assert all(isinstance(h, ferroq.TaskHandle) for h in stored)
    assert sorted(q.get(h.id).args[0] for h in stored) == [0, 1, 2, 3, 4]
    assert q.counts()["pending"] == 5


def test_aenqueue_many(q: ferroq.Queue) -> None:
    add, _ = tasks(q)
    ids = run(q.aenqueue_many(add.call(i) for i in range(10)))
    assert [q.get(i).args for i in ids] == [[i] for i in range(10)]
    assert run(q.aenqueue_many([])) == []
    with pytest.raises(ferroq.PayloadError):
        run(q.aenqueue_many([ferroq.TaskCall("add", b"not json", add.options)]))
    with pytest.raises(ferroq.InvalidArgument, match="task.call"):
        run(q.aenqueue_many([add.call(1), "nope"]))  # type: ignore[list-item]
    assert q.counts()["pending"] == 10  # a refused batch stored nothing


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda add, q: add.aenqueue(1, 2, 3), ferroq.InvalidArgument),
        (lambda add, q: add.aenqueue(object()), ferroq.PayloadError),
        (lambda add, q: q.aenqueue("nope", 1), ferroq.UnknownTaskName),
        (lambda add, q: q.aenqueue_many(5), TypeError),
        (lambda add, q: q.aget("1"), ferroq.InvalidArgument),
        (lambda add, q: q.aget(2**63), ferroq.InvalidArgument),
        (lambda add, q: q.aget(12345), ferroq.UnknownTask),
        (lambda add, q: q.handle(12345).aresult(timeout=1), ferroq.UnknownTask),
        (lambda add, q: q.handle(1).aresult(timeout=float("nan")), ferroq.InvalidArgument),
        (lambda add, q: q.handle(1).aresult(timeout=-1), ferroq.InvalidArgument),
    ],
)
def test_bad_arguments_raise_typed_errors_from_the_coroutine(
    q: ferroq.Queue, make: Callable[[Any, ferroq.Queue], Awaitable[Any]], error: type[Exception]
) -> None:
    add, _ = tasks(q)
    coro = make(add, q)  # nothing raised yet: the await raises
    with pytest.raises(error):
        run(coro)
    assert q.counts()["pending"] == 0


def test_sync_and_async_enqueue_refuse_the_same_inputs(q: ferroq.Queue) -> None:
    add, _ = tasks(q)
    with pytest.raises(ferroq.InvalidArgument, match="unknown option"):
        add.using(bogus=1)
    for args in [(1, 2, 3), (), (float("nan"),)]:
        with pytest.raises(ferroq.FerroqError) as sync:
            add.enqueue(*args)
        with pytest.raises(ferroq.FerroqError) as async_:
            run(add.aenqueue(*args))
        assert type(sync.value) is type(async_.value) and str(sync.value) == str(async_.value)


# -- not blocking the loop ---------------------------------------------------------------

LOCK_HOLDER = (
    "import pathlib, sqlite3, sys, time\n"
    "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
    "c.execute('BEGIN IMMEDIATE')\n"
    "pathlib.Path(sys.argv[2]).touch()\n"
    "while not pathlib.Path(sys.argv[3]).exists(): time.sleep(0.01)\n"
    "c.execute('COMMIT')\n"
)


def test_a_commit_waiting_for_the_write_lock_does_not_block_the_loop(db_path: Path, tmp_path: Path) -> None:
    """Another process holds the write lock until told: aenqueue waits for it off the
    loop, so a ticker keeps ticking meanwhile (a blocking enqueue would stop it dead: the
    ticker's count could not grow, and the release is only sent by the ticker itself).
    SQLite-only: the lock is SQLite's file write lock."""
    with ferroq.Queue(db_path, durability="normal") as q:
        _commit_waiting_for_the_lock(q, tmp_path)


def _commit_waiting_for_the_lock(q: ferroq.Queue, tmp_path: Path) -> None:
    add, _ = tasks(q)
    add.enqueue(0)  # the schema exists before the other process locks the file
    locked, release = tmp_path / "locked", tmp_path / "release"
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(q.path), str(locked), str(release)], env=child_env()
    )
    try:
        wait_until(locked.exists, 60, "the lock holder")

        async def main() -> tuple[int, int]:
            enqueue = asyncio.ensure_future(add.aenqueue(1))
            ticks = 0
            while ticks < 20:  # the loop runs while the enqueue waits for the lock
                await asyncio.sleep(0.005)
                ticks += 1
                assert not enqueue.done()
            release.touch()
            handle = await enqueue
            return ticks, handle.id

        ticks, task_id = asyncio.run(main())
        assert ticks == 20 and q.get(task_id).args == [1]
    finally:
        release.touch()
        holder.wait(60)


# -- results and reads --------------------------------------------------------------------


def test_aresult_returns_results_and_raises_as_result_does(q: ferroq.Queue) -> None:
    add, boom = tasks(q)

    async def main() -> tuple[Any, ...]:
        ok, failed, cancelled = await add.aenqueue(2, 3), await boom.aenqueue(), await add.using(delay=3600).aenqueue(1)
        await cancelled.ainfo()
        q.cancel(cancelled.id)
        worker = drain(q)
        try:
            value = await ok.aresult(timeout=60)
            with pytest.raises(ferroq.TaskFailed) as caught:
                await failed.aresult(timeout=60)
            with pytest.raises(ferroq.TaskCancelled):
                await cancelled.aresult(timeout=60)
        finally:
            await asyncio.get_running_loop().run_in_executor(None, worker.join)
        return value, caught.value, (await ok.ainfo()).status

    value, failure, status = asyncio.run(main())
    assert value == 5 and status == "completed"
    assert failure.task_id is not None and "no" in str(failure)


def test_aresult_times_out(q: ferroq.Queue) -> None:
    add, _ = tasks(q)

    async def main() -> None:
        handle = await add.aenqueue(1)
        with pytest.raises(ferroq.ResultTimeout):
            await handle.aresult(timeout=0.2)
        with pytest.raises(ferroq.ResultTimeout):
            await handle.aresult(timeout=0)

    asyncio.run(main())


def test_aresult_is_woken_by_a_commit_of_another_process(q: ferroq.Queue, tmp_path: Path) -> None:
    """The watcher sees commits from any process, not only this one's notifications."""
    add, _ = tasks(q)
    script = (
        "import ferroq, sys\n"
        "q = ferroq.Queue(sys.argv[1], durability='normal')\n"
        "q.task(name='add')(lambda a, b=0: a + b)\n"
        "ferroq.Worker(q, concurrency=1, handle_signals=False).run(until_empty=True)\n"
    )

    async def main() -> int:
        handle = await add.aenqueue(20, 22)
        waiting = asyncio.ensure_future(handle.aresult(timeout=120))
        await asyncio.sleep(0.1)  # waiting on the watcher before the other process starts
        child = await asyncio.create_subprocess_exec(sys.executable, "-c", script, q.path, env=child_env())
        assert await child.wait() == 0
        return await waiting

    assert asyncio.run(main()) == 42


def test_a_cancelled_aresult_leaves_no_thread_behind(q: ferroq.Queue) -> None:
    add, _ = tasks(q)

    async def main() -> None:
        handle = await add.aenqueue(1)
        waiting = asyncio.ensure_future(handle.aresult())
        await asyncio.sleep(0.2)
        assert not waiting.done() and _watch_threads(q)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(main())
    wait_until(lambda: not _watch_threads(q), 30, "the watcher thread to exit")
    # And a later wait starts it again.
    h = add.enqueue(2)
    worker = drain(q)
    assert run(h.aresult(timeout=60)) == 2
    worker.join()


def _watch_threads(q: ferroq.Queue) -> list[threading.Thread]:
    """The watcher threads of this queue (named after its file)."""
    return [t for t in threading.enumerate() if t.name == f"ferroq-aio-watch {q.path}"]


def test_many_waiters_share_one_watcher_thread(q: ferroq.Queue) -> None:
    """200 concurrent aresults hold one thread, not one each (nor the enqueue pool's)."""
    add, _ = tasks(q)

    async def main() -> list[int]:
        handles = await asyncio.gather(*(add.aenqueue(i) for i in range(200)))
        waiting = asyncio.gather(*(h.aresult(timeout=120) for h in handles))
        await asyncio.sleep(0.2)
        assert len(_watch_threads(q)) == 1
        # Enqueueing still works while they all wait.
        assert (await add.aenqueue(1000)).created
        worker = drain(q)
        try:
            return await waiting
        finally:
            await asyncio.get_running_loop().run_in_executor(None, worker.join)

    assert asyncio.run(main()) == list(range(200))


# -- events ---------------------------------------------------------------------------------


def test_aevents_follows_commits_in_order(q: ferroq.Queue) -> None:
    add, _ = tasks(q)
    start = q.last_event_id()

    async def main() -> list[ferroq.Event]:
        seen: list[ferroq.Event] = []
        handles = [await add.aenqueue(i) for i in range(3)]
        worker = drain(q)
        async for event in q.aevents(after=start, kinds=["completed"]):
            seen.append(event)
            if len(seen) == 3:
                break
        await asyncio.get_running_loop().run_in_executor(None, worker.join)
        assert sorted(e.task_id for e in seen) == sorted(h.id for h in handles)
        return seen

    seen = asyncio.run(main())
    assert [e.kind for e in seen] == ["completed"] * 3
    assert [e.id for e in seen] == sorted(e.id for e in seen)
    everything = run(_collect(q.aevents(after=start, timeout=0.2)))
    assert [e.id for e in everything] == [e.id for e in q.events(after=start)]
    assert {e.kind for e in run(_collect(q.aevents(after=0, kinds="enqueued", timeout=0.2)))} == {"enqueued"}


def test_aevents_without_after_starts_now(q: ferroq.Queue) -> None:
    add, _ = tasks(q)
    add.enqueue(0)

    async def main() -> list[ferroq.Event]:
        events = q.aevents(timeout=1.0)
        later = asyncio.get_running_loop().call_later(0.3, add.enqueue, 1)
        try:
            return await _collect(events)
        finally:
            later.cancel()

    seen = asyncio.run(main())
    assert [(e.kind, q.get(e.task_id).args) for e in seen] == [("enqueued", [1])]


async def _collect(events: Any) -> list[ferroq.Event]:
    return [e async for e in events]


@pytest.mark.parametrize(
    "kwargs", [{"after": -1}, {"after": "0"}, {"kinds": [1]}, {"timeout": float("nan")}, {"timeout": -1}]
)
def test_aevents_checks_its_arguments_at_the_call(q: ferroq.Queue, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ferroq.InvalidArgument):
        q.aevents(**kwargs)


# -- processes ------------------------------------------------------------------------------


def _child_enqueues(path: str) -> None:
    q = ferroq.Queue(path, durability="normal")
    q.task(name="add")(lambda a, b=0: a + b)

    async def main() -> None:
        await q.aenqueue("add", 7)
        await q.aget(1)

    asyncio.run(main())


@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")  # Python 3.12+: forking with threads
def test_a_forked_child_gets_its_own_threads(q: ferroq.Queue) -> None:
    """The pool's and watcher's threads do not survive fork(): a child that inherited a pool
    with idle threads would queue work no thread runs."""
    add, _ = tasks(q)
    run(add.aenqueue(1))  # the parent's pool has a thread now
    child = multiprocessing.get_context("fork").Process(target=_child_enqueues, args=(q.path,))
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung on aenqueue")
    assert child.exitcode == 0
    assert sorted(t.args[0] for t in q.list()) == [1, 7]


# -- the FastAPI example ----------------------------------------------------------------------


def test_the_fastapi_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    monkeypatch.chdir(tmp_path)  # the example's app.db lands here
    spec = importlib.util.spec_from_file_location("fastapi_app", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    async def main() -> None:
        transport = httpx.ASGITransport(app=example.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            made = await client.post("/resize", json={"url": "http://x/a.png", "width": 64})
            assert made.status_code == 202
            task_id = made.json()["id"]
            pending = (await client.get(f"/tasks/{task_id}")).json()
            assert pending == {"id": task_id, "status": "pending", "result": None, "error": None}
            worker = drain(example.q)
            done = (await client.get(f"/tasks/{task_id}", params={"wait": 60})).json()
            await asyncio.get_running_loop().run_in_executor(None, worker.join)
            assert done["status"] == "completed"
            assert done["result"] == {"url": "http://x/a.png", "width": 64, "bytes": 1234}
            assert (await client.get("/tasks/999")).status_code == 404
            assert (await client.get(f"/tasks/{2**63}")).status_code == 422
            assert (await client.post("/resize", json={"url": 1})).status_code == 422

    try:
        asyncio.run(main())
    finally:
        example.q.close()


def test_the_fastapi_example_is_the_one_in_the_readme() -> None:
    readme = (EXAMPLE.parent.parent / "README.md").read_text()
    assert EXAMPLE.read_text() in readme
