"""``make demo``: the quick-start notebook run for real, then JupyterLab to continue it.

The notebook runs headless in a real kernel, so what the terminal shows (answers
streamed by the configured model, or the offline one, into a session bound to the
notebook) is the product itself. JupyterLab then opens the same notebook, and its
next ``%%oblix`` cell carries on that conversation. Set ``NO_LAB=1`` (or ``CI``) to
stop after the headless run.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from ..client import OblixClient
from ..errors import OblixError
from ..render import terminal_text, transcript


def run_notebook(path: pathlib.Path) -> None:
    """Execute ``path`` in place in a fresh kernel, as a reader would run it."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    client.execute(env={**os.environ, "JPY_SESSION_NAME": str(path)})
    nbformat.write(notebook, path)


def print_conversation(path: pathlib.Path) -> None:
    """The conversation the notebook's run stored, as ``oblix show`` prints one."""
    client = OblixClient()
    session_id = client.bound_session(str(path))
    if session_id is None:
        raise OblixError(f"{path} ran, but no session is bound to it.")
    print(transcript(client.get_session(session_id), escape=terminal_text))


def main(argv: list[str] | None = None) -> int:
    source = pathlib.Path(argv[0] if argv else "notebooks/quickstart.ipynb")
    # Run a working copy, so the documentation notebook itself stays free of outputs.
    notebook = (pathlib.Path("build") / "demo" / source.name).resolve()
    notebook.parent.mkdir(parents=True, exist_ok=True)
    if not notebook.exists():
        notebook.write_bytes(source.read_bytes())
    print(f"Running {notebook} in a real kernel...\n", flush=True)
    try:
        run_notebook(notebook)
        print_conversation(notebook)
    except OblixError as error:
        print(f"oblix demo: {error}", file=sys.stderr)
        return 1
    if os.environ.get("CI") or os.environ.get("NO_LAB"):
        return 0
    print("Opening JupyterLab on http://127.0.0.1:8888 (Ctrl-C to stop). Run the notebook's next %%oblix cell to continue.")
    command = [sys.executable, "-m", "jupyter", "lab", "--ip=127.0.0.1", str(notebook.relative_to(pathlib.Path.cwd()))]
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
