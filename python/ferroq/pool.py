"""Moved to ``ferroq.worker.process_pool``; this name stays importable."""

from .worker.process_pool import START_METHOD, ChildError, ProcessPool, Slot, check_importable

__all__ = ["START_METHOD", "ChildError", "ProcessPool", "Slot", "check_importable"]
