"""``OblixClient.start_chat``'s front end: the chat panel in a Jupyter kernel, a terminal loop elsewhere."""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..client import OblixClient


async def open_chat(client: OblixClient, session_id: str | None = None) -> str | None:
    """Show the chat panel (in Jupyter) or run the terminal chat; returns the session id the chat is in."""
    if in_jupyter_kernel():
        from IPython.display import display

        from .panel import ChatPanel

        panel = ChatPanel(client, session_id=session_id)
        display(panel)
        return panel.session_id
    from .terminal_chat import run_terminal_chat

    return await asyncio.to_thread(run_terminal_chat, client, session_id)


def in_jupyter_kernel() -> bool:
    """True when running in a Jupyter kernel, where widgets can be shown."""
    if "IPython" not in sys.modules:
        return False
    from IPython import get_ipython

    return getattr(get_ipython(), "kernel", None) is not None
