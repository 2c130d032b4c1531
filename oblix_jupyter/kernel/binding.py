"""Which notebook this kernel runs, and which session that notebook is bound to.

A kernel is not told its notebook's path reliably, so it is looked for in order of
trust: the JupyterLab extension (which also reports renames), jupyter_server's
``JPY_SESSION_NAME`` (and ipykernel's ``__session__`` derived from it), VS Code's
``__vsc_ipynb_file__``, and, outside any notebook, the working directory. Whatever
is found is only an identifier: the store's bindings table maps it to a session.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Protocol


class Sessions(Protocol):
    """What a binding needs of ``OblixClient``: the notebook → session table, and new sessions."""

    def bound_session(self, notebook: str) -> str | None: ...
    def bind(self, notebook: str, session_id: str) -> None: ...
    def unbind(self, notebook: str) -> None: ...
    def bindings(self) -> dict[str, str]: ...
    def create_session_sync(
        self, title: str | None = None, initial_context: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None
    ) -> str: ...


def notebook_key(namespace: Mapping[str, Any], reported_path: str | None = None) -> str:
    """A stable identifier of the current notebook (a path when one is known)."""
    for candidate in (
        reported_path,
        os.environ.get("JPY_SESSION_NAME"),
        namespace.get("__session__"),
        namespace.get("__vsc_ipynb_file__"),
    ):
        if isinstance(candidate, str) and candidate.strip():
            return candidate.strip()
    return f"cwd:{os.getcwd()}"


def notebook_title(key: str) -> str:
    """A session title from a notebook key: the notebook's file name without extension."""
    if key.startswith("cwd:"):
        return f"IPython in {os.path.basename(key[4:].rstrip(os.sep)) or key[4:]}"
    name = os.path.basename(key.rstrip("/\\")) or key
    return name[:-6] if name.endswith(".ipynb") else name


class NotebookBinding:
    """The session of one notebook: found again after restarts, created on first use."""

    def __init__(self, sessions: Sessions, namespace: Mapping[str, Any]) -> None:
        self.sessions = sessions
        self.namespace = namespace
        self.reported_path: str | None = None  # set by the JupyterLab extension

    @property
    def key(self) -> str:
        return notebook_key(self.namespace, self.reported_path)

    def session_id(self, create: bool = True) -> str | None:
        """The bound session's id; a new session titled after the notebook when there is none."""
        key = self.key
        session_id = self.sessions.bound_session(key)
        if session_id is None and create:
            session_id = self.new_session(notebook_title(key))
        return session_id

    def new_session(self, title: str | None = None) -> str:
        """Start a session for this notebook (recorded in its metadata) and bind the notebook to it; untitled, its first prompt names it."""
        key = self.key
        session_id = self.sessions.create_session_sync(title=title, metadata={"notebook": key}, title_from_prompt=True)
        self.sessions.bind(key, session_id)
        return session_id

    def use(self, session_id: str) -> None:
        """Bind this notebook to an existing session (the user's explicit choice)."""
        self.sessions.bind(self.key, session_id)

    def follow_path(self, new_path: str) -> None:
        """The extension reported the notebook's path (on open or after a rename): keep the binding.

        The server's ``JPY_SESSION_NAME`` may be absolute where the extension's path is
        relative to the server root; when one ends with the other, both forms are bound,
        so the next kernel start finds the session before the extension reports again.
        """
        started_as = os.environ.get("JPY_SESSION_NAME") or self.namespace.get("__session__")
        previous = self.reported_path
        self.reported_path = new_path
        base = previous if previous is not None else new_path
        keys = [new_path]
        if isinstance(started_as, str) and started_as != base and started_as.endswith(base):
            keys.append(started_as[: len(started_as) - len(base)] + new_path)
        stale = [k for k in (previous, started_as) if isinstance(k, str) and k and k not in keys]
        bound = (self.sessions.bound_session(k) for k in [*keys, *stale])
        session_id = next((s for s in bound if s is not None), None)
        if session_id is None:
            return
        current = self.sessions.bindings()
        for key in keys:
            if current.get(key) != session_id:
                self.sessions.bind(key, session_id)
        for key in stale:
            if current.get(key) == session_id:
                self.sessions.unbind(key)

