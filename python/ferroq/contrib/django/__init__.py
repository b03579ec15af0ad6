"""ferroq as a backend of Django's task framework (``django.tasks`` in Django 6, or the
``django-tasks`` backport): see the README's "Django" section.

    TASKS = {"default": {"BACKEND": "ferroq.contrib.django.FerroqBackend",
                         "OPTIONS": {"path": BASE_DIR / "tasks.db"}}}

and ``"ferroq.contrib.django"`` in INSTALLED_APPS for ``python manage.py ferroq_worker``.
"""

from .backend import FerroqBackend, FerroqTask

__all__ = ["FerroqBackend", "FerroqTask"]
