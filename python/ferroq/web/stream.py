"""Live updates: one tail of the file per app (so per server process), fanned out to every
Server-Sent Events stream.

The tail is a thread that waits on the file's change notifications (``Queue.wait_for_change``:
commits by any process, seen within about a millisecond), reads new events after the last id
it published, and hands each subscriber (an asyncio queue on the server's loop) the events and
a ``change`` tick. A stream's ``id:`` is the event's id in the file, so a browser that
reconnects sends ``Last-Event-ID`` (or ``?after=``) and resumes from ``Queue.events(after=)``:
nothing is lost or repeated across a reconnect or a server restart."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import orjson

from ..errors import FerroqError, StorageError, UnknownTask
from ..groups import Event
from ..queue import Queue
from .views import Redact, event_view, task_view

__all__ = ["Tail", "Timing", "sse", "dashboard_stream", "task_stream"]

#: A subscriber further behind than this many items (a read's events, or a change tick) is
#: dropped: its stream ends and the browser resumes from the file (by Last-Event-ID), so a
#: slow client costs no memory.
BACKLOG_MAX = 2_000
#: Commits closer together than this are read as one batch (a burst is one read, one tick).
BATCH_WINDOW = 0.05
FINAL = {"completed": "result", "dead": "failed", "cancelled": "cancelled"}


@dataclass(frozen=True)
class Timing:
    """Stream timing: a keep-alive comment every ``keepalive`` seconds (proxies close idle
    connections), and each stream ends after ``lifetime`` seconds (the client reconnects at
    once): no connection outlives a deploy or sticks to a dead server."""

    keepalive: float = 15.0
    lifetime: float = 60.0
    #: The reconnection delay a browser's own EventSource uses (ours has its own backoff).
    retry_ms: int = 1000


@dataclass(frozen=True)
class _Message:
    """An event as every stream sends it: encoded once by the tail, shared by all."""

    id: int
    kind: str
    sse: bytes


@dataclass(eq=False)
class _Subscriber:
    loop: asyncio.AbstractEventLoop
    items: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    dropped: bool = False


class Tail:
    """The one reader of the file's new events in this process (per app)."""

    def __init__(self, queue: Queue, *, idle_exit: float = 5.0) -> None:
        self.queue = queue
        self.idle_exit = idle_exit
        self._subscribers: set[_Subscriber] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        #: Set once the running tail has its cursor: events after it will be published.
        self.ready = threading.Event()
        self.cursor = 0

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> _Subscriber:
        sub = _Subscriber(asyncio.get_running_loop())
        with self._lock:
            self._subscribers.add(sub)
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self.ready.clear()
                self._thread = threading.Thread(target=self._run, name="ferroq-web-tail", daemon=True)
                self._thread.start()
        return sub

    def unsubscribe(self, sub: _Subscriber) -> None:
        with self._lock:
            self._subscribers.discard(sub)

    def end_streams(self) -> None:
        """Ends every open stream now with its ``end`` message (a server shutting down: the
        browsers reconnect instead of being cut off mid-stream)."""
        self._publish(("end", None))

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _publish(self, item: tuple[str, Any]) -> None:
        for sub in list(self._subscribers):
            if sub.dropped:
                continue
            if sub.items.qsize() > BACKLOG_MAX:
                sub.dropped = True
                item_ = ("dropped", None)
            else:
                item_ = item
            try:
                sub.loop.call_soon_threadsafe(sub.items.put_nowait, item_)
            except RuntimeError:  # its loop is closed: the server stopped
                self.unsubscribe(sub)

    def _run(self) -> None:
        q, idle_since = self.queue, None
        token = q.change_token()
        self.cursor = self._start_cursor()
        self.ready.set()
        while not self._stop.is_set():
            if not self._subscribers:
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > self.idle_exit:
                    with self._lock:
                        if not self._subscribers:
                            self._thread = None
                            return
            else:
                idle_since = None
            if q.wait_for_change(token, 0.5):
                self._stop.wait(BATCH_WINDOW)
                # The token before the read: a commit made while we read and publish wakes
                # the next wait (taken after, such a commit would wait for another one).
                token = q.change_token()
                self._read_new()
                self._publish(("change", None))

    def _start_cursor(self) -> int:
        while not self._stop.is_set():
            try:
                return self.queue.last_event_id()
            except StorageError:
                self._stop.wait(1.0)
        return 0

    def _read_new(self) -> None:
        while True:
            try:
                events = self.queue.events(after=self.cursor, limit=1000)
            except StorageError:
                return  # the file is busy or gone for now: the next change retries
            # One item per read for every stream, not one per event: a wake-up of the
            # server's loop per event and stream made a burst cost the server a core.
            messages = [_Message(e.id, e.kind, sse(data=event_view(e), event="ferroq", id=e.id)) for e in events]
            if messages:
                self.cursor = messages[-1].id
                self._publish(("events", messages))
            if len(events) < 1000:
                return


