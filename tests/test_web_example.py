"""The README's FastAPI progress-bar example: its endpoint enqueues, its page loads our
client, and the mounted task stream reports progress and the result."""

from __future__ import annotations

import importlib.util
import json
import threading
from pathlib import Path

import pytest

import ferroq
from web_helpers import get, post, sse_messages

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fastapi_progress.py"


def test_the_progress_example_streams_a_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("fastapi")
    monkeypatch.chdir(tmp_path)  # the example's reports.db lands here
    spec = importlib.util.spec_from_file_location("fastapi_progress", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    try:
        made = post(example.app, "/reports?pages=3", site=None)
        assert made.status_code == 202
        task_id = made.json()["id"]
        page = get(example.app, f"/reports/{task_id}").text
        assert "/ferroq/static/ferroq-progress.js" in page and f'watchTask("/ferroq", {task_id},' in page
        assert "FerroqProgress" in get(example.app, "/ferroq/static/ferroq-progress.js").text
        worker = threading.Thread(
            target=ferroq.Worker(example.q, handle_signals=False).run, kwargs={"until_empty": True}
        )
        worker.start()
        worker.join()
        msgs = sse_messages(get(example.app, f"/ferroq/api/tasks/{task_id}/stream").text)
        assert [m.get("event") for m in msgs[1:]] == ["status", "progress", "result"]
        assert json.loads(msgs[2]["data"])["message"] == "page 3 of 3"
        assert json.loads(msgs[-1]["data"])["result"] == "report-3.pdf"
    finally:
        example.q.close()


def test_the_progress_example_is_the_one_in_the_readme() -> None:
    readme = (EXAMPLE.parent.parent / "README.md").read_text()
    assert EXAMPLE.read_text() in readme
