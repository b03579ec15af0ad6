"""The Django backend in a fresh virtualenv (``make django-smoke``: Django 6 on Python 3.12,
where ``django.tasks`` is built in): the README's project, ``manage.py ferroq_worker`` and
results read back, run with this interpreter. Exits non-zero on any failure.

    python tests/django_smoke.py [--expect django.tasks]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from django_project import BLOCKS, make_project

CHECKS = textwrap.dedent("""\
    import asyncio
    import jobs
    from ferroq.contrib.django import _compat

    async def produce():
        return await asyncio.gather(*(jobs.double.aenqueue(i) for i in range(5)))

    ids = [r.id for r in asyncio.run(produce())]
    boom = jobs.boom.enqueue()
    context = jobs.with_context.enqueue(x=1)
    print(_compat.FRAMEWORK, *ids, boom.id, context.id)
""")


def manage(root: Path, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p))
    env.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise SystemExit(f"manage.py {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def main() -> None:
    expect = sys.argv[sys.argv.index("--expect") + 1] if "--expect" in sys.argv else None
    with tempfile.TemporaryDirectory() as tmp:
        root = make_project(Path(tmp) / "site")
        manage(root, "shell", "-v", "0", "-c", BLOCKS["enqueue"])
        framework, *ids = manage(root, "shell", "-v", "0", "-c", CHECKS).split()
        if expect is not None and framework != expect:
            raise SystemExit(f"the backend found {framework}, expected {expect}")
        manage(root, "ferroq_worker", "--until-empty", "--log-level", "warning")
        manage(
            root,
            "ferroq_worker",
            "--queue-name",
            "emails",
            "--until-empty",
            "--processes",
            "1",
            "--log-level",
            "warning",
        )
        manage(root, "shell", "-v", "0", "-c", BLOCKS["results"])
        *doubled, boom, context = ids
        manage(
            root,
            "shell",
            "-v",
            "0",
            "-c",
            textwrap.dedent(f"""\
            import jobs
            assert [jobs.double.get_result(i).return_value for i in {doubled!r}] == [0, 2, 4, 6, 8]
            failed = jobs.boom.get_result({boom!r})
            assert failed.status == "FAILED" and failed.errors[0].exception_class is ValueError
            assert jobs.with_context.get_result({context!r}).return_value["attempt"] == 1
        """),
        )
        import django

        print(f"django smoke test passed: Django {django.get_version()}, {framework}, Python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