def sse(*, data: Any, event: str | None = None, id: int | None = None) -> bytes:
    """One Server-Sent Events message (data as one line of JSON: no newline can split it)."""
    head = (f"id: {id}\n" if id is not None else "") + (f"event: {event}\n" if event else "")
    return head.encode() + b"data: " + orjson.dumps(data, default=str) + b"\n\n"


async def _next(sub: _Subscriber, timeout: float) -> tuple[str, Any] | None:
    try:
        return await asyncio.wait_for(sub.items.get(), timeout)
    except asyncio.TimeoutError:
        return None


async def _backlog(queue: Queue, after: int) -> AsyncIterator[Event]:
    while True:
        events = await asyncio.to_thread(queue.events, after=after, limit=1000)
        for event in events:
            after = event.id
            yield event
        if len(events) < 1000:
            return


async def dashboard_stream(
    tail: Tail, after: int | None, kinds: frozenset[str] | None, timing: Timing
) -> AsyncIterator[bytes]:
    """The dashboard's stream: every event after ``after`` (None: from now on) as it is
    recorded, with ``id:`` = its id, and a ``change`` message (no id) when anything commits."""
    sub = tail.subscribe()
    try:
        yield f"retry: {timing.retry_ms}\n\n".encode()
        # The backlog is read once the tail has its cursor: whatever the backlog does not
        # reach, the tail publishes (a tail started after the read would skip the events
        # committed in between).
        await asyncio.to_thread(tail.ready.wait, 10.0)
        if after is None:
            after = await asyncio.to_thread(tail.queue.last_event_id)
        async for event in _backlog(tail.queue, after):
            after = event.id
            if kinds is None or event.kind in kinds:
                yield sse(data=event_view(event), event="ferroq", id=event.id)
        yield sse(data={"last_event_id": after}, event="hello")
        async for chunk in _live(sub, after, kinds, timing):
            yield chunk
    finally:
        tail.unsubscribe(sub)


#: Messages gathered into one chunk before it is written (a burst goes out in few writes).
CHUNK_MAX = 500
_CHANGE = sse(data={}, event="change")


async def _live(sub: _Subscriber, after: int, kinds: frozenset[str] | None, timing: Timing) -> AsyncIterator[bytes]:
    end = time.monotonic() + timing.lifetime
    while (left := end - time.monotonic()) > 0:
        item = await _next(sub, min(left, timing.keepalive))
        if item is None:
            if end - time.monotonic() > 0:
                yield b": keep-alive\n\n"
            continue
        chunk: list[bytes] = []
        changed = False
        while item is not None:
            kind, value = item
            if kind == "dropped":
                return  # too far behind: the client resumes from the file
            if kind == "end":
                if chunk:
                    yield b"".join(chunk)
                yield sse(data={"reason": "the server is stopping: reconnect"}, event="end")
                return
            if kind == "change":
                changed = True
            else:
                for message in value:
                    if message.id > after:  # the backlog may have sent it already
                        after = message.id
                        if kinds is None or message.kind in kinds:
                            chunk.append(message.sse)
            item = sub.items.get_nowait() if not sub.items.empty() and len(chunk) < CHUNK_MAX else None
        if changed and sub.items.empty():  # one change message after the events it follows
            chunk.append(_CHANGE)
        if chunk:
            yield b"".join(chunk)
    yield sse(data={"reason": "stream lifetime reached: reconnect"}, event="end")


