"""A minimal Django project made from the README's Django blocks (settings, tasks), plus
the tests' own tasks: for tests/test_django_backend.py and tests/django_smoke.py."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
#: The README's Django blocks by name: ``<!-- django: NAME -->`` before a ```py block.
BLOCKS = dict(re.findall(r"<!-- django: (.+?) -->\n```py\n(.*?)```", README.read_text(), re.S))

SETTINGS_HEAD = """\
import importlib.util
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "test only"
USE_TZ = True
# The backport is an app (its signals' logging); Django 6 has the framework built in.
INSTALLED_APPS = [] if importlib.util.find_spec("django.tasks") else ["django_tasks"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "django.sqlite3"}}
"""

MANAGE_PY = """\
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
"""

#: Tasks of the tests (a module outside any app: the worker finds them by import path).
JOBS = """\
import asyncio
import os

try:
    from django.tasks import task
except ImportError:
    from django_tasks import task

RAN = []  # in this process, in order


@task()
def add(a, b):
    RAN.append(("add", a, b))
    return a + b


@task(priority=-100)
def low(tag):
    RAN.append(tag)


@task(priority=100)
def high(tag):
    RAN.append(tag)


@task(max_attempts=2)
def flaky(marker):
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise ConnectionError("the first attempt fails")
    return "second time lucky"


@task(max_attempts=1)
def boom():
    raise ValueError("no good")


@task()
def not_json():
    return {1, 2}


@task()
async def double(x):
    await asyncio.sleep(0)
    return x * 2


@task(takes_context=True)
def with_context(context, x):
    return {"attempt": context.attempt, "id": context.task_result.id, "x": x}


@task(max_attempts=7, resource_group="smtp", timeout=30)
def extras(x):
    return x


@task()
def open_db():
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("select 1")
    return connection.connection is not None


@task()
def db_closed():
    from django.db import connection

    return connection.connection is None


@task()
def in_child():
    from django.apps import apps
    from django.conf import settings

    return {"pid": os.getpid(), "ready": apps.ready, "secret": settings.SECRET_KEY}
"""


def make_project(root: Path) -> Path:
    """A Django project from the README's blocks: proj/settings.py, shop/tasks.py, plus the
    tests' jobs.py."""
    (root / "proj").mkdir(parents=True)
    (root / "shop").mkdir()
    (root / "manage.py").write_text(MANAGE_PY)
    (root / "proj" / "__init__.py").write_text("")
    (root / "proj" / "settings.py").write_text(SETTINGS_HEAD + "\n" + BLOCKS["settings.py"])
    (root / "shop" / "__init__.py").write_text("")
    (root / "shop" / "tasks.py").write_text(BLOCKS["shop/tasks.py"])
    (root / "jobs.py").write_text(JOBS)
    return root
