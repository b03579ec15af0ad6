"""The shipped types stay honest: stubs match the extension, the package type-checks."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_core_stub_matches_the_extension() -> None:
    done = run("mypy.stubtest", "ferroq._core")
    assert done.returncode == 0, done.stdout + done.stderr


def test_package_and_a_user_module_type_check(tmp_path: Path) -> None:
    user = tmp_path / "user.py"
    user.write_text(
        "import ferroq\n"
        "q = ferroq.Queue('x.db')\n"
        "@q.task\n"
        "def f(a: int, b: str = 'x') -> float:\n"
        "    return 1.0\n"
        "h: ferroq.TaskHandle[float] = f.enqueue(1, b='y')\n"
        "r: float = h.result()\n"
        "f.enqueue('not an int')  # E: wrong argument type\n"
        "@q.task(priority=1)\n"
        "async def g(a: int) -> str:\n"
        "    return ''\n"
        "s: str = g.enqueue(1).result()  # an async task's result is the awaited value\n"
        "f.using(colour='red')  # E: using() options are typed (at run time: InvalidArgument)\n"
        "async def main() -> None:\n"
        "    h2: ferroq.TaskHandle[float] = await f.aenqueue(1, b='y')\n"
        "    r2: float = await h2.aresult(timeout=1.0)\n"
        "    await f.aenqueue('not an int')  # E: the async variants keep the signature\n"
        "    s2: str = await (await g.using(priority=2).aenqueue(1)).aresult()\n"
        "    ids: list[int] = await q.aenqueue_many([f.call(1)])\n"
        "    kinds = [e.kind async for e in q.aevents(kinds=['dead'])]\n"
        "    info: ferroq.TaskInfo = await q.aget(ids[0])\n"
    )
    done = run("mypy", "--strict", "python/ferroq", str(user))
    out = done.stdout
    # The only errors are the deliberate ones: signatures survive the decorator.
    assert "user.py:8: error" in out and 'incompatible type "str"; expected "int"' in out, out
    assert "user.py:13: error" in out and '"colour"' in out, out
    assert "user.py:17: error" in out, out
    assert out.count("error:") == 3, out