async def task_stream(tail: Tail, task_id: int | None, redact: Redact | None, timing: Timing) -> AsyncIterator[bytes]:
    """One task's stream: ``status`` when it changes, ``progress`` (fraction, message) when it
    moves, then one final ``result``/``failed``/``cancelled`` event and the end; an unknown
    id gets one ``task_error`` event with status 404."""
    q = tail.queue
    sub = tail.subscribe()
    try:
        yield f"retry: {timing.retry_ms}\n\n".encode()
        await asyncio.to_thread(tail.ready.wait, 10.0)  # a change after our first read wakes us
        end = time.monotonic() + timing.lifetime
        last: dict[str, Any] = {}
        while True:
            try:
                if task_id is None:
                    raise UnknownTask("no such task")
                info = await asyncio.to_thread(q.get, task_id)
            except (UnknownTask, FerroqError) as e:
                status = 404 if isinstance(e, UnknownTask) or task_id is None else 500
                yield sse(
                    data={"status": status, "error": str(e) if task_id is not None else "bad task id"},
                    event="task_error",
                )
                return
            view = task_view(info, redact)
            for chunk in _task_changes(view, last):
                yield chunk
            if view["status"] in FINAL:
                yield _final(view)
                return
            waited = await _wait_tick(sub, end, timing)
            if waited == "end":
                yield sse(data={"reason": "stream lifetime reached: reconnect"}, event="end")
                return
            if waited == "keepalive":
                yield b": keep-alive\n\n"
    finally:
        tail.unsubscribe(sub)


def _task_changes(view: dict[str, Any], last: dict[str, Any]) -> list[bytes]:
    out = []
    if view["status"] != last.get("status") or view["attempts"] != last.get("attempts"):
        out.append(
            sse(
                data={
                    "id": view["id"],
                    "status": view["status"],
                    "attempts": view["attempts"],
                    "max_attempts": view["max_attempts"],
                    "error": view["error"],
                },
                event="status",
            )
        )
    progress = (view["progress"], view["progress_message"])
    if view["progress"] is not None and progress != last.get("progress"):
        out.append(
            sse(
                data={"id": view["id"], "progress": view["progress"], "message": view["progress_message"]},
                event="progress",
            )
        )
    last.update(status=view["status"], attempts=view["attempts"], progress=progress)
    return out


def _final(view: dict[str, Any]) -> bytes:
    kind = FINAL[view["status"]]
    data: dict[str, Any] = {"id": view["id"], "status": view["status"]}
    if kind == "result":
        data["result"] = view["result"]
    elif kind == "failed":
        data["error"] = view["error"]
    return sse(data=data, event=kind)


async def _wait_tick(sub: _Subscriber, end: float, timing: Timing) -> str:
    """Waits for the next change anywhere in the file (then the task is read again):
    "tick", "keepalive" (nothing for a while) or "end" (the stream's lifetime is over)."""
    left = end - time.monotonic()
    if left <= 0:
        return "end"
    item = await _next(sub, min(left, timing.keepalive))
    ending = item is not None and item[0] == "end"
    while not sub.items.empty():  # a burst: one read for all of it
        ending = ending or sub.items.get_nowait()[0] == "end"
    if ending:
        return "end"
    if item is None:
        return "end" if end - time.monotonic() <= 0 else "keepalive"
    return "tick"
