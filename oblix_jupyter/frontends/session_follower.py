"""Following changes made elsewhere (a ``%%oblix`` cell, another kernel, a colleague): a thread that re-checks a session while it is shown.

The owner says what to compare (a ``signature`` of what it shows), how to wait for the
next change (a database announces one at once; a session file is looked at again after
``interval`` seconds), and what to do when it moved. The thread runs only while some
front end shows the owner, so a panel nobody looks at costs nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable

POLL_INTERVAL = 1.0  # seconds between checks of a session file while it is shown


class SessionFollower:
    """Calls ``on_change`` when ``signature()`` differs from the one last ``mark``ed, else ``on_same``."""

    def __init__(
        self,
        signature: Callable[[], Hashable],
        wait: Callable[[float], None],
        on_change: Callable[[], None],
        on_same: Callable[[], None],
        interval: float = POLL_INTERVAL,
    ) -> None:
        """``wait(timeout)`` returns when the session may have changed, or after ``timeout`` seconds at most."""
        self.interval = interval
        self.thread: threading.Thread | None = None  # the watching thread, while it runs
        self._signature = signature
        self._wait = wait
        self._on_change = on_change
        self._on_same = on_same
        self._marked: Hashable = None
        self._shown = False
        self._closed = threading.Event()
        self._lock = threading.Lock()

    def mark(self, signature: Hashable) -> None:
        """What is shown now; taken before reading it, so that a write landing meanwhile is seen by the next check."""
        self._marked = signature

    def check(self) -> bool:
        """Call back as the session changed or not since the last ``mark``; True if it did."""
        changed = self._signature() != self._marked
        if changed:
            self._on_change()
        else:
            self._on_same()
        return changed

    def shown(self, shown: bool) -> None:
        """Whether a front end shows the owner: watching starts with the first view and ends after the last."""
        with self._lock:
            self._shown = shown
            if shown and self.thread is None and not self._closed.is_set():
                self.thread = threading.Thread(target=self._watch, name="oblix-chat-poll", daemon=True)
                self.thread.start()

    def close(self) -> None:
        """Stop watching for good (the thread ends after its current wait)."""
        self._closed.set()

    def _watch(self) -> None:
        while not self._closed.is_set():
            self._wait(self.interval)
            with self._lock:
                if not self._shown or self._closed.is_set():
                    self.thread = None
                    return
            try:
                self.check()
            except Exception:  # a store hiccup (a file mid-replace) must not end the watching
                continue
        with self._lock:
            self.thread = None
