"""Shared fixtures for the ferroq test suite. Kept small and generic on purpose."""

from __future__ import annotations

from pathlib import Path

import pytest

import ferroq


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A path for a fresh queue database (the file does not exist yet)."""
    return tmp_path / "queue.db"


@pytest.fixture
def queue(db_path: Path) -> ferroq.Queue:
    """A fresh queue on ``db_path``; durability="normal" keeps the tests fast."""
    return ferroq.Queue(db_path, durability="normal")
