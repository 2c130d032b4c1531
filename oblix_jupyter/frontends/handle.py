"""A live view of one session for scripting: ``oblix_jupyter.current()`` returns one.

It reads the store on every access instead of caching, so a handle kept in a
variable never shows a stale conversation after the chat panel or another kernel
added to it.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..client import OblixClient


class SessionHandle:
    """The session's fields as attributes, ``.messages``, and ``.ask()`` to continue it."""

    def __init__(self, client: OblixClient, session_id: str) -> None:
        self.client = client
        self.id = session_id

    def data(self) -> dict[str, Any]:
        """The whole session dict, as stored now."""
        return self.client.get_session(self.id)

    def __getattr__(self, name: str) -> Any:
        if name in ("title", "created_at", "updated_at", "messages", "context", "model", "metadata"):
            return self.data().get(name)
        raise AttributeError(name)

    def ask(self, prompt: str, **options: Any) -> str:
        """One turn in this session; returns the answer's text."""
        return self.client.turn(prompt, self.id, **options).response

    def __repr__(self) -> str:
        session = self.data()
        return f"<Session {session['title']!r} {self.id[:8]} · {len(session['messages'])} messages · {session.get('model')}>"

    def _repr_html_(self) -> str:
        session = self.data()
        rows = "".join(
            f"<tr><td><b>{html.escape(m['role'])}</b></td><td>{html.escape(m.get('model') or '')}</td>"
            f"<td style='text-align:left;white-space:pre-wrap'>{html.escape(m['content'][:300])}</td></tr>"
            for m in session["messages"][-6:]
        )
        return (
            f"<div><b>{html.escape(session['title'])}</b> <code>{self.id}</code> · "
            f"{len(session['messages'])} messages · model {html.escape(str(session.get('model')))}"
            f"<table>{rows}</table></div>"
        )
