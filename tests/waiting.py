"""Polling for what another thread, process or browser makes true, shared by the tests."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def running_in(*functions: Callable[..., Any], thread: threading.Thread | None = None) -> bool:
    """Whether a thread (``thread``, else any) is inside every one of ``functions`` now (``_stall`` and ``Condition.wait``, say).

    Proof that it got there: what lets a test say "nothing happened while X waits" after
    X is seen waiting, not after a sleep long enough on a quiet machine. Naming the wait
    itself, not only the function around it, keeps a function that merely passes through
    from counting.
    """
    codes = {function.__code__ for function in functions}
    frames = sys._current_frames()
    for frame in [frames.get(thread.ident)] if thread is not None and thread.ident is not None else frames.values():
        on_stack = set()
        while frame is not None:
            on_stack.add(frame.f_code)
            frame = frame.f_back
        if codes <= on_stack:
            return True
    return False
