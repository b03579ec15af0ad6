"""``ferroq worker MODULE:QUEUE``: runs a worker on a queue declared in your code."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any, Callable

import click

from ..errors import InvalidArgument
from ..queue import WORKER_CREATE_ENV, WORKER_DB_ENV, Queue, is_database_url
from ..worker import Autoscale, Worker
from ._common import CliError, Exit, option, settings, split_list


def load_queue(spec: str) -> Queue:
    """``package.module:attr`` (or just the module, if it holds exactly one Queue), imported
    with the working directory on ``sys.path`` as ``python -m`` would."""
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise CliError(f"cannot import {module_name!r}: {e}", Exit.USAGE) from None
    if not attr:
        found = [name for name, v in vars(module).items() if isinstance(v, Queue)]
        if len(found) != 1:
            raise CliError(f"{module_name} holds {len(found)} Queue objects; name one as MODULE:QUEUE", Exit.USAGE)
        attr = found[0]
    target: object = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise CliError(f"{module_name} has no attribute {attr!r}", Exit.USAGE)
        target = getattr(target, part)
    if not isinstance(target, Queue):
        raise CliError(f"{spec} is a {type(target).__name__}, not a ferroq.Queue", Exit.USAGE)
    return target


@click.command()
@click.argument("spec", metavar="MODULE:QUEUE")
@option(
    "--db",
    "db",
    envvar="FERROQ_DB",
    type=click.Path(dir_okay=False),
    default=None,
    help="Open the module's queue in this file instead of the path in the code.",
)
@option("--create", is_flag=True, help="Allow creating the database if it does not exist (default: refuse, exit 3).")
@option("--concurrency", type=click.IntRange(1, 10_000), default=None, help="Runner threads (default 8).")
@option(
    "--processes",
    type=click.IntRange(1, 1_000),
    default=None,
    help="Run processors in N child processes (pool='process') instead of threads.",
)
@option(
    "--autoscale",
    default=None,
    metavar="MIN:MAX",
    help="Move the runners between MIN and MAX with the load (forecast, backlog, run times): "
    "threads, or child processes with --pool process.",
)
@option(
    "--pool",
    type=click.Choice(["thread", "process"]),
    default=None,
    help="With --autoscale: what the runners are (default thread).",
)
@option("--groups", default=None, help="Claim only tasks of these resource groups (comma-separated).")
@option("--lease", type=float, default=30.0, show_default=True, help="Lease seconds (renewed every lease/3).")
@option("--prefetch", type=click.IntRange(0, 100_000), default=None, help="Buffered tasks (default: adaptive).")
@option(
    "--shutdown-grace",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds running tasks get to finish on SIGTERM/SIGINT.",
)
@option("--name", default=None, help="Worker id (default host:pid:random).")
@option(
    "--unknown-task-grace",
    type=click.FloatRange(0, 100 * 365.25 * 86400),
    default=3600.0,
    show_default=True,
    help="A task this worker has no processor for is given back (newer code may run it); it goes dead this "
    "many seconds after it was first given back if no worker ran it.",
)
@option(
    "--on-start",
    "on_start",
    default=None,
    metavar="MODULE:FUNC",
    help="Call FUNC() once when the worker starts, before it claims anything (fails the start if it raises).",
)
@option(
    "--on-stop", "on_stop", default=None, metavar="MODULE:FUNC", help="Call FUNC() once when the worker has stopped."
)
@option(
    "--before-run",
    "before_run",
    default=None,
    metavar="MODULE:FUNC",
    help="Call FUNC(ctx) before each run, where it runs (a child with --processes).",
)
@option(
    "--after-run",
    "after_run",
    default=None,
    metavar="MODULE:FUNC",
    help="Call FUNC(ctx, outcome) after each run, where it runs.",
)
@option("--until-idle", is_flag=True, help="Stop when nothing is ready to run.")
@option("--until-empty", is_flag=True, help="Stop when nothing is pending or running (waits for delays).")
@option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
    help="Log level (stderr).",
)
@option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus metrics on this port (0: any free port, logged).",
)
@option(
    "--metrics-host",
    default="0.0.0.0",
    show_default=True,
    help="Address the metrics endpoint listens on (0.0.0.0: every IPv4 address; 127.0.0.1: this host only).",
)
@option(
    "--profile",
    type=click.Choice(["off", "on", "time"]),
    default="off",
    show_default=True,
    help="Record where the worker's time goes (per stage and task), for `ferroq profile`; "
    "'time': without the per-task peak memory (tracemalloc, most of the cost).",
)
@click.pass_context
def worker(
    ctx: click.Context,
    spec: str,
    db: str | None,
    create: bool,
    concurrency: int | None,
    processes: int | None,
    autoscale: str | None,
    pool: str | None,
    groups: str | None,
    lease: float,
    prefetch: int | None,
    shutdown_grace: float,
    name: str | None,
    unknown_task_grace: float,
    on_start: str | None,
    on_stop: str | None,
    before_run: str | None,
    after_run: str | None,
    until_idle: bool,
    until_empty: bool,
    log_level: str,
    metrics_port: int | None,
    metrics_host: str,
    profile: str,
) -> None:
    """Run a worker on the queue MODULE:QUEUE (e.g. myapp.tasks:queue) until SIGINT/SIGTERM.

    The database is the one the Queue in your code opens, unless --db (or FERROQ_DB) names
    another file: then every Queue the module opens uses that file. A database that does not
    exist is refused (exit 3, naming its absolute path and the working directory) unless
    --create is given: a worker started in the wrong directory must not start an empty queue.
    """
    if concurrency is not None and processes is not None:
        raise CliError("give --concurrency (threads) or --processes (child processes), not both", Exit.USAGE)
    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    _open_policy(settings(ctx, db).db, create)
    q = load_queue(spec)
    if metrics_port is not None:
        _serve_metrics(q, metrics_host, metrics_port)
    only = split_list((groups,)) if groups else None
    scaling = None
    if pool is not None and autoscale is None:
        raise CliError("--pool goes with --autoscale (else --concurrency N threads or --processes N)", Exit.USAGE)
    if autoscale is not None:
        if concurrency is not None or processes is not None:
            raise CliError("give --autoscale MIN:MAX or a fixed --concurrency/--processes, not both", Exit.USAGE)
        try:
            scaling = Autoscale.parse(autoscale)
        except InvalidArgument as e:
            raise CliError(f"--autoscale: {e}", Exit.USAGE) from None
    w = Worker(
        q,
        concurrency=processes or concurrency or 8,
        pool="process" if processes or pool == "process" else "thread",
        lease=lease,
        prefetch=prefetch,
        shutdown_grace=shutdown_grace,
        name=name,
        groups=only,
        unknown_task_grace=unknown_task_grace,
        autoscale=scaling,
        on_start=_reported(on_start, load_hook("--on-start", on_start)),
        on_stop=load_hook("--on-stop", on_stop),
        before_run=load_hook("--before-run", before_run),
        after_run=load_hook("--after-run", after_run),
        profile=PROFILE_SETTINGS[profile],
    )
    stats = w.run(until_idle=until_idle, until_empty=until_empty)
    logging.getLogger("ferroq.cli").info("done: %s", stats)


def load_hook(flag: str, spec: str | None) -> Callable[..., Any] | None:
    """The function ``package.module:func`` names (imported as ``load_queue`` imports), or a
    usage error saying why not."""
    if spec is None:
        return None
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CliError(f"{flag} takes MODULE:FUNC (e.g. myapp.hooks:close_db), got {spec!r}", Exit.USAGE)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise CliError(f"{flag}: cannot import {module_name!r}: {e}", Exit.USAGE) from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise CliError(f"{flag}: {module_name} has no attribute {attr!r}", Exit.USAGE)
        target = getattr(target, part)
    if not callable(target):
        raise CliError(f"{flag}: {spec} is a {type(target).__name__}, not a function", Exit.USAGE)
    return target  # type: ignore[no-any-return]


def _reported(spec: str | None, hook: Callable[..., Any] | None) -> Callable[[], Any] | None:
    """``--on-start``'s function, whose failure (the worker does not start) is one line
    naming the hook, not a traceback."""
    if hook is None:
        return None

    def on_start() -> Any:
        try:
            return hook()
        except Exception as e:  # noqa: BLE001 - whatever the user's hook raised
            raise CliError(
                f"--on-start {spec} failed, the worker did not start: {type(e).__name__}: {e}", Exit.FAILED
            ) from None

    return on_start


#: ``--profile`` as ``Worker(profile=...)`` takes it.
PROFILE_SETTINGS: dict[str, bool | str] = {"off": False, "on": True, "time": "time"}


def _open_policy(db: str | None, create: bool) -> None:
    """Tells every Queue this process (and its child processes) opens where, and whether it
    may create the file: environment variables ``ferroq.Queue`` reads (see queue.py). The
    worker command owns its process; main() called in-process keeps them set afterwards."""
    if db:
        os.environ[WORKER_DB_ENV] = db if is_database_url(db) else os.path.abspath(db)
    else:
        os.environ.pop(WORKER_DB_ENV, None)  # one inherited from a parent worker is not ours
    os.environ[WORKER_CREATE_ENV] = "1" if create else "0"


def _serve_metrics(q: Queue, host: str, port: int) -> None:
    from prometheus_client import CollectorRegistry, start_http_server

    from ..prometheus import FerroqCollector

    registry = CollectorRegistry()
    registry.register(FerroqCollector(q))
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        raise CliError(f"cannot serve metrics on {host}:{port}: {e}", Exit.FAILED) from None
    logging.getLogger("ferroq.cli").info("serving Prometheus metrics on http://%s:%d/metrics", host, server.server_port)
