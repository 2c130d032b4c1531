"""The Oblix SDK's ``OblixClient``: the client of ``client.py`` plus ``start_chat``, the one SDK call that opens a front end.

``client.py`` is what every front end calls, so it may import none of them; the SDK
documents ``start_chat`` on the same object, though, and that call opens the chat panel
or the terminal loop. The package's ``OblixClient`` is therefore this subclass, one layer
above both: ``from oblix_jupyter import OblixClient`` gives every documented call.
"""

from __future__ import annotations

from .client import OblixClient as CoreClient


class OblixClient(CoreClient):
    """``OblixClient`` as the Oblix documentation describes it, ``start_chat`` included."""

    async def start_chat(self, session_id: str | None = None) -> str | None:
        """An interactive chat: the chat panel inside Jupyter, a terminal loop elsewhere (``exit`` to leave); returns its session id."""
        from .frontends.chat import open_chat

        return await open_chat(self, session_id)
