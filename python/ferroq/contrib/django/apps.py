"""The Django app (for ``manage.py ferroq_worker``)."""

from django.apps import AppConfig


class FerroqConfig(AppConfig):  # type: ignore[misc]  # (AppConfig is Any to mypy without Django's types)
    name = "ferroq.contrib.django"
    label = "ferroq"
    verbose_name = "ferroq"
