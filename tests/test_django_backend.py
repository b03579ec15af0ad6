"""ferroq.contrib.django: the backend for Django's task framework, against a real Django
project made in a temporary directory from the README's own blocks (settings, tasks,
enqueue, results). The backend is tested in this process (Django configured once for the
module, a fresh queue file per test); ``manage.py ferroq_worker`` runs as a real process.

Installed by ``make test``: the django-tasks backport on Django 5.2 (this machine's Python
3.11 cannot run Django 6; ``tests/django_smoke.py`` runs Django 6 where Python 3.12 is)."""

from __future__ import annotations

import asyncio
import os
import re
import runpy
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest

import ferroq
from ferroq.errors import InvalidArgument, PayloadError
from ferroq.testing import drain

from django_project import BLOCKS, make_project
from procs import PACKAGE_ROOT

# -- Django in this process: configured once, a queue file per test ------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from django.conf import settings

    root = make_project(tmp_path_factory.mktemp("djproject"))
    if not settings.configured:
        values = runpy.run_path(str(root / "proj" / "settings.py"))
        # No Django database here: Python's sqlite3 must not share this process with ferroq's.
        values["DATABASES"] = {}
        settings.configure(**{k: v for k, v in values.items() if k.isupper()})
        import django

        django.setup()
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))


