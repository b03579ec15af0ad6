"""``python manage.py ferroq_worker``: a ferroq worker for Django tasks, with the options of
``ferroq worker`` (``--until-empty``, ``--processes`` ...). Django is set up by manage.py
(and in each child of ``--processes`` before its first run); connections are closed
around each run as around each request (``close_old_connections``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

import click
from django.core.management.base import BaseCommand, CommandError

from ferroq.errors import FerroqError
from ferroq.worker import Worker
from ferroq.contrib.django._compat import task_backends
from ferroq.contrib.django.backend import FerroqBackend
from ferroq.contrib.django.runner import after_run, before_run


def _int_range(low: int, high: int) -> Any:
    """An argparse type: a whole number in low..high (as the CLI's click.IntRange)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in the range {low}..{high}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


class Command(BaseCommand):  # type: ignore[misc]  # (BaseCommand is Any to mypy without Django's types)
    help = (
        "Run a ferroq worker for the Django tasks of a FerroqBackend (TASKS setting) until SIGINT/SIGTERM, "
        "or with --until-idle/--until-empty until the queue is done."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--backend", default="default", help="The TASKS alias of the FerroqBackend [default].")
        parser.add_argument("--queue-name", default="default", help="The Django queue (queue_name) to run [default].")
        parser.add_argument(
            "--create",
            action="store_true",
            help="Allow creating the queue file if it does not exist (default: refuse).",
        )
        parser.add_argument("--concurrency", type=_int_range(1, 10_000), default=None, help="Runner threads (8).")
        parser.add_argument(
            "--processes",
            type=_int_range(1, 1_000),
            default=None,
            help="Run tasks in N child processes (pool='process') instead of threads.",
        )
        parser.add_argument(
            "--groups", default=None, help="Claim only tasks of these resource groups (comma-separated)."
        )
        parser.add_argument("--lease", type=_seconds, default=30.0, help="Lease seconds (renewed every lease/3) [30].")
        parser.add_argument(
            "--prefetch", type=_int_range(0, 100_000), default=None, help="Buffered tasks (default: adaptive)."
        )
        parser.add_argument(
            "--shutdown-grace",
            type=_seconds,
            default=30.0,
            help="Seconds running tasks get to finish on SIGTERM/SIGINT [30].",
        )
        parser.add_argument("--name", default=None, help="Worker id (default host:pid:random).")
        parser.add_argument(
            "--unknown-task-grace",
            type=_seconds,
            default=3600.0,
            help="A task no worker here can run goes dead this many seconds after it was first given back [3600].",
        )
        parser.add_argument("--until-idle", action="store_true", help="Stop when nothing is ready to run.")
        parser.add_argument(
            "--until-empty", action="store_true", help="Stop when nothing is pending or running (waits for delays)."
        )
        parser.add_argument(
            "--log-level",
            choices=["debug", "info", "warning", "error"],
            default="info",
            help="Log level (stderr) [info].",
        )
        parser.add_argument(
            "--metrics-port",
            type=_int_range(0, 65535),
            default=None,
            help="Serve Prometheus metrics on this port (0: any free port, logged).",
        )
        parser.add_argument("--metrics-host", default="0.0.0.0", help="Address the metrics endpoint listens on.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["concurrency"] is not None and options["processes"] is not None:
            raise CommandError("give --concurrency (threads) or --processes (child processes), not both")
        logging.basicConfig(
            level=options["log_level"].upper(),
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        backend = self._backend(options["backend"])
        queue_name = options["queue_name"]
        if not backend.serves(queue_name):
            raise CommandError(
                f"queue {queue_name!r} is not one of backend {options['backend']!r}'s QUEUES "
                f"({', '.join(sorted(backend.queues))})"
            )
        if not options["create"] and not os.path.exists(backend.path):
            raise CommandError(
                f"no queue file at {backend.path} (TASKS[{options['backend']!r}]['OPTIONS']['path']); "
                "the worker does not create an empty queue: pass --create to start one there"
            )
        try:
            self._run(backend, queue_name, options)
        except FerroqError as e:
            raise CommandError(f"{type(e).__name__}: {e}") from None
        except click.ClickException as e:  # from the CLI's helpers (the metrics endpoint)
            raise CommandError(e.format_message()) from None

    def _backend(self, alias: str) -> FerroqBackend:
        try:
            backend = task_backends[alias]
        except Exception as e:  # noqa: BLE001 - InvalidTaskBackend(Error), ImproperlyConfigured ...
            raise CommandError(f"task backend {alias!r}: {e}") from None
        if not isinstance(backend, FerroqBackend):
            raise CommandError(f"task backend {alias!r} is a {type(backend).__name__}, not a FerroqBackend")
        return backend

    def _run(self, backend: FerroqBackend, queue_name: str, options: dict[str, Any]) -> None:
        from ferroq.cli._worker import _serve_metrics

        q = backend.queue(queue_name)
        if options["metrics_port"] is not None:
            _serve_metrics(q, options["metrics_host"], options["metrics_port"])
        groups = [g.strip() for g in options["groups"].split(",") if g.strip()] if options["groups"] else None
        processes = options["processes"]
        worker = Worker(
            q,
            concurrency=processes or options["concurrency"] or 8,
            pool="process" if processes else "thread",
            lease=options["lease"],
            prefetch=options["prefetch"],
            shutdown_grace=options["shutdown_grace"],
            name=options["name"],
            groups=groups,
            unknown_task_grace=options["unknown_task_grace"],
            before_run=before_run,
            after_run=after_run,
        )
        stats = worker.run(until_idle=options["until_idle"], until_empty=options["until_empty"])
        logging.getLogger("ferroq.cli").info("done: %s", stats)
