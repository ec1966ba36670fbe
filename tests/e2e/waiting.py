"""Polling for a condition in end-to-end tests, with a message that says what never happened."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 20, interval_s: float = 0.05,
             detail: Callable[[], str] | None = None) -> None:
    """Return once `check()` is true; fail after `timeout_s` naming `what` (and `detail()`, e.g. a log)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}" + (f"\n{detail()}" if detail else ""))
