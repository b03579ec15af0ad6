"""The dashboard's server side, through every route with an in-process httpx client: pages,
JSON API, actions, security (auth, same-origin, read-only, headers), streams."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

import ferroq
from ferroq.testing import drain
from ferroq.web import Credentials, Timing, create_app

from web_helpers import XSS, basic, get, post, sse_messages

PAGES = ["/", "/groups", "/tasks", "/workers", "/events"]
FAST = Timing(keepalive=0.2, lifetime=1.0)


@pytest.fixture
def q(tmp_path: Path) -> ferroq.Queue:
    queue = ferroq.Queue(tmp_path / "web.db", durability="normal", events="all")

    @queue.task(name="work")
    def work(x: object) -> object:
        return {"echo": x}

    @queue.task(name=f"evil{XSS}", resource_group=f"g{XSS}", max_attempts=1)
    def evil(x: object) -> None:
        raise ValueError(f"bad {XSS}")

    return queue


@pytest.fixture
def filled(q: ferroq.Queue) -> dict[str, int]:
    ok = q.enqueue("work", 1).id
    bad = q.enqueue(f"evil{XSS}", XSS).id
    drain(q)
    pending = q.enqueue("work", 2).id
    return {"ok": ok, "bad": bad, "pending": pending}


def test_every_page_renders_with_strict_headers(q: ferroq.Queue, filled: dict[str, int]) -> None:
    app = create_app(q, timing=FAST)
    for path in [*PAGES, f"/tasks/{filled['ok']}", f"/tasks/{filled['bad']}"]:
        r = get(app, path)
        assert r.status_code == 200, (path, r.text)
        csp = r.headers["content-security-policy"]
        nonce = re.search(r"'nonce-([^']+)'", csp)
        assert nonce, csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "frame-ancestors 'none'" in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["cache-control"] == "no-store"
        scripts = re.findall(r"<script([^>]*)>", r.text)
        assert scripts and all(f'nonce="{nonce.group(1)}"' in s for s in scripts), (path, scripts)
    assert get(app, "/").headers["content-security-policy"] != get(app, "/").headers["content-security-policy"]


def test_task_data_is_escaped_everywhere(q: ferroq.Queue, filled: dict[str, int]) -> None:
    app = create_app(q, timing=FAST)
    for path in [*PAGES, f"/tasks/{filled['bad']}", "/tasks?q=evil", "/events?kind=dead"]:
        html = get(app, path).text
        assert "<img src=x" not in html and "<script>alert" not in html, path
    detail = get(app, f"/tasks/{filled['bad']}").text
    assert "&lt;img src=x onerror=alert(1)&gt;" in detail  # shown, as text
    assert "ValueError" in detail and "Traceback" in detail


def test_json_api(q: ferroq.Queue, filled: dict[str, int]) -> None:
    app = create_app(q, timing=FAST)
    overview = get(app, "/api/overview").json()["queues"]
    assert overview[0]["queue"] == "default"
    assert overview[0]["counts"] == {"pending": 1, "running": 0, "completed": 1, "dead": 1, "cancelled": 0}
    tasks = get(app, "/api/tasks").json()
    assert [t["id"] for t in tasks["tasks"]] == [filled["pending"], filled["bad"], filled["ok"]]  # newest first
    assert get(app, "/api/tasks?status=dead").json()["tasks"][0]["error"]["message"] == f"bad {XSS}"
    assert [t["id"] for t in get(app, "/api/tasks?name=work").json()["tasks"]] == [filled["pending"], filled["ok"]]
    assert [t["id"] for t in get(app, f"/api/tasks?group=g{XSS}").json()["tasks"]] == [filled["bad"]]
    detail = get(app, f"/api/tasks/{filled['ok']}").json()
    assert detail["task"]["result"] == {"echo": 1} and detail["task"]["args"] == [1]
    assert [h["to"] for h in detail["history"]] == ["pending", "running", "completed"]
    assert "default" in {g["name"] for g in get(app, "/api/groups").json()["groups"]}
    assert get(app, "/api/workers").json()["workers"][0]["pool"]
    kinds = [e["kind"] for e in get(app, "/api/events").json()["events"]]
    assert "dead" in kinds and "completed" in kinds
    assert [e["kind"] for e in get(app, "/api/events?kind=dead").json()["events"]] == ["dead"]


def test_keyset_paging_and_search(q: ferroq.Queue) -> None:
    ids = [q.tasks["work"].using(unique_key=f"key-{i}").enqueue({"n": i}).id for i in range(7)]
    app = create_app(q, timing=FAST)
    first = get(app, "/api/tasks?limit=3").json()
    assert [t["id"] for t in first["tasks"]] == ids[::-1][:3]
    second = get(app, f"/api/tasks?limit=3&after={first['next_after']}").json()
    assert [t["id"] for t in second["tasks"]] == ids[::-1][3:6]
    third = get(app, f"/api/tasks?limit=3&after={second['next_after']}").json()
    assert [t["id"] for t in third["tasks"]] == ids[:1] and third["next_after"] is None
    assert [t["id"] for t in get(app, f"/api/tasks?q={ids[2]}").json()["tasks"]] == [ids[2]]
    assert [t["id"] for t in get(app, "/api/tasks?q=key-4").json()["tasks"]] == [ids[4]]  # unique key
    assert [t["id"] for t in get(app, "/api/tasks?q=%22n%22:%205").json()["tasks"]] == []  # compact JSON
    assert [t["id"] for t in get(app, "/api/tasks?q=%22n%22:5").json()["tasks"]] == [ids[5]]  # text in args
    page = get(app, "/tasks?limit=3").text
    assert f"after={ids[4]}" in page  # the "older" link


@pytest.mark.parametrize(
    "path,status",
    [
        ("/tasks/999", 404),
        ("/tasks/abc", 404),
        ("/api/tasks/999", 404),
        ("/api/tasks/abc", 404),
        ("/api/tasks?status=nope", 400),
        ("/api/tasks?after=-1", 400),
        ("/tasks?queue=nope", 404),
        ("/api/tasks?queue=nope", 404),
        ("/api/tasks/bulk/explode", 404),
        ("/api/events?limit=0", 400),
        ("/nowhere", 404),
    ],
)
def test_not_found_and_bad_input(q: ferroq.Queue, path: str, status: int) -> None:
    r = get(create_app(q, timing=FAST), path)
    assert r.status_code == status, r.text
    if path.startswith("/api/"):
        assert r.json()["error"]


def test_task_actions(q: ferroq.Queue, filled: dict[str, int]) -> None:
    app = create_app(q, timing=FAST)
    r = post(app, f"/api/tasks/{filled['bad']}/retry")
    assert r.status_code == 200 and r.json()["status"] == "pending"
    assert post(app, f"/api/tasks/{filled['pending']}/cancel").json()["status"] == "cancelled"
    assert post(app, f"/api/tasks/{filled['ok']}/cancel").status_code == 409  # completed: refused
    assert post(app, "/api/tasks/999/retry").status_code == 404
    assert post(app, f"/api/tasks/{filled['ok']}/explode").status_code == 404
    assert q.get(filled["ok"]).status == "completed"


def test_group_and_queue_actions(q: ferroq.Queue) -> None:
    q.group("api", breaker=ferroq.CircuitBreaker(failure_threshold=3))
    app = create_app(q, timing=FAST)
    assert post(app, "/api/groups/api/pause").json()["group"]["paused"] is True
    assert post(app, "/api/groups/api/resume").json()["group"]["paused"] is False
    assert post(app, "/api/groups/api/open").json()["group"]["circuit"] == "open"
    assert post(app, "/api/groups/api/close").json()["group"]["circuit"] == "closed"
    transitions = get(app, "/api/groups/api/transitions").json()["events"]
    assert [e["kind"] for e in transitions][:2] == ["circuit_closed", "circuit_opened"]  # newest first
    assert post(app, "/api/groups/nope/pause").status_code == 404
    assert post(app, "/api/groups/api/explode").status_code == 404
    assert post(app, "/api/queue/pause").json()["paused"] is True and q.paused
    assert post(app, "/api/queue/resume").json()["paused"] is False and not q.paused


def test_bulk_actions_need_the_count_typed(q: ferroq.Queue) -> None:
    @q.task(name="fail", max_attempts=1)
    def fail() -> None:
        raise RuntimeError("no")

    dead = [q.enqueue("fail").id for _ in range(3)]
    drain(q)
    app = create_app(q, timing=FAST)
    assert get(app, "/api/tasks/bulk/retry?status=dead").json()["count"] == 3
    wrong = post(app, "/api/tasks/bulk/retry", {"status": ["dead"], "confirm": 2})
    assert wrong.status_code == 409 and wrong.json()["count"] == 3
    assert all(q.get(i).status == "dead" for i in dead)
    assert post(app, "/api/tasks/bulk/retry", {"status": ["dead"], "confirm": "3"}).status_code == 409
    done = post(app, "/api/tasks/bulk/retry", {"status": ["dead"], "confirm": 3}).json()
    assert done == {"action": "retry", "done": 3, "matched": 3}
    assert all(q.get(i).status == "pending" for i in dead)
    assert post(app, "/api/tasks/bulk/cancel", {"name": "fail", "confirm": 3}).json()["done"] == 3
    assert get(app, "/api/tasks/bulk/purge?status=cancelled").json()["count"] == 3
    assert post(app, "/api/tasks/bulk/purge", {"status": ["cancelled"], "confirm": 3}).json()["done"] == 3
    assert q.counts()["cancelled"] == 0
    assert get(app, "/api/tasks/bulk/retry?status=pending").status_code == 400  # not retryable
    assert get(app, "/api/tasks/bulk/purge").status_code == 400  # purge names its statuses
    assert post(app, "/api/tasks/bulk/retry", [1, 2]).status_code == 400  # not an object


def test_cross_site_posts_are_refused(q: ferroq.Queue, filled: dict[str, int]) -> None:
    app = create_app(q, timing=FAST)
    path = f"/api/tasks/{filled['pending']}/cancel"
    assert post(app, path, site="cross-site").status_code == 403
    assert post(app, path, site="same-site").status_code == 403
    assert post(app, path, site=None, headers={"Origin": "http://evil.example"}).status_code == 403
    assert post(app, path, site=None, headers={"Origin": "null"}).status_code == 403
    assert q.get(filled["pending"]).status == "pending"
    assert post(app, path, site=None, headers={"Origin": "http://127.0.0.1:8555"}).status_code == 200


def test_read_only_is_enforced_by_the_server(q: ferroq.Queue, filled: dict[str, int]) -> None:
    app = create_app(q, read_only=True, timing=FAST)
    for path in [
        f"/api/tasks/{filled['pending']}/cancel",
        f"/api/tasks/{filled['bad']}/retry",
        "/api/queue/pause",
        "/api/tasks/bulk/retry",
    ]:
        r = post(app, path, {"status": ["dead"], "confirm": 1})
        assert r.status_code == 403 and "read-only" in r.json()["error"], path
    assert q.get(filled["pending"]).status == "pending" and q.get(filled["bad"]).status == "dead"
    assert not q.paused
    assert "data-post" not in get(app, f"/tasks/{filled['pending']}").text
    assert 'id="bulk"' not in get(app, "/tasks").text


def test_read_only_handlers_refuse_without_the_middleware(q: ferroq.Queue, filled: dict[str, int]) -> None:
    """The handlers check read-only themselves: an app whose middleware was left out (or is
    changed one day) still refuses."""
    app = create_app(q, read_only=True, timing=FAST)
    app.user_middleware.clear()
    app.middleware_stack = None
    r = post(app, f"/api/tasks/{filled['pending']}/cancel")
    assert r.status_code == 403 and q.get(filled["pending"]).status == "pending"


def test_auth(q: ferroq.Queue) -> None:
    app = create_app(q, auth="admin:s3cret", timing=FAST)
    for path in ["/", "/api/overview", "/static/dashboard.js"]:
        r = get(app, path)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic"), path
    assert get(app, "/", headers=basic("admin", "wrong")).status_code == 401
    assert get(app, "/", headers=basic("root", "s3cret")).status_code == 401
    assert get(app, "/", headers={"Authorization": "Basic !!!"}).status_code == 401
    assert get(app, "/", headers=basic("admin", "s3cret")).status_code == 200
    assert post(app, "/api/queue/pause", site="cross-site").status_code == 401  # credentials first
    token = "t" * 32
    app = create_app(q, auth=Credentials.from_token(token), timing=FAST)
    assert get(app, "/api/overview", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert get(app, "/api/overview", headers=basic("anyone", token)).status_code == 200
    assert get(app, "/api/overview", headers={"Authorization": "Bearer " + "x" * 32}).status_code == 401
    with pytest.raises(ferroq.InvalidArgument):
        Credentials.from_token("short")
    with pytest.raises(ferroq.InvalidArgument):
        create_app(q, auth="no-colon")


def test_redaction(q: ferroq.Queue, filled: dict[str, int]) -> None:
    app = create_app(q, hide_args=True, timing=FAST)
    task = get(app, f"/api/tasks/{filled['ok']}").json()["task"]
    assert task["args"] == "[hidden]" and task["result"] == "[hidden]"
    assert '"echo"' not in get(app, f"/tasks/{filled['ok']}").text

    def redact(task: ferroq.TaskInfo, field: str, value: object) -> object:
        return "***" if field == "error" else value

    app = create_app(q, redact=redact, timing=FAST)
    assert get(app, f"/api/tasks/{filled['bad']}").json()["task"]["error"] == "***"
    with pytest.raises(ferroq.InvalidArgument):
        create_app(q, redact="nope")  # type: ignore[arg-type]


def test_mounted_under_a_prefix(q: ferroq.Queue, filled: dict[str, int]) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    site = Starlette(routes=[Mount("/ferroq", app=create_app(q, timing=FAST))])
    html = get(site, "/ferroq/tasks").text
    assert 'href="/ferroq/static/dashboard.css"' in html and f'href="/ferroq/tasks/{filled["ok"]}"' in html
    assert 'data-root="/ferroq"' in html
    assert get(site, "/ferroq/static/ferroq-progress.js").status_code == 200
    assert get(site, f"/ferroq/api/tasks/{filled['ok']}").json()["task"]["status"] == "completed"


def test_create_app_from_a_path(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    first = ferroq.Queue(path)
    first.task(name="x")(lambda: None)
    first.enqueue("x")
    assert get(create_app(str(path), timing=FAST), "/api/overview").json()["queues"][0]["counts"]["pending"] == 1
    with pytest.raises(ferroq.InvalidArgument):
        create_app(42)  # type: ignore[arg-type]


# -- streams ------------------------------------------------------------------------------


def test_stream_resumes_after_last_event_id(q: ferroq.Queue, filled: dict[str, int]) -> None:
    app = create_app(q, timing=FAST)
    ids = [e.id for e in q.events(after=0)]
    assert len(ids) >= 4
    for headers, query in [({"Last-Event-ID": str(ids[1])}, ""), ({}, f"?after={ids[1]}")]:
        r = get(app, "/api/stream" + query, headers=headers)
        assert r.headers["content-type"].startswith("text/event-stream")
        msgs = sse_messages(r.text)
        sent = [int(m["id"]) for m in msgs if m.get("event") == "ferroq"]
        assert sent == ids[2:]  # every later event, in order, none twice
        assert all(json.loads(m["data"])["id"] == int(m["id"]) for m in msgs if m.get("event") == "ferroq")
        assert msgs[0] == {"retry": "1000"}
        assert {"comment": "keep-alive"} in msgs  # nothing happened for longer than the keep-alive
        assert msgs[-1]["event"] == "end"  # the lifetime ended it
    kinds = sse_messages(get(app, "/api/stream?after=0&kind=dead").text)
    assert [json.loads(m["data"])["kind"] for m in kinds if m.get("event") == "ferroq"] == ["dead"]
    assert get(app, "/api/stream", headers={"Last-Event-ID": "x"}).status_code == 400


def test_stream_from_now_sends_only_new_events(q: ferroq.Queue, filled: dict[str, int]) -> None:
    msgs = sse_messages(get(create_app(q, timing=FAST), "/api/stream").text)
    assert [m for m in msgs if m.get("event") == "ferroq"] == []
    assert json.loads(next(m for m in msgs if m.get("event") == "hello")["data"]) == {
        "last_event_id": q.last_event_id()
    }


def test_task_stream(q: ferroq.Queue, filled: dict[str, int]) -> None:
    app = create_app(q, timing=FAST)
    msgs = sse_messages(get(app, f"/api/tasks/{filled['ok']}/stream").text)
    assert [m.get("event") for m in msgs[1:]] == ["status", "progress", "result"]  # completion sets 1.0
    assert json.loads(msgs[-1]["data"]) == {"id": filled["ok"], "status": "completed", "result": {"echo": 1}}
    failed = sse_messages(get(app, f"/api/tasks/{filled['bad']}/stream").text)[-1]
    assert failed["event"] == "failed" and json.loads(failed["data"])["error"]["type"] == "ValueError"
    pending = sse_messages(get(app, f"/api/tasks/{filled['pending']}/stream").text)
    assert json.loads(pending[1]["data"])["status"] == "pending" and pending[-1]["event"] == "end"
    for bad in ["999", "abc"]:
        missing = sse_messages(get(app, f"/api/tasks/{bad}/stream").text)
        assert missing[-1]["event"] == "task_error" and json.loads(missing[-1]["data"])["status"] == 404
    q.cancel(filled["pending"])
    assert sse_messages(get(app, f"/api/tasks/{filled['pending']}/stream").text)[-1]["event"] == "cancelled"


def test_task_stream_reports_progress(q: ferroq.Queue) -> None:
    @q.task(name="slow")
    def slow() -> str:
        ferroq.current_task().progress(0.5, "half <b>way</b>")
        return "done"

    tid = q.enqueue("slow").id
    drain(q)
    msgs = sse_messages(get(create_app(q, timing=FAST), f"/api/tasks/{tid}/stream").text)
    progress = [json.loads(m["data"]) for m in msgs if m.get("event") == "progress"]
    assert progress == [{"id": tid, "progress": 1.0, "message": "half <b>way</b>"}]  # completion sets 1.0
    assert msgs[-1]["event"] == "result"


def test_static_client_is_served(q: ferroq.Queue) -> None:
    app = create_app(q, timing=FAST)
    js = get(app, "/static/ferroq-progress.js")
    assert js.status_code == 200 and "watchTask" in js.text and "javascript" in js.headers["content-type"]


# -- the command ----------------------------------------------------------------------------


def _dashboard(*args: str) -> tuple[int, str]:
    from click.testing import CliRunner

    from ferroq.cli import main

    result = CliRunner().invoke(main, ["dashboard", *args])
    return result.exit_code, result.output


def test_command_refuses_other_addresses_without_credentials(q: ferroq.Queue, tmp_path: Path) -> None:
    code, out = _dashboard("--db", q.path, "--host", "0.0.0.0")
    assert code == 2 and "refusing to serve on 0.0.0.0 without --auth or --token-file" in out
    code, out = _dashboard("--db", q.path, "--host", "0.0.0.0", "--auth", "a:b", "--token-file", "x")
    assert code == 2 and "not both" in out
    code, out = _dashboard("--db", q.path, "--host", "::", "--token-file", str(tmp_path / "missing"))
    assert code == 2 and "cannot read --token-file" in out
    (tmp_path / "short").write_text("abc\n")
    code, out = _dashboard("--db", q.path, "--host", "10.1.2.3", "--token-file", str(tmp_path / "short"))
    assert code == 2 and "at least 16 characters" in out
    code, out = _dashboard("--db", q.path, "--auth", "nocolon")
    assert code == 2 and "USER:PASS" in out
    code, out = _dashboard("--db", str(tmp_path / "none.db"))
    assert code == 3 and "no database" in out
    code, out = _dashboard("--db", q.path, "--root-path", "ferroq")
    assert code == 2 and "--root-path must start with /" in out
    assert "Traceback" not in out


def test_a_stopping_server_ends_every_stream(q: ferroq.Queue, filled: dict[str, int]) -> None:
    """end_streams (what `ferroq dashboard` does on SIGTERM) ends the dashboard's and the
    tasks' streams at once with their end message, long before their lifetime."""
    import asyncio

    import httpx

    app = create_app(q, timing=Timing(keepalive=30.0, lifetime=30.0))

    async def main() -> list[str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            streams = [
                asyncio.create_task(client.get(path))
                for path in ["/api/stream", "/api/stream", f"/api/tasks/{filled['pending']}/stream"]
            ]
            while app.state.dashboard.tail.subscribers < 3:
                await asyncio.sleep(0.01)
            app.state.dashboard.tail.end_streams()
            return [r.text for r in await asyncio.wait_for(asyncio.gather(*streams), 10)]

    for body in asyncio.run(main()):
        assert sse_messages(body)[-1]["event"] == "end"


def test_one_tail_fans_out_to_every_stream(q: ferroq.Queue) -> None:
    """Concurrent streams share one reader of the file, and each gets every new event."""
    import asyncio
    import threading

    import httpx

    app = create_app(q, timing=Timing(keepalive=5.0, lifetime=1.5))
    start = q.last_event_id()

    async def main() -> list[str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            before = {t.ident for t in threading.enumerate() if t.name == "ferroq-web-tail"}
            streams = [asyncio.create_task(client.get(f"/api/stream?after={start}")) for _ in range(5)]
            await asyncio.sleep(0.5)
            tails = {t.ident for t in threading.enumerate() if t.name == "ferroq-web-tail"} - before
            assert len(tails) == 1 and app.state.dashboard.tail.subscribers == 5
            await asyncio.to_thread(q.enqueue, "work", "live")  # a commit the tail sees
            return [r.text for r in await asyncio.gather(*streams)]

    bodies = asyncio.run(main())
    new = [e.id for e in q.events(after=start)]
    assert new
    for body in bodies:
        assert [int(m["id"]) for m in sse_messages(body) if m.get("event") == "ferroq"] == new
        assert any(m.get("event") == "change" for m in sse_messages(body))


def test_a_page_reads_a_bounded_number_of_ids(q: ferroq.Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    """A filter that matches few tasks does not read the whole table for one page: the page
    stops after SCAN_IDS ids with a cursor, and the next pages go on from there."""
    from ferroq.web import query

    @q.task(name="rare", max_attempts=1)
    def rare() -> None:
        raise ValueError("x")

    rare_id = q.enqueue("rare").id
    drain(q)
    ids = [q.enqueue("work", i).id for i in range(25)]
    monkeypatch.setattr(query, "WINDOW", 4)
    monkeypatch.setattr(query, "SCAN_IDS", 8)
    app = create_app(q, timing=FAST)
    seen, after, pages = [], None, 0
    while True:
        page = get(app, "/api/tasks?status=dead" + (f"&after={after}" if after else "")).json()
        pages += 1
        seen += [t["id"] for t in page["tasks"]]
        if page["next_after"] is None:
            break
        assert page["note"] and not page["tasks"]
        after = page["next_after"]
    assert seen == [rare_id] and pages == 4  # 26 ids, 8 a page
    assert "go on with Older" in get(app, "/tasks?status=dead").text
    assert [t.id for t in q.list(until_id=ids[1])] == [rare_id, ids[0], ids[1]]
    assert [t.id for t in q.list(newest_first=True, after_id=ids[3], until_id=ids[1])] == [ids[2], ids[1]]
    with pytest.raises(ferroq.InvalidArgument):
        q.list(until_id=-1)


def test_the_tail_reads_what_commits_while_it_publishes(q: ferroq.Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit made while the tail hands out the previous batch (slow with many streams) is
    read without waiting for yet another commit: the last events of a burst arrive."""
    import asyncio

    from ferroq.web import stream

    tail = stream.Tail(q)
    publish = tail._publish
    published = []

    def slow_publish(item: tuple[str, object]) -> None:
        publish(item)
        if item[0] == "events":
            published.append(item)
            if len(published) == 1:
                q.cancel(q.enqueue("work", "during").id)  # commits while the first batch goes out
            time.sleep(0.2)

    monkeypatch.setattr(tail, "_publish", slow_publish)

    async def main() -> list[str]:
        sub = tail.subscribe()
        await asyncio.sleep(0.3)
        await asyncio.to_thread(lambda: q.cancel(q.enqueue("work", "first").id))
        kinds: list[str] = []
        deadline = time.monotonic() + 5
        while "during" not in kinds and time.monotonic() < deadline:
            try:
                kind, value = await asyncio.wait_for(sub.items.get(), 0.5)
            except asyncio.TimeoutError:
                continue
            for message in value if kind == "events" else []:
                if message.kind == "enqueued":
                    event = json.loads(message.sse.split(b"data: ", 1)[1])
                    kinds.append(q.get(event["task_id"]).args[0])
        tail.unsubscribe(sub)
        return kinds

    try:
        assert asyncio.run(main()) == ["first", "during"]
    finally:
        tail.close()


def test_streams_only(q: ferroq.Queue, filled: dict[str, int]) -> None:
    """For a public site: the task streams and the client script, nothing else."""
    app = create_app(q, streams_only=True, timing=FAST)
    for path in [*PAGES, "/api/tasks", "/api/overview", f"/api/tasks/{filled['ok']}", "/api/events"]:
        assert get(app, path).status_code == 404, path
    assert post(app, f"/api/tasks/{filled['pending']}/cancel").status_code in (403, 404, 405)
    assert q.get(filled["pending"]).status == "pending"
    assert sse_messages(get(app, f"/api/tasks/{filled['ok']}/stream").text)[-1]["event"] == "result"
    assert get(app, "/static/ferroq-progress.js").status_code == 200


def test_a_stream_loses_no_event_while_the_tail_starts(q: ferroq.Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    """An event committed after a stream read its backlog but before the (new) tail took its
    cursor reaches the stream: the stream reads its backlog only once the tail is ready."""
    from ferroq.web import stream

    start = q.last_event_id()
    committed: list[int] = []
    original = stream.Tail._start_cursor

    def slow_start(self: stream.Tail) -> int:
        time.sleep(0.3)  # long after the stream could have read its backlog
        committed.append(q.enqueue("work", "between").id)
        return original(self)

    monkeypatch.setattr(stream.Tail, "_start_cursor", slow_start)
    body = get(create_app(q, timing=FAST), f"/api/stream?after={start}").text
    task_ids = [json.loads(m["data"])["task_id"] for m in sse_messages(body) if m.get("event") == "ferroq"]
    assert task_ids == committed
