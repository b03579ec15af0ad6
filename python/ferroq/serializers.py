"""Payload and result encoding. JSON (orjson) by default; nothing is ever unpickled
unless the user passes a serializer that does so."""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from .errors import PayloadError

__all__ = ["Serializer", "JsonSerializer"]


class Serializer(Protocol):
    """Turns payloads and results into bytes and back."""

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class JsonSerializer:
    """orjson: fast, strict JSON. Also encodes dataclasses, datetimes, UUIDs and enums."""

    def dumps(self, value: Any) -> bytes:
        try:
            return orjson.dumps(value)
        except TypeError as e:  # orjson.JSONEncodeError subclasses TypeError
            raise PayloadError(f"not JSON-serializable: {e}") from None

    def loads(self, data: bytes) -> Any:
        return orjson.loads(data)