@pytest.fixture
def tasks_settings(project: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """TASKS pointing at a fresh queue file (the README's settings otherwise)."""
    from django.conf import settings
    from django.test.utils import override_settings

    config = {
        alias: dict(entry, OPTIONS=dict(entry.get("OPTIONS", {}), path=tmp_path / "tasks.db"))
        for alias, entry in settings.TASKS.items()
    }
    with override_settings(TASKS=config):
        yield config
        backend().close()


def backend(alias: str = "default") -> Any:
    from ferroq.contrib.django._compat import task_backends

    return task_backends[alias]


def run_worker(queue_name: str = "default") -> ferroq.WorkerStats:
    return drain(backend().queue(queue_name), timeout=60, skip_backoff=True)


def test_backend_declares_what_it_supports(tasks_settings: dict[str, Any]) -> None:
    from ferroq.contrib.django import FerroqBackend

    b = backend()
    assert isinstance(b, FerroqBackend)
    assert (b.supports_defer, b.supports_async_task, b.supports_get_result, b.supports_priority) == (
        True,
        True,
        True,
        True,
    )


def test_enqueue_stores_a_ready_result_and_a_worker_runs_it(tasks_settings: dict[str, Any]) -> None:
    import jobs

    result = jobs.add.enqueue(2, b=(3,)[0])
    assert result.status == "READY" and result.id.isdigit()
    assert result.args == [2] and result.kwargs == {"b": 3}
    assert result.enqueued_at is not None and result.enqueued_at.tzinfo is not None
    stored = backend().queue().get(int(result.id))
    assert (stored.name, stored.status, stored.args, stored.kwargs) == ("jobs.add", "pending", [2], {"b": 3})
    fetched = jobs.add.get_result(result.id)
    assert fetched.status == "READY" and fetched.worker_ids == [] and fetched.started_at is None

    run_worker()

    result.refresh()
    assert result.status == "SUCCESSFUL" and result.return_value == 5
    assert result.errors == [] and len(result.worker_ids) == 1 and result.attempts == 1
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert result.last_attempted_at == result.started_at
    assert result.worker_ids[0] == stored_worker(result.id)


def stored_worker(result_id: str) -> str | None:
    running = [t for t in backend().queue().history(int(result_id)) if t.to_status == "running"]
    return running[-1].worker


def test_a_failure_is_failed_with_the_exception_path_and_traceback(tasks_settings: dict[str, Any]) -> None:
    import jobs

    result = jobs.boom.enqueue()
    run_worker()
    result.refresh()
    assert result.status == "FAILED"
    (error,) = result.errors
    assert error.exception_class_path == "builtins.ValueError" and error.exception_class is ValueError
    assert "Traceback (most recent call last)" in error.traceback and "no good" in error.traceback
    assert result.finished_at is not None
    with pytest.raises(ValueError, match="failed"):
        result.return_value  # noqa: B018 - Django's property raises for a failed task


def test_a_return_value_that_is_not_json_fails_the_run(tasks_settings: dict[str, Any]) -> None:
    import jobs

    result = jobs.not_json.using().enqueue()
    backend().queue().handle(int(result.id))
    run_worker()
    result.refresh()
    assert result.status == "FAILED" and result.errors[-1].exception_class_path == "builtins.TypeError"


def test_a_retried_task_lists_each_attempt_and_sends_signals_for_each(
    tasks_settings: dict[str, Any], tmp_path: Path
) -> None:
    import jobs
    from ferroq.contrib.django._compat import task_enqueued, task_finished, task_started

    seen: list[tuple[str, str, str]] = []

    def record(signal_name: str) -> Any:
        def receiver(sender: Any, task_result: Any, **kwargs: Any) -> None:
            seen.append((signal_name, task_result.id, str(task_result.status)))

        return receiver

    receivers = {
        sig: record(name)
        for sig, name in ((task_enqueued, "enqueued"), (task_started, "started"), (task_finished, "finished"))
    }
    for sig, fn in receivers.items():
        sig.connect(fn)
    try:
        result = jobs.flaky.enqueue(str(tmp_path / "marker"))
        run_worker()
    finally:
        for sig, fn in receivers.items():
            sig.disconnect(fn)
    result.refresh()
    assert result.status == "SUCCESSFUL" and result.return_value == "second time lucky"
    assert [e.exception_class_path for e in result.errors] == ["builtins.ConnectionError"]
    assert len(result.worker_ids) == 2 and result.started_at < result.last_attempted_at
    i = result.id
    assert seen == [
        ("enqueued", i, "READY"),
        ("started", i, "RUNNING"),
        ("finished", i, "FAILED"),
        ("started", i, "RUNNING"),
        ("finished", i, "SUCCESSFUL"),
    ]


def test_priorities_map_onto_ferroq_priorities(tasks_settings: dict[str, Any]) -> None:
    import jobs

    jobs.RAN.clear()
    low = jobs.low.enqueue("low")
    mid = jobs.low.using(priority=0).enqueue("mid")
    high = jobs.high.enqueue("high")
    q = backend().queue()
    assert [q.get(int(r.id)).priority for r in (low, mid, high)] == [-100, 0, 100]
    run_worker()  # one task at a time: the highest first
    assert jobs.RAN == ["high", "mid", "low"]
    assert jobs.low.get_result(mid.id).task.priority == 0


def test_run_after_is_the_run_time(tasks_settings: dict[str, Any]) -> None:
    import jobs
    from ferroq.contrib.django._compat import InvalidTask

    later = datetime.now(timezone.utc) + timedelta(hours=1)
    result = jobs.add.using(run_after=later).enqueue(1, 1)
    stored = backend().queue().get(int(result.id))
    assert abs((stored.run_at - later).total_seconds()) < 0.01
    assert jobs.add.get_result(result.id).status == "READY"
    with pytest.raises(InvalidTask, match="aware"):
        jobs.add.using(run_after=datetime.now() + timedelta(hours=1)).enqueue(1, 1)


def test_unknown_results_do_not_exist(tasks_settings: dict[str, Any]) -> None:
    import jobs
    from ferroq.contrib.django._compat import TaskResultDoesNotExist

    with pytest.raises(TaskResultDoesNotExist):  # no queue file yet
        backend().get_result("1")
    jobs.add.enqueue(1, 2)
    for bad in ("999", "abc", "", "-1", "1e3", "٣"):
        with pytest.raises(TaskResultDoesNotExist):
            backend().get_result(bad)
    plain = backend().queue().task(name="not_django")(lambda: None)
    handle = plain.enqueue()
    with pytest.raises(TaskResultDoesNotExist, match="not a Django task"):
        backend().get_result(str(handle.id))


def test_async_enqueue_results_and_tasks(tasks_settings: dict[str, Any]) -> None:
    import jobs
    from ferroq.contrib.django._compat import TaskResultDoesNotExist

    from ferroq.contrib.django._compat import task_enqueued

    async def produce() -> list[Any]:
        return list(await asyncio.gather(*(jobs.double.aenqueue(i) for i in range(20))))

    sent: list[str] = []

    def on_enqueued(sender: Any, task_result: Any, **kwargs: Any) -> None:
        sent.append(task_result.id)

    task_enqueued.connect(on_enqueued)
    try:
        results = asyncio.run(produce())
    finally:
        task_enqueued.disconnect(on_enqueued)
    assert len({r.id for r in results}) == 20 and sorted(sent) == sorted(r.id for r in results)
    assert all(r.status == "READY" for r in results)
    run_worker()

    async def read() -> list[Any]:
        return [await jobs.double.aget_result(r.id) for r in results]

    done = asyncio.run(read())
    assert [r.return_value for r in done] == [2 * i for i in range(20)]
    with pytest.raises(TaskResultDoesNotExist):
        asyncio.run(backend().aget_result("12345"))


def test_a_task_that_takes_context_sees_its_result(tasks_settings: dict[str, Any]) -> None:
    import jobs

    result = jobs.with_context.enqueue(x=5)
    run_worker()
    result.refresh()
    assert result.return_value == {"attempt": 1, "id": result.id, "x": 5}


def test_ferroq_extras_per_task_per_call_and_in_options(tasks_settings: dict[str, Any]) -> None:
    import jobs
    from ferroq.contrib.django._compat import task_enqueued

    q = backend().queue()
    declared = q.get(int(jobs.extras.enqueue(1).id))
    assert (declared.max_attempts, declared.resource_group) == (7, "smtp")
    assert q.tasks["jobs.extras"].options.timeout == 30
    plain = q.get(int(jobs.add.enqueue(1, 1).id))
    assert (plain.max_attempts, plain.resource_group) == (3, "default")  # the README's OPTIONS
    assert q.tasks["jobs.add"].options.timeout == 300

    sent: list[str] = []

    def on_enqueued(sender: Any, task_result: Any, **kwargs: Any) -> None:
        sent.append(task_result.id)

    task_enqueued.connect(on_enqueued)
    try:
        first = jobs.extras.using(unique_key="only-one", max_attempts=2, resource_group="other").enqueue(1)
        again = jobs.extras.using(unique_key="only-one").enqueue(2)
    finally:
        task_enqueued.disconnect(on_enqueued)
    assert again.id == first.id and again.args == [1] and sent == [first.id]
    stored = q.get(int(first.id))
    assert (stored.unique_key, stored.max_attempts, stored.resource_group) == ("only-one", 2, "other")


def test_options_set_the_defaults_of_every_task(tasks_settings: dict[str, Any], tmp_path: Path) -> None:
    import jobs
    from django.test.utils import override_settings

    config = {
        "default": {
            "BACKEND": "ferroq.contrib.django.FerroqBackend",
            "OPTIONS": {
                "path": tmp_path / "other.db",
                "max_attempts": 1,
                "retry": ferroq.RetryPolicy(base_delay=0),
                "durability": "normal",
            },
        }
    }
    with override_settings(TASKS=config):
        b = backend()
        result = jobs.add.enqueue(1, 1)
        assert b.queue().get(int(result.id)).max_attempts == 1
        assert b.queue().pragmas()["synchronous"] in ("1", "normal", "NORMAL")
        b.close()


def test_bad_tasks_and_calls_get_clear_typed_errors(tasks_settings: dict[str, Any], tmp_path: Path) -> None:
    import jobs
    from django.core.exceptions import ImproperlyConfigured
    from django.test.utils import override_settings
    from ferroq.contrib.django._compat import InvalidTask, task_backends

    with pytest.raises(InvalidTask, match="priority"):
        jobs.add.using(priority=101)
    with pytest.raises(InvalidTask, match="Queue 'nope'"):
        jobs.add.using(queue_name="nope")
    with pytest.raises(InvalidTask, match="max_attempts"):
        jobs.add.using(max_attempts=0)
    with pytest.raises(InvalidTask, match="resource group"):
        jobs.add.using(resource_group="")
    with pytest.raises(TypeError, match="'colour'"):
        jobs.add.using(colour="red")
    with pytest.raises(InvalidArgument, match="bad arguments for task jobs.add"):
        jobs.add.enqueue(1, 2, 3)
    with pytest.raises(PayloadError, match="JSON"):
        jobs.add.enqueue(object(), 1)
    assert backend().queue().counts()["pending"] == 0  # nothing half-stored

    for options, message in (
        ({}, 'needs "path"'),
        ({"path": "x.db", "colour": 1}, "'colour'"),
        ({"path": "x.db", "max_attempts": 0}, "max_attempts"),
        ({"path": "x.db", "retry": 3}, "RetryPolicy"),
    ):
        config = {"default": {"BACKEND": "ferroq.contrib.django.FerroqBackend", "OPTIONS": options}}
        with override_settings(TASKS=config), pytest.raises(ImproperlyConfigured, match=re.escape(message)):
            task_backends["default"]


def test_a_cancelled_task_is_failed(tasks_settings: dict[str, Any]) -> None:
    import jobs

    result = jobs.add.enqueue(1, 1)
    backend().queue().cancel(int(result.id))
    result.refresh()
    assert result.status == "FAILED"
    assert result.errors[-1].exception_class_path == "ferroq.errors.TaskCancelled"


# -- manage.py ferroq_worker, a real process ---------------------------------------------


def manage(root: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([PACKAGE_ROOT, str(root)]), PYTHONUNBUFFERED="1")
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=root, env=env, capture_output=True, text=True, timeout=timeout
    )


