"""Waiting in tests: poll a condition with a deadline, never sleep as synchronisation."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll(pred: Callable[[], T | None], timeout: float, what: str, interval: float = 0.01) -> T:
    """Call `pred` until it returns something truthy (returned) or `timeout` passes (fail)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
