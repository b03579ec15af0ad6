"""The PostgreSQL test server, for the tests of that engine: ``FERROQ_TEST_PG_URL`` names it
(``tests/pg_cluster.py run -- CMD`` starts a throw-away cluster and sets it). Without one,
those tests are skipped loudly, except under CI (``CI=true``), which must run them."""

from __future__ import annotations

import os
import uuid

import pytest


def server_url() -> str:
    url = os.environ.get("FERROQ_TEST_PG_URL", "")
    if url:
        return url
    if os.environ.get("CI") == "true":
        pytest.fail("FERROQ_TEST_PG_URL is not set: CI must run the PostgreSQL suite")
    pytest.skip("PostgreSQL suite SKIPPED: FERROQ_TEST_PG_URL is not set (run under tests/pg_cluster.py)")


def fresh_queue_url() -> str:
    """The server's URL with a schema of its own: a fresh, empty queue database."""
    url = server_url()
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}schema=t_{uuid.uuid4().hex[:16]}"
