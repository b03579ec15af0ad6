"""Every Python example in the README runs as written on PostgreSQL too: its queue file
swapped for a fresh schema on the test server (the same API, the same outcomes)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

# Real processes (the examples' own workers, some with process pools).
pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
QUEUE_FILE = re.compile(r"""Queue\((["'])[\w.-]+\.db\1""")


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs_on_postgres(code: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if not QUEUE_FILE.search(code):
        pytest.skip("this example opens no queue")
    url: str = request.getfixturevalue("pg_url")  # only for the examples that open a queue
    script = tmp_path / "example.py"
    script.write_text(QUEUE_FILE.sub(lambda _: f"Queue({url!r}", code))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
