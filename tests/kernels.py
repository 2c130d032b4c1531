"""Running notebooks in real kernels (nbclient) and reading what they showed."""

from __future__ import annotations

import os
from typing import Any

import nbformat
from nbclient import NotebookClient


class RecordingClient(NotebookClient):
    """nbclient that also keeps every iopub message type and every execute reply."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.message_types: list[tuple[int, str]] = []
        self.replies: dict[int, dict[str, Any]] = {}
        self.on_cell_executed = self._keep_reply

    def _keep_reply(self, cell: Any, cell_index: int, execute_reply: dict[str, Any]) -> None:
        self.replies[cell_index] = execute_reply

    def process_message(self, msg: dict[str, Any], cell: Any, cell_index: int) -> Any:
        self.message_types.append((cell_index, msg["msg_type"]))
        return super().process_message(msg, cell, cell_index)


def run_cells(sources: list[str], notebook_path: str, env: dict[str, str] | None = None, timeout: int = 90) -> RecordingClient:
    """Execute ``sources`` as the cells of the notebook at ``notebook_path`` in a fresh kernel.

    ``JPY_SESSION_NAME`` is set as jupyter_server sets it for a notebook's kernel.
    """
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in sources])
    os.makedirs(os.path.dirname(notebook_path), exist_ok=True)
    client = RecordingClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        allow_errors=True,
        resources={"metadata": {"path": os.path.dirname(notebook_path)}},
    )
    client.execute(env={**os.environ, "JPY_SESSION_NAME": notebook_path, **(env or {})})
    return client


def run_notebook_file(path: str, env: dict[str, str] | None = None, timeout: int = 120) -> nbformat.NotebookNode:
    """Execute a notebook file top to bottom, failing on any error, as a reader would run it."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": os.path.dirname(path)}})
    client.execute(env={**os.environ, "JPY_SESSION_NAME": path, **(env or {})})
    return notebook


def outputs_text(cell: Any) -> str:
    """Everything a cell showed, as plain text (Markdown and HTML bundles included)."""
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            parts.append(output.get("text", ""))
        elif output.get("output_type") == "error":
            parts.append("\n".join(output.get("traceback", [])))
        for kind in ("text/markdown", "text/plain", "text/html"):
            value = output.get("data", {}).get(kind)
            if value:
                parts.append(value if isinstance(value, str) else "".join(value))
    return "\n".join(parts)
