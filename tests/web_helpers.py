"""Calling the dashboard's ASGI app in-process with httpx (no server, no thread)."""

from __future__ import annotations

import asyncio
import base64
import re
from typing import Any

import httpx

XSS = "<img src=x onerror=alert(1)></script><script>alert(2)</script>"


def call(app: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8555") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def get(app: Any, path: str, **kwargs: Any) -> httpx.Response:
    return call(app, "GET", path, **kwargs)


def post(app: Any, path: str, json: Any = None, *, site: str | None = "same-origin", **kwargs: Any) -> httpx.Response:
    headers = dict(kwargs.pop("headers", {}))
    if site is not None:
        headers["Sec-Fetch-Site"] = site
    return call(app, "POST", path, json=json if json is not None else {}, headers=headers, **kwargs)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def sse_messages(text: str) -> list[dict[str, str]]:
    """The messages of an event stream body: each as {"event", "id", "data"} (comments
    as {"comment"})."""
    out = []
    for block in re.split(r"\n\n", text):
        msg: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                msg["comment"] = line[1:].strip()
            else:
                key, _, value = line.partition(": ")
                msg[key] = value
        if msg:
            out.append(msg)
    return out
