"""A call made on the kernel's main thread from any thread: where approved code must run, as the user's cells do.

ipykernel runs cells on the main thread, and hands comm messages (a widget's click) to
it or to a subshell's thread; the chat panel's turns run on threads of their own. The
loop the main thread runs is found there (``%load_ext`` asks) and remembered.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from ..errors import OblixError

T = TypeVar("T")
OnMain = Callable[[Callable[[], T]], T]

_main_loop: asyncio.AbstractEventLoop | None = None  # the loop the main thread ran when last asked from there


def main_thread_caller() -> OnMain[Any] | None:
    """How another thread has a call made on the kernel's main thread; None off it when it was never asked there.

    On the main thread a call is made there and then. From another thread it is handed
    to the event loop the main thread runs (a cell awaiting ``execute``, or ipykernel's
    own loop between cells), which makes it between the loop's other work.
    """
    global _main_loop
    if threading.current_thread() is threading.main_thread():
        try:
            _main_loop = asyncio.get_running_loop()
        except RuntimeError:
            pass
    elif _main_loop is None:
        return None
    loop = _main_loop

    def call(work: Callable[[], T]) -> T:
        if threading.current_thread() is threading.main_thread():
            return work()
        if loop is None or loop.is_closed():
            raise OblixError("Approved code runs on the kernel's main thread, which has no event loop to take it now.")
        done: Future[T] = Future()

        def run() -> None:
            if done.set_running_or_notify_cancel():
                try:
                    done.set_result(work())
                except BaseException as error:  # noqa: BLE001 - handed to the waiting thread, which raises it
                    done.set_exception(error)

        loop.call_soon_threadsafe(run)
        return done.result()

    return call
