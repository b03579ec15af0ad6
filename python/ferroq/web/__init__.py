"""The live web dashboard and progress streams (``pip install 'ferroq[web]'``).

``create_app(queue_or_path, read_only=..., auth=..., redact=...)`` is an ASGI app (Starlette)
to mount in any ASGI site, or to serve with ``ferroq dashboard``. Its
``GET {root}/api/tasks/{id}/stream`` streams one task's progress to your own pages, with
``{root}/static/ferroq-progress.js`` as the browser client."""

from __future__ import annotations

try:
    import jinja2  # noqa: F401 - checked here for a clear message
    import starlette  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(f"ferroq.web needs the web extra: pip install 'ferroq[web]' ({e})") from None

from .app import Dashboard, create_app
from .security import Credentials
from .stream import Timing
from .views import hide_payloads

__all__ = ["create_app", "Credentials", "Timing", "Dashboard", "hide_payloads"]
