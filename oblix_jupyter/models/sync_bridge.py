"""Async code run for synchronous callers, on one private event-loop thread started on first use.

A synchronous caller may already be inside a running event loop (a kernel executing a
cell is), where ``asyncio.run`` is refused; a loop in a thread of its own serves every
caller alike, and the async code stays the only copy.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
import weakref
from collections.abc import AsyncGenerator, Coroutine, Generator, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()
_open: weakref.WeakSet[Generator[Any, None, None]] = weakref.WeakSet()  # iterations a caller has not finished


def _private_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="oblix-sync-bridge", daemon=True).start()
        return _loop


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """The coroutine's result; interrupting the caller (Ctrl+C) cancels the coroutine."""
    future = asyncio.run_coroutine_threadsafe(coroutine, _private_loop())
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise


def iterate_sync(iterator: AsyncGenerator[T, None]) -> Iterator[T]:
    """The items of an async generator; closing (or abandoning) the returned generator closes it."""
    items = _items(iterator)
    _open.add(items)
    return items


def _items(iterator: AsyncGenerator[T, None]) -> Generator[T, None, None]:
    try:
        while True:
            try:
                yield run_sync(iterator.__anext__())
            except StopAsyncIteration:
                return
    finally:
        run_sync(iterator.aclose())


@atexit.register
def _close_open_iterations() -> None:
    """Close what callers left unfinished while the loop still runs: once Python finalizes, its thread cannot."""
    for items in list(_open):
        if not items.gi_running:  # one another thread is reading is stopped by the engine's own exit handler
            items.close()
