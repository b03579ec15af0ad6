"""The dashboard's guards, as one ASGI middleware: credentials (compared in constant time),
same-origin checks on state changes, read-only mode, and the security headers with a
per-request CSP nonce (templates read it from ``request.state.nonce``)."""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import InvalidArgument

__all__ = ["Credentials", "SecurityMiddleware", "csp"]


@dataclass(frozen=True)
class Credentials:
    """Who may use the dashboard: HTTP Basic ``user``/``password``, or a ``token`` sent as
    ``Authorization: Bearer T`` (or as the Basic password, whatever the user name, so a
    browser's login prompt works too)."""

    user: str | None = None
    password: str | None = None
    token: str | None = None

    @classmethod
    def parse(cls, auth: str | Credentials | None) -> Credentials | None:
        """``"USER:PASS"`` (or a ``Credentials``) -> Credentials; None stays None."""
        if auth is None or isinstance(auth, Credentials):
            return auth
        if not isinstance(auth, str) or ":" not in auth:
            raise InvalidArgument('auth must be "USER:PASS" (or a ferroq.web.Credentials)')
        user, _, password = auth.partition(":")
        if not user or not password:
            raise InvalidArgument('auth must be "USER:PASS" with both parts non-empty')
        return cls(user=user, password=password)

    @classmethod
    def from_token(cls, token: str) -> Credentials:
        token = token.strip()
        if len(token) < 16:
            raise InvalidArgument("the dashboard token must be at least 16 characters (e.g. `openssl rand -hex 32`)")
        return cls(token=token)

    def allows(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries these credentials. Every comparison
        runs (no early return on the user name), each in constant time."""
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "bearer":
            return self.token is not None and _same(value, self.token)
        if scheme != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        if self.token is not None:
            return _same(password, self.token)
        user_ok = _same(user, self.user or "")
        password_ok = _same(password, self.password or "")
        return user_ok & password_ok


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def csp(nonce: str) -> str:
    """Scripts only with this response's nonce, styles and everything else only from the
    dashboard itself, no framing, no plugins, no inline anything."""
    return (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )


_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def cross_site(headers: Headers) -> bool:
    """A browser's state-changing request from another site. Browsers send ``Sec-Fetch-Site``
    (newer) or ``Origin`` on every POST; a request with neither is not from a browser page
    (curl, a script holding the credentials) and so not a forgery."""
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site not in ("same-origin", "none")
    origin = headers.get("origin")
    if origin is None:
        return False
    host = headers.get("host", "")
    parts = urlsplit(origin)
    return origin == "null" or parts.netloc.lower() != host.lower()


class SecurityMiddleware:
    def __init__(self, app: ASGIApp, *, credentials: Credentials | None, read_only: bool) -> None:
        self.app = app
        self.credentials = credentials
        self.read_only = read_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self._refusal(scope, headers)
        nonce = secrets.token_urlsafe(16)
        scope.setdefault("state", {})["nonce"] = nonce

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = message.setdefault("headers", [])
                out.extend(
                    [
                        (b"content-security-policy", csp(nonce).encode()),
                        (b"x-content-type-options", b"nosniff"),
                        (b"x-frame-options", b"DENY"),
                        (b"referrer-policy", b"same-origin"),
                        (b"cache-control", b"no-store"),
                    ]
                )
            await send(message)

        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def _refusal(self, scope: Scope, headers: Headers) -> Response | None:
        if self.credentials is not None and not self.credentials.allows(headers.get("authorization")):
            return Response(
                "authentication required\n",
                status_code=401,
                media_type="text/plain",
                headers={"WWW-Authenticate": 'Basic realm="ferroq", charset="UTF-8"'},
            )
        if scope["method"] in _UNSAFE:
            if cross_site(headers):
                return JSONResponse({"error": "cross-site request refused"}, status_code=403)
            if self.read_only:
                return JSONResponse({"error": "the dashboard is read-only"}, status_code=403)
        return None