def shell(root: Path, code: str) -> str:
    done = manage(root, "shell", "-v", "0", "-c", code)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
def test_the_readme_example_runs_with_manage_py_ferroq_worker(tmp_path: Path) -> None:
    root = make_project(tmp_path / "site")
    shell(root, BLOCKS["enqueue"])
    done = manage(root, "ferroq_worker", "--until-empty")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    # The emails queue has its own worker: the default queue's did not run its task.
    shell(root, "from shop.tasks import send_welcome; assert send_welcome.get_result('1').status == 'READY'")
    done = manage(root, "ferroq_worker", "--queue-name", "emails", "--until-empty", "--concurrency", "2")
    assert done.returncode == 0, done.stderr
    shell(root, BLOCKS["results"])
    shell(
        root,
        textwrap.dedent("""\
        from shop.tasks import nightly_report
        r = nightly_report.get_result("2")
        assert r.status == "SUCCESSFUL", r.status
        assert r.return_value == {"day": "2026-12-04", "attempt": 1}, r.return_value
    """),
    )


@pytest.mark.slow
def test_worker_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    root = make_project(tmp_path / "site")
    for args, message in (
        (("ferroq_worker", "--until-empty"), "--create"),
        (("ferroq_worker", "--queue-name", "nope"), "not one of backend 'default'"),
        (("ferroq_worker", "--backend", "nope"), "nope"),
        (("ferroq_worker", "--concurrency", "2", "--processes", "2"), "not both"),
        (("ferroq_worker", "--concurrency", "0"), "not in the range"),
        (("ferroq_worker", "--prefetch", "-1"), "not in the range 0..100000"),
        (("ferroq_worker", "--metrics-port", "99999"), "not in the range 0..65535"),
        (("ferroq_worker", "--create", "--lease", "0.1"), "lease must be at least"),
    ):
        done = manage(root, *args)
        assert done.returncode != 0 and message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
    (root / "tasks.db").unlink()  # (made by the --create ones)
    done = manage(root, "ferroq_worker", "--until-empty")
    assert done.returncode != 0 and "--create" in done.stderr
    assert not (root / "tasks.db").exists()
    done = manage(root, "ferroq_worker", "--create", "--until-empty")
    assert done.returncode == 0, done.stderr
    assert (root / "tasks.db").exists()


@pytest.mark.slow
def test_process_pool_children_set_django_up_and_connections_close_around_runs(tmp_path: Path) -> None:
    root = make_project(tmp_path / "site")
    shell(root, "import jobs; jobs.in_child.enqueue(); jobs.open_db.enqueue(); jobs.db_closed.enqueue()")
    done = manage(root, "ferroq_worker", "--processes", "1", "--until-empty")
    assert done.returncode == 0, done.stderr
    out = shell(
        root,
        textwrap.dedent("""\
        import os, jobs
        child = jobs.in_child.get_result("1").return_value
        print(child["ready"], child["secret"], child["pid"] != os.getpid())
        print(jobs.open_db.get_result("2").return_value, jobs.db_closed.get_result("3").return_value)
    """),
    )
    assert out.split() == ["True", "test", "only", "True", "True", "True"]
    # In threads too: the connection one run opened is closed before the next run.
    shell(root, "import jobs; jobs.open_db.enqueue(); jobs.db_closed.enqueue()")
    done = manage(root, "ferroq_worker", "--concurrency", "1", "--until-empty")
    assert done.returncode == 0, done.stderr
    assert shell(root, "import jobs; print(jobs.db_closed.get_result('5').return_value)").split() == ["True"]


def test_a_worker_finds_a_task_it_has_not_seen_by_its_import_path(tasks_settings: dict[str, Any]) -> None:
    """As a worker process that never enqueued: the claim loop asks the queue's resolver,
    which imports the Django task; a name that is no Django task is given back, not run."""
    import jobs

    q = backend().queue()
    result = jobs.add.enqueue(20, 22)
    stranger = q.task(name="jobs.RAN")(lambda: None).enqueue()  # a stored name that is no task
    broken = q.task(name="no_such_module.task")(lambda: None).enqueue()
    q._tasks.clear()  # what a fresh worker process knows
    worker = ferroq.Worker(q, handle_signals=False, unknown_task_grace=0)
    worker.run(until_idle=True)
    assert jobs.add.get_result(result.id).return_value == 42
    assert q.get(stranger.id).status == q.get(broken.id).status == "dead"  # given back, no grace left
    assert sorted(q.tasks) == ["jobs.add"]


def test_a_backend_without_queues_takes_any_queue_name(tasks_settings: dict[str, Any], tmp_path: Path) -> None:
    import jobs
    from django.test.utils import override_settings

    config = {
        "default": {
            "BACKEND": "ferroq.contrib.django.FerroqBackend",
            "QUEUES": [],
            "OPTIONS": {"path": tmp_path / "any.db"},
        }
    }
    with override_settings(TASKS=config):
        result = jobs.add.using(queue_name="anything").enqueue(1, 2)
        drain(backend().queue("anything"), timeout=60)
        assert jobs.add.get_result(result.id).return_value == 3
        assert jobs.add.get_result(result.id).task.queue_name == "anything"
        backend().close()
